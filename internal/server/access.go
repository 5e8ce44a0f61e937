package server

import "google.golang.org/grpc"

// Access is what every call goes through before its handler: its trace context
// (Tracing, first, so that refused calls have spans too), then who may call the sidecar
// and for what: the API token (--api-token-file), the tenant allow-list (--tenants).
// The zero Access lets every call through untraced.
type Access struct {
	Tracing *Tracing
	Token   *Token
	Tenants *Tenants
}

// interceptors answers the unary and stream interceptors enforcing a, in order.
func (a Access) interceptors() ([]grpc.UnaryServerInterceptor, []grpc.StreamServerInterceptor) {
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	if a.Tracing != nil {
		unary = append(unary, a.Tracing.unaryInterceptor)
		stream = append(stream, a.Tracing.streamInterceptor)
	}
	if a.Token != nil {
		unary = append(unary, a.Token.unaryInterceptor)
		stream = append(stream, a.Token.streamInterceptor)
	}
	if a.Tenants != nil {
		unary = append(unary, a.Tenants.unaryInterceptor)
		stream = append(stream, a.Tenants.streamInterceptor)
	}
	return unary, stream
}
