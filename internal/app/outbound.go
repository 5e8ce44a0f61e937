package app

import (
	"crypto/tls"
	"fmt"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/schema"
)

// outbound is how the sidecar connects to Kafka, the Schema Registry and PostgreSQL,
// with the secrets read from their files (README "Secure connections").
type outbound struct {
	kafka      *kafka.Security // nil: plaintext, no SASL
	registry   []schema.Option
	dbPassword string // "": the one in --database-url, if any
}

func buildOutbound(s *config.Security) (outbound, error) {
	var out outbound
	if s.KafkaTLS || s.KafkaSASLMechanism != "" {
		ks := &kafka.Security{SASLUser: s.KafkaSASLUsername, SASLPassword: s.KafkaSASLPassword}
		ks.SASLMechanism, _ = kafka.ParseSASLMechanism(s.KafkaSASLMechanism)
		if s.KafkaTLS {
			tc, err := clientTLS("--kafka-tls", s.KafkaTLSCAFile, s.KafkaTLSCertFile, s.KafkaTLSKeyFile)
			if err != nil {
				return out, err
			}
			ks.TLS = tc
		}
		if s.KafkaSASLPasswordFile != "" {
			p, err := readSecret("--kafka-sasl-password-file", s.KafkaSASLPasswordFile)
			if err != nil {
				return out, err
			}
			ks.SASLPassword = string(p)
		}
		out.kafka = ks
	}
	if s.SchemaRegistryUsername != "" {
		pw := s.SchemaRegistryPassword
		if s.SchemaRegistryPasswordFile != "" {
			p, err := readSecret("--schema-registry-password-file", s.SchemaRegistryPasswordFile)
			if err != nil {
				return out, err
			}
			pw = string(p)
		}
		out.registry = append(out.registry, schema.WithBasicAuth(s.SchemaRegistryUsername, pw))
	}
	if s.SchemaRegistryCAFile != "" || s.SchemaRegistryCertFile != "" {
		tc, err := clientTLS("--schema-registry", s.SchemaRegistryCAFile, s.SchemaRegistryCertFile, s.SchemaRegistryKeyFile)
		if err != nil {
			return out, err
		}
		out.registry = append(out.registry, schema.WithTLS(tc))
	}
	if s.DatabasePasswordFile != "" {
		p, err := readSecret("--database-password-file", s.DatabasePasswordFile)
		if err != nil {
			return out, err
		}
		out.dbPassword = string(p)
	}
	return out, nil
}

// clientTLS is a client's TLS configuration: CA roots from caFile (the system's when
// empty) and a client certificate from certFile and keyFile (none when empty).
func clientTLS(flag, caFile, certFile, keyFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadCAs(flag+"-ca-file", caFile)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%s-cert-file/%s-key-file: %w", flag, flag, err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}
