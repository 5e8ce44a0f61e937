package schema_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr/srfake"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/testenv"
)

// TestRegistryBasicAuthAndTLS: a registry over https that requires basic auth is
// reached with WithBasicAuth and WithTLS (its CA); without the credentials it refuses
// the schema, without the CA the connection fails; the schema's ce_dataschema holds
// the registry's URL only.
func TestRegistryBasicAuthAndTLS(t *testing.T) {
	ca := testenv.NewCA(t, "registry CA")
	reg := srfake.NewRegistry(srfake.WithAuth("Basic " + base64.StdEncoding.EncodeToString([]byte("gw:reg-secret"))))
	srv := httptest.NewUnstartedServer(reg.Handler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.KeyPair(t, "registry", "127.0.0.1")}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := newPool(t)
	caTLS := schema.WithTLS(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12})
	const text = `{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}`
	register := func(opts ...schema.Option) (*schema.Schema, error) {
		r := schema.NewRegistry(srv.URL, pool, zap.NewNop(), append(opts, fastRetry)...)
		defer func() { _ = r.Close() }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return r.Register(ctx, "lab.result_ready", "healthtech.lab.events", text)
	}
	sc, err := register(schema.WithBasicAuth("gw", "reg-secret"), caTLS)
	if err != nil {
		t.Fatalf("with credentials and the CA: %v", err)
	}
	if want := srv.URL + "/schemas/ids/"; !strings.HasPrefix(sc.Ref, want) {
		t.Errorf("ce_dataschema %q, want %s<id>", sc.Ref, want)
	}
	if _, err := register(schema.WithBasicAuth("gw", "wrong"), caTLS); err == nil {
		t.Error("registered with a wrong password")
	}
	if _, err := register(caTLS); err == nil {
		t.Error("registered without credentials")
	}
	if _, err := register(schema.WithBasicAuth("gw", "reg-secret")); err == nil {
		t.Error("registered over https without trusting the registry's CA")
	}
}
