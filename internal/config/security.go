package config

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/eventgw/eventgw/internal/kafka"
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

	// Outbound: Kafka over TLS (--kafka-tls; CA roots and a client certificate from
	// PEM files) and SASL; the Schema Registry with basic auth and TLS; PostgreSQL's
	// password. Every secret can come from a file (a mounted Kubernetes Secret).
	KafkaTLS                   bool
	KafkaTLSCAFile             string
	KafkaTLSCertFile           string
	KafkaTLSKeyFile            string
	KafkaSASLMechanism         string
	KafkaSASLUsername          string
	KafkaSASLPassword          string
	KafkaSASLPasswordFile      string
	SchemaRegistryUsername     string
	SchemaRegistryPassword     string
	SchemaRegistryPasswordFile string
	SchemaRegistryCAFile       string
	SchemaRegistryCertFile     string
	SchemaRegistryKeyFile      string
	DatabasePasswordFile       string

	// OTLPEndpoint, when set, exports OpenTelemetry spans over OTLP/gRPC there
	// (host:port); OTLPInsecure sends them in plaintext (a collector on loopback).
	OTLPEndpoint string
	OTLPInsecure bool
}

// secretFlags are the flags whose values are secrets: hidden wherever config is
// printed.
var secretFlags = map[string]bool{"kafka-sasl-password": true, "schema-registry-password": true}

// redactFlag hides what a flag's value has of secrets.
func redactFlag(name, v string) string {
	switch {
	case secretFlags[name] && v != "":
		return "xxxxx"
	case name == "database-url" || name == "schema-registry-url":
		return RedactURL(v)
	}
	return v
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
	fs.BoolVar(&s.KafkaTLS, "kafka-tls", false, "connect to Kafka over TLS (the system's CA roots unless --kafka-tls-ca-file)")
	fs.StringVar(&s.KafkaTLSCAFile, "kafka-tls-ca-file", "", "with --kafka-tls: PEM CA certificates that sign the brokers' certificates")
	fs.StringVar(&s.KafkaTLSCertFile, "kafka-tls-cert-file", "", "with --kafka-tls: PEM client certificate for brokers that ask for one (mTLS)")
	fs.StringVar(&s.KafkaTLSKeyFile, "kafka-tls-key-file", "", "with --kafka-tls-cert-file: its PEM private key")
	fs.StringVar(&s.KafkaSASLMechanism, "kafka-sasl-mechanism", "", "SASL authentication to Kafka: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty: none); use PLAIN only with --kafka-tls")
	fs.StringVar(&s.KafkaSASLUsername, "kafka-sasl-username", "", "SASL user name")
	fs.StringVar(&s.KafkaSASLPassword, "kafka-sasl-password", "", "SASL password (prefer --kafka-sasl-password-file or EVENTGW_KAFKA_SASL_PASSWORD: a flag shows in the process list)")
	fs.StringVar(&s.KafkaSASLPasswordFile, "kafka-sasl-password-file", "", "file holding the SASL password")
	fs.StringVar(&s.SchemaRegistryUsername, "schema-registry-username", "", "Schema Registry basic-auth user (or user:password in --schema-registry-url)")
	fs.StringVar(&s.SchemaRegistryPassword, "schema-registry-password", "", "Schema Registry basic-auth password (prefer --schema-registry-password-file)")
	fs.StringVar(&s.SchemaRegistryPasswordFile, "schema-registry-password-file", "", "file holding the Schema Registry password")
	fs.StringVar(&s.SchemaRegistryCAFile, "schema-registry-ca-file", "", "PEM CA certificates that sign an https Schema Registry's certificate (default: the system's roots)")
	fs.StringVar(&s.SchemaRegistryCertFile, "schema-registry-cert-file", "", "PEM client certificate for a Schema Registry that asks for one (mTLS)")
	fs.StringVar(&s.SchemaRegistryKeyFile, "schema-registry-key-file", "", "with --schema-registry-cert-file: its PEM private key")
	fs.StringVar(&s.DatabasePasswordFile, "database-password-file", "", "file holding PostgreSQL's password, used instead of one in --database-url (whose sslmode, sslrootcert, sslcert and sslkey are passed to the driver as they are)")
	fs.StringVar(&s.OTLPEndpoint, "otlp-endpoint", "", "export OpenTelemetry spans (publish, append, relay, deliveries) over OTLP/gRPC to this host:port, such as 127.0.0.1:4317 (empty: off; a caller's traceparent still passes through to Kafka and deliveries)")
	fs.BoolVar(&s.OTLPInsecure, "otlp-insecure", false, "send spans to --otlp-endpoint in plaintext (a collector on loopback or in the pod) instead of TLS")
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
	errs = append(errs, s.validateOutbound()...)
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
	errs := c.validate()
	if u, err := url.Parse(c.SchemaRegistryURL); err == nil && u.User != nil && c.SchemaRegistryUsername != "" {
		errs = append(errs, errors.New("give the Schema Registry's credentials in --schema-registry-url or in --schema-registry-username, not both"))
	}
	if c.Dev && (c.KafkaTLS || c.KafkaSASLMechanism != "") {
		errs = append(errs, errors.New("--kafka-tls and --kafka-sasl-mechanism are for a real Kafka: the --dev stack is plaintext"))
	}
	if NeedsTLS(c.GRPCAddr) && c.TLSCert == "" && !c.GRPCInsecureListen {
		errs = append(errs, fmt.Errorf("--grpc-addr %s is not loopback or a unix socket: give --tls-cert and --tls-key (and --tls-client-ca for mTLS), or --grpc-insecure-listen for plaintext on a trusted network", c.GRPCAddr))
	}
	return errs
}

func (s *Security) validateOutbound() []error {
	var errs []error
	if !s.KafkaTLS && (s.KafkaTLSCAFile != "" || s.KafkaTLSCertFile != "") {
		errs = append(errs, errors.New("--kafka-tls-ca-file and --kafka-tls-cert-file need --kafka-tls"))
	}
	if (s.KafkaTLSCertFile == "") != (s.KafkaTLSKeyFile == "") {
		errs = append(errs, errors.New("--kafka-tls-cert-file and --kafka-tls-key-file go together"))
	}
	mech, err := kafka.ParseSASLMechanism(s.KafkaSASLMechanism)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("--kafka-sasl-mechanism: %w", err))
	case mech == "" && (s.KafkaSASLUsername != "" || s.KafkaSASLPassword != "" || s.KafkaSASLPasswordFile != ""):
		errs = append(errs, errors.New("--kafka-sasl-username and the password need --kafka-sasl-mechanism"))
	case mech != "" && (s.KafkaSASLUsername == "" || (s.KafkaSASLPassword == "") == (s.KafkaSASLPasswordFile == "")):
		errs = append(errs, errors.New("--kafka-sasl-mechanism needs --kafka-sasl-username and one of --kafka-sasl-password and --kafka-sasl-password-file"))
	}
	if s.SchemaRegistryPassword != "" && s.SchemaRegistryPasswordFile != "" {
		errs = append(errs, errors.New("give one of --schema-registry-password and --schema-registry-password-file"))
	}
	if (s.SchemaRegistryUsername == "") != (s.SchemaRegistryPassword == "" && s.SchemaRegistryPasswordFile == "") {
		errs = append(errs, errors.New("--schema-registry-username and a password (--schema-registry-password or --schema-registry-password-file) go together"))
	}
	if (s.SchemaRegistryCertFile == "") != (s.SchemaRegistryKeyFile == "") {
		errs = append(errs, errors.New("--schema-registry-cert-file and --schema-registry-key-file go together"))
	}
	return errs
}
