package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// claimTenantsSQL is claimSQL for the sagas of the tenants $4 only (a sidecar with a
// tenant allow-list).
const claimTenantsSQL = `WITH c AS (
	SELECT st.saga_id, st.step_index FROM saga_steps st JOIN sagas s ON s.saga_id = st.saga_id
	 WHERE st.task_state = 'ready' AND st.queue = ANY($1::text[]) AND st.ready_at <= clock_timestamp()
	   AND s.tenant_id = ANY($4::uuid[])
	 ORDER BY st.ready_at LIMIT $2 FOR UPDATE OF st SKIP LOCKED
)
UPDATE saga_steps st SET task_state = 'leased', worker_id = $3,
       deadline = clock_timestamp() + st.timeout_ms * interval '1 millisecond',
       started_at = CASE WHEN st.task_kind = 1 THEN coalesce(st.started_at, clock_timestamp()) ELSE st.started_at END
  FROM c, sagas s
 WHERE st.saga_id = c.saga_id AND st.step_index = c.step_index AND s.saga_id = c.saga_id
RETURNING st.saga_id, s.tenant_id, s.workflow_id, s.workflow_version, st.step_index, st.task_id, st.task_kind,
          st.queue, CASE WHEN st.task_kind = 1 THEN st.attempt ELSE st.comp_attempt END, st.ready_at, st.deadline,
          s.context, CASE WHEN st.task_kind = 2 THEN st.output END`

// nextReadyTenantsSQL is nextReadySQL for the sagas of the tenants $2 only: the other
// tenants' ready tasks must not make a poller look again at once, and again.
const nextReadyTenantsSQL = `SELECT extract(epoch FROM min(st.ready_at) - clock_timestamp())::float8
	FROM saga_steps st JOIN sagas s ON s.saga_id = st.saga_id
	WHERE st.task_state = 'ready' AND st.queue = ANY($1::text[]) AND s.tenant_id = ANY($2::uuid[])`

// ClaimTenants is Claim for the sagas of tenants only (canonical UUIDs).
func (s *Sagas) ClaimTenants(ctx context.Context, queues, tenants []string, limit int, worker string) ([]ClaimedTask, time.Duration, error) {
	return s.claim(ctx, func() *pgx.Batch {
		b := &pgx.Batch{}
		b.Queue(claimTenantsSQL, queues, limit, worker, tenants)
		b.Queue(nextReadyTenantsSQL, queues, tenants)
		return b
	})
}
