package server

import (
	"context"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/validate"
)

// Tenants is a sidecar's tenant allow-list (--tenants). A nil *Tenants serves any
// tenant.
//
// The list is enforced at the gRPC edge, by an interceptor that looks at every request
// message before its handler sees it (tenantsOf names the tenant fields of each
// request type): a call naming a tenant not on the list is refused with
// PERMISSION_DENIED, and nothing is read or written for it. PublishBatch is refused
// whole when one of its events names another tenant; a PublishStream request that
// does ends the stream with PERMISSION_DENIED (the requests before it are answered).
// A tenant id that is not a UUID is left to the handler, which refuses it with
// INVALID_ARGUMENT as it would without the list.
//
// Calls that name no tenant are not the interceptor's: Subscribe skips the events of
// other tenants (committed without being delivered, as an event-type filter does:
// subscribe.Config.Tenants), PollTasks hands out only the tasks of the list's tenants
// (saga.Config.Tenants), and Ack, Nack, CompleteTask and FailTask name deliveries and
// tasks that only those could have handed out. RegisterSchema, ListSchemas and
// RegisterWorkflow concern no tenant.
type Tenants struct {
	set map[string]struct{}
}

// NewTenants builds the allow-list of canonical (lowercase) tenant UUIDs; none: nil,
// any tenant.
func NewTenants(ids []string) *Tenants {
	if len(ids) == 0 {
		return nil
	}
	t := &Tenants{set: make(map[string]struct{}, len(ids))}
	for _, id := range ids {
		t.set[id] = struct{}{}
	}
	return t
}

// Allows reports whether the sidecar serves tenant (a canonical UUID).
func (t *Tenants) Allows(tenant string) bool {
	if t == nil {
		return true
	}
	_, ok := t.set[tenant]
	return ok
}

// IDs answers the list (nil: any tenant).
func (t *Tenants) IDs() []string {
	if t == nil {
		return nil
	}
	out := make([]string, 0, len(t.set))
	for id := range t.set {
		out = append(out, id)
	}
	return out
}

// check refuses a request naming a tenant not on the list.
func (t *Tenants) check(req any) error {
	if t == nil {
		return nil
	}
	var refused string
	tenantsOf(req, func(field, id string) bool {
		c, err := validate.CanonicalUUID(field, id)
		if err != nil {
			return true // not a tenant id: the handler refuses it
		}
		if !t.Allows(c) {
			refused = field
			return false
		}
		return true
	})
	if refused != "" {
		return status.Errorf(codes.PermissionDenied, "%s: this sidecar does not serve that tenant (--tenants)", refused)
	}
	return nil
}

// tenantGetter is every request with a top-level tenant_id.
type tenantGetter interface{ GetTenantId() string }

// tenantsOf calls f with each tenant id req names and the field that names it, until
// f answers false. TestTenantsOfEveryRequest checks it knows every request field named
// tenant_id.
func tenantsOf(req any, f func(field, id string) bool) {
	events := func(field string, evs []*eventgwv1.Event) {
		for i, e := range evs {
			if !f(field+"["+strconv.Itoa(i)+"].tenant_id", e.GetTenantId()) {
				return
			}
		}
	}
	switch r := req.(type) {
	case *eventgwv1.PublishRequest:
		f("event.tenant_id", r.GetEvent().GetTenantId())
	case *eventgwv1.PublishBatchRequest:
		events("events", r.GetEvents())
	case *eventgwv1.PublishStreamRequest:
		events("events", r.GetEvents())
	case *eventgwv1.SendToDeadLetterRequest:
		f("event.tenant_id", r.GetEvent().GetTenantId())
	case tenantGetter:
		f("tenant_id", r.GetTenantId())
	}
}

func (t *Tenants) unaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := t.check(req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (t *Tenants) streamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &tenantStream{ServerStream: ss, t: t})
}

// tenantStream checks each request message of a stream as it is received.
type tenantStream struct {
	grpc.ServerStream
	t *Tenants
}

func (s *tenantStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.t.check(m)
}
