package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Token is the shared API token (--api-token-file): every call must bring it as
// "authorization: Bearer <token>" metadata, or is refused with UNAUTHENTICATED before
// anything else looks at it. The gRPC health and reflection services are open only
// when configured so. The token is compared in constant time (its SHA-256, so that
// not even its length shows) and never logged.
type Token struct {
	sum            [sha256.Size]byte
	openHealth     bool
	openReflection bool
}

// NewToken builds the check of token; openHealth and openReflection let those
// services answer without it.
func NewToken(token []byte, openHealth, openReflection bool) *Token {
	return &Token{sum: sha256.Sum256(token), openHealth: openHealth, openReflection: openReflection}
}

var errUnauthenticated = status.Error(codes.Unauthenticated, "this sidecar needs its API token: send the metadata authorization: Bearer <token> (--api-token-file)")

func (t *Token) open(method string) bool {
	switch {
	case strings.HasPrefix(method, "/grpc.health.v1.Health/"):
		return t.openHealth
	case strings.HasPrefix(method, "/grpc.reflection.v1.ServerReflection/"),
		strings.HasPrefix(method, "/grpc.reflection.v1alpha.ServerReflection/"):
		return t.openReflection
	}
	return false
}

// check answers nil when ctx's metadata holds exactly one authorization value, the
// token.
func (t *Token) check(ctx context.Context, method string) error {
	if t.open(method) {
		return nil
	}
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(vals) != 1 {
		return errUnauthenticated
	}
	scheme, given, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return errUnauthenticated
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(given)))
	if subtle.ConstantTimeCompare(sum[:], t.sum[:]) != 1 {
		return errUnauthenticated
	}
	return nil
}

func (t *Token) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := t.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (t *Token) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := t.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}
