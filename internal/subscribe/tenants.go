package subscribe

import (
	"strings"

	"github.com/IBM/sarama"

	"github.com/eventgw/eventgw/internal/event"
)

// servesTenant reports whether the tenant of a record (its ce_tenantid header) is one
// the sidecar serves (Config.Tenants). A record of another tenant, or of none, is
// skipped like one of an event type the stream did not ask for: its offset is
// committed and it is never delivered here. So every sidecar subscribing with one
// subscription name (one consumer group) must serve the same tenants: a member that
// owns a partition commits past the other tenants' events in it.
func (m *Manager) servesTenant(headers []*sarama.RecordHeader) bool {
	if m.cfg.Tenants == nil {
		return true
	}
	return m.cfg.Tenants[strings.ToLower(headerValue(headers, event.HeaderTenantID))]
}
