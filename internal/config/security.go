package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/eventgw/eventgw/internal/validate"
)

// Security is who may call the sidecar and for which tenants (README "Production",
// "Secure connections").
type Security struct {
	// Tenants is --tenants: the tenant ids (UUIDs, comma-separated) this sidecar serves;
	// empty: any tenant.
	Tenants string

	// TLS of a gRPC listener that is not loopback or a unix socket: --tls-cert and
	// --tls-key (PEM files, reread when they change), --tls-client-ca (PEM: clients
	// must present a certificate it signed, mTLS).
	TLSCert     string
	TLSKey      string
	TLSClientCA string
	// GRPCInsecureListen allows a non-loopback TCP --grpc-addr without TLS.
	GRPCInsecureListen bool
	// APITokenFile holds the shared token calls must bring as "authorization: Bearer
	// <token>" metadata (empty: no token).
	APITokenFile string
	// AuthOpenHealth and AuthOpenReflection let the gRPC health and reflection
	// services answer calls without the token.
	AuthOpenHealth     bool
	AuthOpenReflection bool
	// GRPCSocketMode is the permission bits of the unix socket of --grpc-addr, octal.
	GRPCSocketMode string
	// GRPCLoopbackAddr is a second gRPC listener on loopback TCP (empty: none).
	GRPCLoopbackAddr string
}

func (s *Security) register(fs *flag.FlagSet) {
	fs.StringVar(&s.TLSCert, "tls-cert", "", "PEM certificate (chain) of the gRPC listener when --grpc-addr is not loopback or a unix socket; reread when the file changes")
	fs.StringVar(&s.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&s.TLSClientCA, "tls-client-ca", "", "PEM CA certificates: with it, clients of the TLS listener must present a certificate signed by one of them (mTLS)")
	fs.BoolVar(&s.GRPCInsecureListen, "grpc-insecure-listen", false, "allow a --grpc-addr that is not loopback or a unix socket without TLS (only where the network itself is trusted, such as a compose network)")
	fs.StringVar(&s.APITokenFile, "api-token-file", "", "file holding a shared token (at least 16 characters); every gRPC call must then bring the metadata authorization: Bearer <token>, or is refused with UNAUTHENTICATED (empty: no token)")
	fs.BoolVar(&s.AuthOpenHealth, "auth-open-health", false, "with --api-token-file: the gRPC health service answers without the token")
	fs.BoolVar(&s.AuthOpenReflection, "auth-open-reflection", false, "with --api-token-file: gRPC server reflection answers without the token")
	fs.StringVar(&s.GRPCSocketMode, "grpc-socket-mode", "0600", "permissions of the unix socket of --grpc-addr, octal (0660: the socket's group may call too)")
	fs.StringVar(&s.GRPCLoopbackAddr, "grpc-loopback-addr", "", "a second gRPC listener on a loopback address, such as 127.0.0.1:50051 beside a unix socket --grpc-addr (empty: none)")
	fs.StringVar(&s.Tenants, "tenants", "", "tenant allow-list: comma-separated tenant UUIDs this sidecar serves; a call naming another tenant is refused with PERMISSION_DENIED and Subscribe skips other tenants' events (empty: any tenant)")
}

func (s *Security) validate() []error {
	var errs []error
	if _, err := s.TenantList(); err != nil {
		errs = append(errs, err)
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if s.TLSClientCA != "" && s.TLSCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key"))
	}
	if _, err := s.SocketMode(); err != nil {
		errs = append(errs, err)
	}
	if s.GRPCLoopbackAddr != "" && !isLoopback(s.GRPCLoopbackAddr) {
		errs = append(errs, fmt.Errorf("--grpc-loopback-addr must be a loopback address (127.0.0.1:<port>, [::1]:<port> or localhost:<port>)"))
	}
	if (s.AuthOpenHealth || s.AuthOpenReflection) && s.APITokenFile == "" {
		errs = append(errs, errors.New("--auth-open-health and --auth-open-reflection need --api-token-file (without it every call is open)"))
	}
	return errs
}

// SocketMode parses --grpc-socket-mode.
func (s *Security) SocketMode() (os.FileMode, error) {
	m, err := strconv.ParseUint(s.GRPCSocketMode, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("--grpc-socket-mode: %q is not permission bits in octal, such as 0600", s.GRPCSocketMode)
	}
	return os.FileMode(m), nil
}

// NeedsTLS reports whether a gRPC listen address is TCP and not loopback: such a
// listener serves TLS (--tls-cert), or plaintext only with --grpc-insecure-listen.
func NeedsTLS(addr string) bool {
	return !strings.HasPrefix(addr, "unix://") && !isLoopback(addr)
}

// TenantList parses --tenants into canonical (lowercase) UUIDs, sorted and without
// repeats; nil when empty (any tenant).
func (s *Security) TenantList() ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, t := range splitList(s.Tenants) {
		c, err := validate.CanonicalUUID("tenant", t)
		if err != nil {
			return nil, fmt.Errorf("--tenants: %q is not a tenant UUID such as 6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a (the nil UUID is not one)", t)
		}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	if len(out) == 0 && s.Tenants != "" {
		return nil, errors.New("--tenants: name at least one tenant UUID, or leave it empty for any tenant")
	}
	sort.Strings(out)
	return out, nil
}

// validateSecurity checks the security settings, and that a gRPC listener reachable
// from other hosts is TLS unless plaintext was asked for.
func (c *Config) validateSecurity() []error {
	errs := c.Security.validate()
	if NeedsTLS(c.GRPCAddr) && c.TLSCert == "" && !c.GRPCInsecureListen {
		errs = append(errs, fmt.Errorf("--grpc-addr %s is not loopback or a unix socket: give --tls-cert and --tls-key (and --tls-client-ca for mTLS), or --grpc-insecure-listen for plaintext on a trusted network", c.GRPCAddr))
	}
	return errs
}
