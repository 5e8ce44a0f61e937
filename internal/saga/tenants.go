package saga

import (
	"context"
	"slices"
	"time"

	"github.com/eventgw/eventgw/internal/store"
)

// A sidecar with a tenant allow-list (Config.Tenants) hands its workers the tasks of
// those tenants' sagas only: its claims skip the others, and a state change it makes
// to another tenant's saga (a timeout its sweeper found) leases nothing to its own
// pollers and announces the new tasks to the other sidecars instead.

// serves reports whether this sidecar's workers take tasks of tenant's sagas.
func (e *Engine) serves(tenant string) bool {
	return len(e.cfg.Tenants) == 0 || slices.Contains(e.cfg.Tenants, tenant)
}

// claim leases up to limit ready tasks of p's queues (of the served tenants).
func (e *Engine) claim(ctx context.Context, p *poller, limit int) ([]store.ClaimedTask, time.Duration, error) {
	if len(e.cfg.Tenants) == 0 {
		return e.st.Claim(ctx, p.queues, limit, p.worker)
	}
	return e.st.ClaimTenants(ctx, p.queues, e.cfg.Tenants, limit, p.worker)
}
