package config

import (
	"flag"
	"slices"
	"strings"
	"testing"
)

func TestTenantsFlag(t *testing.T) {
	t.Setenv("EVENTGW_TENANTS", "")
	const a, b = "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", "0b7d6c5e-4f3a-4b2c-8d1e-9f8a7b6c5d4e"
	c := devConfig(t, "--tenants= "+strings.ToUpper(a)+", "+b+","+a)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	got, _ := c.TenantList()
	if want := []string{b, a}; !slices.Equal(got, want) {
		t.Errorf("TenantList = %v, want %v (canonical, sorted, once each)", got, want)
	}
	none := devConfig(t)
	if got, err := none.TenantList(); got != nil || err != nil {
		t.Errorf("no --tenants: %v, %v; want nil (any tenant)", got, err)
	}
	for _, bad := range []string{"acme", a + ",acme", "00000000-0000-0000-0000-000000000000", ",", "{" + a + "}"} {
		c := devConfig(t, "--tenants="+bad)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "--tenants") {
			t.Errorf("--tenants=%q: %v, want an error naming --tenants", bad, err)
		}
	}
}

func TestListenerSecurityFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		bad  string // a fragment of the error; "" valid
	}{
		{[]string{"--grpc-addr=0.0.0.0:50051"}, "--grpc-insecure-listen"},
		{[]string{"--grpc-addr=:50051"}, "--tls-cert"},
		{[]string{"--grpc-addr=10.1.2.3:50051", "--grpc-insecure-listen"}, ""},
		{[]string{"--grpc-addr=0.0.0.0:50051", "--tls-cert=c.pem", "--tls-key=k.pem"}, ""},
		{[]string{"--grpc-addr=0.0.0.0:50051", "--tls-cert=c.pem", "--tls-key=k.pem", "--tls-client-ca=ca.pem"}, ""},
		{[]string{"--grpc-addr=unix:///run/eventgw/eventgw.sock", "--grpc-loopback-addr=127.0.0.1:50051"}, ""},
		{[]string{"--grpc-addr=[::1]:50051"}, ""},
		{[]string{"--grpc-addr=localhost:50051"}, ""},
		{[]string{"--tls-cert=c.pem"}, "--tls-key"},
		{[]string{"--tls-client-ca=ca.pem"}, "--tls-client-ca"},
		{[]string{"--grpc-socket-mode=0660"}, ""},
		{[]string{"--grpc-socket-mode=rw"}, "--grpc-socket-mode"},
		{[]string{"--grpc-socket-mode=1777"}, "--grpc-socket-mode"},
		{[]string{"--grpc-loopback-addr=0.0.0.0:50051"}, "--grpc-loopback-addr"},
		{[]string{"--auth-open-health"}, "--api-token-file"},
		{[]string{"--api-token-file=/run/secrets/token", "--auth-open-health", "--auth-open-reflection"}, ""},
	} {
		c := devConfig(t, tc.args...)
		err := c.Validate()
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.bad)
		}
	}
}

func TestOutboundFlags(t *testing.T) {
	real := []string{"--dev=false", "--kafka-brokers=k:9093", "--schema-registry-url=https://sr:8081", "--database-url=postgres://gw@db/gw?sslmode=verify-full"}
	for _, tc := range []struct {
		args []string
		bad  string
	}{
		{[]string{"--kafka-tls", "--kafka-tls-ca-file=ca.pem", "--kafka-sasl-mechanism=scram-sha-512", "--kafka-sasl-username=gw", "--kafka-sasl-password-file=/s/p"}, ""},
		{[]string{"--kafka-sasl-mechanism=PLAIN", "--kafka-sasl-username=gw", "--kafka-sasl-password=p"}, ""},
		{[]string{"--kafka-tls", "--kafka-tls-cert-file=c.pem", "--kafka-tls-key-file=k.pem"}, ""},
		{[]string{"--kafka-tls-ca-file=ca.pem"}, "--kafka-tls"},
		{[]string{"--kafka-tls", "--kafka-tls-cert-file=c.pem"}, "--kafka-tls-key-file"},
		{[]string{"--kafka-sasl-mechanism=GSSAPI", "--kafka-sasl-username=gw", "--kafka-sasl-password=p"}, "--kafka-sasl-mechanism"},
		{[]string{"--kafka-sasl-mechanism=PLAIN", "--kafka-sasl-username=gw"}, "--kafka-sasl-password"},
		{[]string{"--kafka-sasl-mechanism=PLAIN", "--kafka-sasl-username=gw", "--kafka-sasl-password=p", "--kafka-sasl-password-file=f"}, "--kafka-sasl-password"},
		{[]string{"--kafka-sasl-username=gw", "--kafka-sasl-password=p"}, "--kafka-sasl-mechanism"},
		{[]string{"--schema-registry-username=gw", "--schema-registry-password-file=/s/r", "--schema-registry-ca-file=ca.pem"}, ""},
		{[]string{"--schema-registry-username=gw"}, "--schema-registry-username"},
		{[]string{"--schema-registry-password=p"}, "--schema-registry-username"},
		{[]string{"--schema-registry-url=https://u:p@sr:8081", "--schema-registry-username=gw", "--schema-registry-password=p"}, "not both"},
		{[]string{"--schema-registry-cert-file=c.pem"}, "--schema-registry-key-file"},
		{[]string{"--database-password-file=/s/db"}, ""},
	} {
		c := devConfig(t, append(append([]string{}, real...), tc.args...)...)
		err := c.Validate()
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.bad)
		}
	}
	if c := devConfig(t, "--kafka-tls"); c.Validate() == nil {
		t.Error("--kafka-tls with --dev accepted")
	}
}

// TestRedactedHidesSecrets: printed config shows no password, whether in a flag or in
// a URL.
func TestRedactedHidesSecrets(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	c.Register(fs)
	if err := Parse(fs, []string{
		"--dev", "--kafka-sasl-password=secret-1", "--schema-registry-password=secret-2",
		"--schema-registry-url=https://u:secret-3@sr:8081", "--database-url=postgres://u:secret-4@db/gw?sslmode=require",
	}); err != nil {
		t.Fatal(err)
	}
	out := strings.Join(c.Redacted(fs), "\n")
	if strings.Contains(out, "secret") {
		t.Errorf("Redacted shows a secret:\n%s", out)
	}
	if !strings.Contains(out, "sslmode=require") {
		t.Error("Redacted hides more than the password of the database URL")
	}
}
