package kafka_test

import (
	"crypto/tls"
	"testing"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/testenv"
)

// TestSecurityAgainstKfake: a producer with kafka.Security reaches a kfake cluster
// that requires TLS and SASL, for each mechanism; a wrong password, the wrong
// mechanism, no TLS and an untrusted CA are refused.
func TestSecurityAgainstKfake(t *testing.T) {
	ca := testenv.NewCA(t, "kafka CA")
	serverCert := ca.KeyPair(t, "kfake", "127.0.0.1", "localhost")
	clientTLS := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	for _, mech := range []string{kafka.SASLPlain, kafka.SASLScramSHA256, kafka.SASLScramSHA512} {
		t.Run(mech, func(t *testing.T) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "secure"), kfake.EnableSASL(),
				kfake.Superuser(mech, "eventgw", "kafka-secret"),
				kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			produce := func(sec *kafka.Security) error {
				cfg := kafka.ProducerConfig("eventgw-test", 1<<20)
				cfg.Metadata.Retry.Max = 0
				cfg.Producer.Retry.Max = 1
				sec.Apply(cfg)
				p, err := sarama.NewSyncProducer(c.ListenAddrs(), cfg)
				if err != nil {
					return err
				}
				defer p.Close()
				_, _, err = p.SendMessage(&sarama.ProducerMessage{Topic: "secure", Value: sarama.StringEncoder("x")})
				return err
			}
			good := kafka.Security{TLS: clientTLS, SASLMechanism: mech, SASLUser: "eventgw", SASLPassword: "kafka-secret"}
			if err := produce(&good); err != nil {
				t.Fatalf("TLS and SASL %s: %v", mech, err)
			}
			other := kafka.SASLScramSHA512
			if mech == other {
				other = kafka.SASLPlain
			}
			untrusted := testenv.NewCA(t, "other CA")
			for name, sec := range map[string]kafka.Security{
				"wrong password":  {TLS: clientTLS, SASLMechanism: mech, SASLUser: "eventgw", SASLPassword: "wrong"},
				"other mechanism": {TLS: clientTLS, SASLMechanism: other, SASLUser: "eventgw", SASLPassword: "kafka-secret"},
				"no SASL":         {TLS: clientTLS},
				"no TLS":          {SASLMechanism: mech, SASLUser: "eventgw", SASLPassword: "kafka-secret"},
				"untrusted CA":    {TLS: &tls.Config{RootCAs: untrusted.Pool()}, SASLMechanism: mech, SASLUser: "eventgw", SASLPassword: "kafka-secret"},
			} {
				if err := produce(&sec); err == nil {
					t.Errorf("%s: produced", name)
				}
			}
		})
	}
}

func TestParseSASLMechanism(t *testing.T) {
	for in, want := range map[string]string{"": "", "plain": "PLAIN", "scram-sha-256": "SCRAM-SHA-256", "SCRAM-SHA-512": "SCRAM-SHA-512"} {
		if got, err := kafka.ParseSASLMechanism(in); err != nil || got != want {
			t.Errorf("%q: %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"GSSAPI", "OAUTHBEARER", "scram"} {
		if _, err := kafka.ParseSASLMechanism(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
