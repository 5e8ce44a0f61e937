package app_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"github.com/twmb/franz-go/pkg/sr/srfake"
	"go.uber.org/zap"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/app"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

const (
	kafkaPassword    = "kafka-pass-7c1e9d"
	registryPassword = "registry-pass-4b8a2f"
)

// TestOutboundTLSAndSASL: a sidecar reaches a Kafka that requires TLS and SASL
// SCRAM-SHA-512 (kfake, certificates made here; the password from a file) and a Schema
// Registry over https that requires basic auth (credentials in its URL): it creates
// topics, registers a schema, publishes (read back by a plain client over TLS and
// SASL, with a ce_dataschema free of credentials) and delivers to a subscriber (a
// consumer group). No password is ever logged.
func TestOutboundTLSAndSASL(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t, "outbound CA")
	serverCert := ca.KeyPair(t, "server", "127.0.0.1", "localhost")
	kc, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.EnableSASL(), kfake.DefaultNumPartitions(12),
		kfake.Superuser("SCRAM-SHA-512", "eventgw", kafkaPassword),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	reg := srfake.NewRegistry(srfake.WithAuth("Basic " + base64.StdEncoding.EncodeToString([]byte("eventgw:"+registryPassword))))
	rs := httptest.NewUnstartedServer(reg.Handler())
	rs.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}
	rs.StartTLS()
	t.Cleanup(rs.Close)
	registryURL := strings.Replace(rs.URL, "https://", "https://eventgw:"+registryPassword+"@", 1)

	caFile := testenv.WriteFile(t, dir, "ca.crt", ca.PEM)
	s := startOn(t, deps{kafka: &testenv.Kafka{Brokers: kc.ListenAddrs(), Cluster: kc}, registry: registryURL, dbURL: testenv.NewDatabase(t)}, func(c *config.Config) {
		c.KafkaTLS, c.KafkaTLSCAFile = true, caFile
		c.KafkaSASLMechanism, c.KafkaSASLUsername = "SCRAM-SHA-512", "eventgw"
		c.KafkaSASLPasswordFile = testenv.WriteFile(t, dir, "kafka-password", []byte(kafkaPassword+"\n"))
		c.SchemaRegistryCAFile = caFile
	})
	ctx := callCtx(t)
	sub := subscribeTo(t, s, &eventgwv1.SubscribeRequest{Subscription: "secure", Topics: []string{"patient"}, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST})
	sub.waitAssigned(12)
	sc, err := s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{EventType: "patient.created", Schema: patientSchema})
	if err != nil {
		t.Fatalf("RegisterSchema through basic auth over https: %v", err)
	}
	ev := &eventgwv1.Event{EventType: "patient.created", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(
		`{"patient_id":"` + uuid.NewString() + `","first_name":"Jane","age":40}`)}}
	res, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: ev})
	if err != nil || res.GetResult().GetQueued() {
		t.Fatalf("Publish over TLS and SASL: %v (queued: %v)", err, res.GetResult().GetQueued())
	}
	got := sub.next(1, 20*time.Second)
	if got[0].GetEventId() != res.GetResult().GetEventId() {
		t.Errorf("delivered %s, want %s", got[0].GetEventId(), res.GetResult().GetEventId())
	}

	// A plain client over TLS and SASL reads the record.
	cl, err := kgo.NewClient(kgo.SeedBrokers(kc.ListenAddrs()...), kgo.DialTLSConfig(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}),
		kgo.SASL(scram.Auth{User: "eventgw", Pass: kafkaPassword}.AsSha512Mechanism()),
		kgo.ConsumeTopics("healthtech.patient.events"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	fs := cl.PollRecords(fctx, 1)
	if errs := fs.Errors(); len(errs) > 0 || fs.NumRecords() != 1 {
		t.Fatalf("reading back: %v (%d records)", errs, fs.NumRecords())
	}
	ref, _ := header(fs.Records()[0], "ce_dataschema")
	want := rs.URL + "/schemas/ids/"
	if !strings.HasPrefix(ref, want) || strings.Contains(ref, registryPassword) || strings.Contains(ref, "eventgw@") {
		t.Errorf("ce_dataschema %q, want %s<id> without credentials (schema %d)", ref, want, sc.GetSchema().GetSchemaId())
	}
	for _, secret := range []string{kafkaPassword, registryPassword} {
		if strings.Contains(s.logs.String(), secret) {
			t.Errorf("a password is in the log")
		}
	}
}

// TestDatabaseSSLModePassedThrough: the DSN's sslmode reaches the driver: disable
// connects to the test PostgreSQL (which has no TLS), require is refused by it.
func TestDatabaseSSLModePassedThrough(t *testing.T) {
	d := newDeps(t)
	withMode := func(mode string) string {
		sep := "?"
		if strings.Contains(d.dbURL, "?") {
			sep = "&"
		}
		return d.dbURL + sep + "sslmode=" + mode
	}
	startOn(t, deps{kafka: d.kafka, registry: d.registry, dbURL: withMode("disable")}, nil)

	cfg := defaultConfig(t)
	cfg.KafkaBrokers, cfg.SchemaRegistryURL, cfg.DatabaseURL = joinComma(d.kafka.Brokers), d.registry, withMode("require")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := app.Build(ctx, cfg, zap.NewNop())
	if err == nil {
		_ = a
		t.Fatal("sslmode=require against a PostgreSQL without TLS: built")
	}
	if !strings.Contains(err.Error(), "postgres") {
		t.Errorf("error %q does not name PostgreSQL", err)
	}
}
