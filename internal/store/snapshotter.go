package store

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/redact"
)

// Snapshotter writes automatic snapshots off the append's critical path: appends that
// cross a multiple of Every enqueue their aggregate; a worker folds it and saves the state.
// A full queue or a crash only skips a snapshot: the next crossing makes one.
type Snapshotter struct {
	events *Events
	every  int64
	log    *zap.Logger
	queue  chan snapJob
}

type snapJob struct{ tenant, aggregate string }

// NewSnapshotter snapshots every `every` events (0 disables it).
func NewSnapshotter(events *Events, every int64, log *zap.Logger) *Snapshotter {
	return &Snapshotter{events: events, every: every, log: log, queue: make(chan snapJob, 1024)}
}

// Every is the snapshot interval in events.
func (s *Snapshotter) Every() int64 { return s.every }

// Appended notes an append from version prev to version now.
func (s *Snapshotter) Appended(tenant, aggregate string, prev, now int64) {
	if s.every <= 0 || prev/s.every == now/s.every {
		return
	}
	s.Enqueue(tenant, aggregate)
}

// Enqueue asks for a snapshot of the aggregate at its current version.
func (s *Snapshotter) Enqueue(tenant, aggregate string) {
	select {
	case s.queue <- snapJob{tenant, aggregate}:
	default: // busy: this crossing is skipped
	}
}

// Run works the queue until ctx ends.
func (s *Snapshotter) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case j := <-s.queue:
			jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := s.snapshot(jctx, j); err != nil && !errors.Is(err, ErrSnapshotVersion) && ctx.Err() == nil {
				// By class and code: a fold or driver error's text may quote the data.
				s.log.Warn("automatic snapshot failed", zap.String("aggregate_id", j.aggregate), redact.Error(err))
			}
			cancel()
		}
	}
}

func (s *Snapshotter) snapshot(ctx context.Context, j snapJob) error {
	l, err := s.events.Load(ctx, j.tenant, j.aggregate)
	if err != nil {
		return err
	}
	if len(l.Tail) == 0 {
		return nil
	}
	b, err := FoldJSON(l)
	if err != nil {
		return err
	}
	_, err = s.events.saveSnapshot(ctx, j.tenant, j.aggregate, l.Tail[len(l.Tail)-1].Version, b, true)
	return err
}
