package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// CheckPositions refuses a database whose stored positions are ahead of its cluster's
// transaction ids. Positions are xid << 10, so they only increase while the cluster's
// xids do; a logical restore (pg_dump into a new cluster) starts xids over, and new
// events would then be positioned below old ones: replay and the outbox relay, which
// read in position order from a cursor, would skip them.
func CheckPositions(ctx context.Context, pool *pgxpool.Pool) error {
	var top, next int64
	if err := Do(ctx, nil, ReadOnly, "check event positions", func(ctx context.Context) error {
		return pool.QueryRow(ctx, `SELECT coalesce((SELECT position FROM stored_events ORDER BY position DESC LIMIT 1), 0) >> 10,
			pg_snapshot_xmax(pg_current_snapshot())::text::bigint`).Scan(&top, &next)
	}); err != nil {
		return err
	}
	if top < next {
		return nil
	}
	return fmt.Errorf("stored events have positions from transaction id %d, but this PostgreSQL cluster is at "+
		"transaction id %d (was it restored with pg_dump into a new cluster?): new events would be positioned "+
		"before stored ones and skipped by replay and the outbox. Stop PostgreSQL and run "+
		"`pg_resetwal --epoch=%d <data directory>` so that its transaction ids continue above the stored ones",
		top, next, top>>32+1)
}
