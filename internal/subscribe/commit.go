package subscribe

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/IBM/sarama"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eventgw/eventgw/internal/kafka"
)

// An Ack is answered once its offsets are committed, and sarama's session Commit does
// not say whether the coordinator took them: a commit refused in the moment a rebalance
// joins (REBALANCE_IN_PROGRESS) or with an old generation stays pending in sarama until
// its next commit. So the stream sends the marks itself, with the session's member id
// and generation, reads the answer per partition, and tries again until every owned
// partition's marks are confirmed. sarama still holds the same marks and commits them
// again later (same offsets and metadata: harmless), at revocation and at the end.

// commitTries bounds how long one commit is tried before its Acks are answered
// Unavailable (the marks stay with sarama, which commits them later).
const (
	commitTries    = 12
	commitBackoff  = 25 * time.Millisecond
	commitMaxPause = 500 * time.Millisecond
)

// errCommitUnconfirmed answers Acks whose commit Kafka did not confirm.
var errCommitUnconfirmed = errors.New("the acknowledgement is recorded but Kafka did not confirm its offset commit: the deliveries may come again")

type commitBlock struct {
	p      *partition
	offset int64
	meta   string
}

// commitMarks commits the marks of the owned partitions that changed since their last
// confirmed commit, trying again while Kafka refuses them.
func (s *stream) commitMarks() error {
	pause := commitBackoff
	var last error
	for try := 0; try < commitTries; try++ {
		s.mu.Lock()
		sess := s.sess
		var todo []commitBlock
		for _, p := range s.parts {
			if !p.revoked && p.marked >= 0 && (p.marked != p.confirmed || p.meta != p.confirmedMeta) {
				todo = append(todo, commitBlock{p: p, offset: p.marked, meta: p.meta})
			}
		}
		s.mu.Unlock()
		if len(todo) == 0 || sess == nil {
			return nil
		}
		failed, err := s.sendCommit(sess, todo)
		if err == nil && failed == 0 {
			return nil
		}
		last = err
		if err == nil {
			last = fmt.Errorf("%d partitions refused", failed)
		}
		select {
		case <-s.ctx.Done():
			return errCommitUnconfirmed
		case <-time.After(pause):
		}
		pause = min(2*pause, commitMaxPause)
	}
	s.log.Warn("offset commit not confirmed; acknowledgements answered Unavailable", zap.Error(last))
	return errCommitUnconfirmed
}

// sendCommit sends one OffsetCommit of blocks to the group's coordinator and records
// those confirmed; it answers how many partitions the coordinator refused.
func (s *stream) sendCommit(sess sarama.ConsumerGroupSession, blocks []commitBlock) (int, error) {
	group := s.opts.Subscription
	coord, err := s.client.Coordinator(group)
	if err != nil {
		return len(blocks), err
	}
	req := &sarama.OffsetCommitRequest{
		Version: commitVersion(s.m.cfg.KafkaVersion), ConsumerGroup: group,
		ConsumerGroupGeneration: sess.GenerationID(), ConsumerID: sess.MemberID(),
	}
	if req.Version >= 2 && req.Version <= 4 {
		req.RetentionTime = -1
	}
	for _, b := range blocks {
		req.AddBlockWithLeaderEpoch(b.p.topic, b.p.id, b.offset, -1, 0, b.meta)
	}
	resp, err := coord.CommitOffset(req)
	if err != nil {
		_ = s.client.RefreshCoordinator(group)
		return len(blocks), &kafka.UnavailableError{Err: err}
	}
	failed := 0
	var first sarama.KError
	s.mu.Lock()
	for _, b := range blocks {
		kerr, ok := resp.Errors[b.p.topic][b.p.id]
		if !ok || kerr != sarama.ErrNoError {
			failed++
			if first == sarama.ErrNoError {
				first = kerr
			}
			continue
		}
		b.p.confirmed, b.p.confirmedMeta = b.offset, b.meta
	}
	s.mu.Unlock()
	switch first {
	case sarama.ErrNotCoordinatorForConsumer, sarama.ErrConsumerCoordinatorNotAvailable:
		_ = s.client.RefreshCoordinator(group)
	}
	if failed > 0 {
		s.log.Debug("offset commit refused; trying again", zap.Int("partitions", failed), zap.String("error", first.Error()))
	}
	return failed, nil
}

// commitVersion is the OffsetCommit version the consumers' Kafka version speaks (as
// sarama's own offset manager chooses it).
func commitVersion(v sarama.KafkaVersion) int16 {
	switch {
	case v.IsAtLeast(sarama.V2_4_0_0):
		return 8
	case v.IsAtLeast(sarama.V2_3_0_0):
		return 7
	case v.IsAtLeast(sarama.V2_1_0_0):
		return 6
	case v.IsAtLeast(sarama.V2_0_0_0):
		return 4
	case v.IsAtLeast(sarama.V0_11_0_0):
		return 3
	default:
		return 2
	}
}

// commitNow commits the marked offsets before it returns, so an acknowledged delivery
// is not delivered again even if the sidecar dies right after. Concurrent callers
// share commits: one is in flight at a time, and those arriving meanwhile wait for
// the next. It answers errCommitUnconfirmed (as Unavailable) when Kafka kept refusing
// the commit; the end of the stream or of ctx answers nil (sarama commits the marks
// when the session ends).
func (s *stream) commitNow(ctx context.Context) error {
	w := make(chan error, 1)
	s.cmu.Lock()
	s.commitWaiters = append(s.commitWaiters, w)
	s.cmu.Unlock()
	select {
	case s.commitKick <- struct{}{}:
	default:
	}
	select {
	case err := <-w:
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		return nil
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
	return nil
}

func (s *stream) committer() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.commitKick:
		}
		s.cmu.Lock()
		waiters := s.commitWaiters
		s.commitWaiters = nil
		s.cmu.Unlock()
		err := s.commitMarks()
		for _, w := range waiters {
			w <- err
		}
	}
}
