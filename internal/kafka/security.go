package kafka

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
)

// SASL mechanisms the gateway speaks to Kafka.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// Security is how the gateway's Kafka clients (producer, consumer groups, admin)
// connect: TLS, and SASL authentication. The zero Security is plaintext without
// authentication.
type Security struct {
	// TLS, when set, encrypts every broker connection (CA roots, a client certificate).
	TLS *tls.Config
	// SASLMechanism is "" (none), SASLPlain, SASLScramSHA256 or SASLScramSHA512.
	SASLMechanism string
	SASLUser      string
	SASLPassword  string
}

// ParseSASLMechanism answers the mechanism named by s (any case), or an error.
func ParseSASLMechanism(s string) (string, error) {
	switch m := strings.ToUpper(s); m {
	case "", SASLPlain, SASLScramSHA256, SASLScramSHA512:
		return m, nil
	}
	return "", fmt.Errorf("%q is not a SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", s)
}

// Apply sets c's network security. A nil s changes nothing.
func (s *Security) Apply(c *sarama.Config) {
	if s == nil {
		return
	}
	if s.TLS != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = s.TLS.Clone()
	}
	if s.SASLMechanism == "" {
		return
	}
	c.Net.SASL.Enable = true
	c.Net.SASL.Handshake = true
	c.Net.SASL.Version = sarama.SASLHandshakeV1 // SaslAuthenticate requests (Kafka 1.0+)
	c.Net.SASL.User = s.SASLUser
	c.Net.SASL.Password = s.SASLPassword
	switch s.SASLMechanism {
	case SASLScramSHA256:
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha256.New)} }
	case SASLScramSHA512:
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha512.New)} }
	default:
		c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	}
}

// scramClient is sarama's SCRAMClient on xdg-go/scram (RFC 5802, 7677).
type scramClient struct {
	hash scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

func (c *scramClient) Begin(user, password, authzID string) error {
	cl, err := c.hash.NewClient(user, password, authzID)
	if err != nil {
		return err
	}
	c.conv = cl.NewConversation()
	return nil
}

func (c *scramClient) Step(challenge string) (string, error) { return c.conv.Step(challenge) }

func (c *scramClient) Done() bool { return c.conv.Done() }
