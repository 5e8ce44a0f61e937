package server

import "google.golang.org/grpc"

// Access is who may call the sidecar and for what: the API token (--api-token-file),
// then the tenant allow-list (--tenants). The zero Access lets every call through.
type Access struct {
	Token   *Token
	Tenants *Tenants
}

// interceptors answers the unary and stream interceptors enforcing a, in order.
func (a Access) interceptors() ([]grpc.UnaryServerInterceptor, []grpc.StreamServerInterceptor) {
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
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
