package app_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

const apiToken = "0f3c9a7e5b1d4c2a8e6f0b9d7c5a3e1f"

func bearer(t *testing.T) context.Context {
	return metadata.AppendToOutgoingContext(callCtx(t), "authorization", "Bearer "+apiToken)
}

func dial(t *testing.T, target string, creds credentials.TransportCredentials) eventgwv1.EventServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return eventgwv1.NewEventServiceClient(conn)
}

// publishes reports whether a Publish of tenant A through c succeeds, and its error.
func publishOnce(t *testing.T, ctx context.Context, c eventgwv1.EventServiceClient) error {
	_, err := c.Publish(ctx, &eventgwv1.PublishRequest{Event: patientEvent(tenantA)})
	return err
}

// TestSocketAndLoopbackListeners: the injector's layout: gRPC on a unix socket created
// 0600 and on a second, loopback listener, both plaintext, both asking for the API
// token.
func TestSocketAndLoopbackListeners(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "eventgw.sock")
	tokenFile := testenv.WriteFile(t, dir, "token", []byte(apiToken+"\n"))
	s := startSidecar(t, func(c *config.Config) {
		c.GRPCAddr = "unix://" + sock
		c.GRPCLoopbackAddr = "127.0.0.1:0"
		c.APITokenFile = tokenFile
	})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	loop := s.app.GRPCLoopbackAddr()
	if host, _, _ := net.SplitHostPort(loop); host != "127.0.0.1" {
		t.Fatalf("loopback listener on %q", loop)
	}
	for name, c := range map[string]eventgwv1.EventServiceClient{
		"socket": dial(t, "unix://"+sock, insecure.NewCredentials()), "loopback": dial(t, loop, insecure.NewCredentials()),
	} {
		if err := publishOnce(t, bearer(t), c); err != nil {
			t.Errorf("%s with the token: %v", name, err)
		}
		if err := publishOnce(t, callCtx(t), c); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s without the token: %v, want UNAUTHENTICATED", name, err)
		}
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != 2 {
		t.Errorf("Kafka holds %d events, want the 2 published with the token", n)
	}
}

// TestTLSListener: a listener on every interface serves mTLS: a plaintext client, a
// client without a certificate and one with a certificate of another CA are refused at
// the handshake; a client with a certificate of --tls-client-ca and the token
// publishes. A renewed certificate written over the files is served to the next
// connection without a restart.
func TestTLSListener(t *testing.T) {
	dir := t.TempDir()
	ca, other := testenv.NewCA(t, "eventgw test CA"), testenv.NewCA(t, "another CA")
	certPEM, keyPEM := ca.Issue(t, "eventgw-1", "127.0.0.1", "localhost")
	certFile, keyFile := testenv.WriteFile(t, dir, "tls.crt", certPEM), testenv.WriteFile(t, dir, "tls.key", keyPEM)
	s := startSidecar(t, func(c *config.Config) {
		c.GRPCAddr = "0.0.0.0:0"
		c.TLSCert, c.TLSKey = certFile, keyFile
		c.TLSClientCA = testenv.WriteFile(t, dir, "ca.crt", ca.PEM)
		c.APITokenFile = testenv.WriteFile(t, dir, "token", []byte(apiToken))
	})
	_, port, _ := net.SplitHostPort(s.app.GRPCAddr())
	target := net.JoinHostPort("127.0.0.1", port)
	clientTLS := func(certs ...tls.Certificate) credentials.TransportCredentials {
		return credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), Certificates: certs, MinVersion: tls.VersionTLS12})
	}
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext":          insecure.NewCredentials(),
		"no client cert":     clientTLS(),
		"cert of another CA": clientTLS(other.KeyPair(t, "intruder")),
		"server not trusted": credentials.NewTLS(&tls.Config{RootCAs: other.Pool(), Certificates: []tls.Certificate{ca.KeyPair(t, "app")}}),
	} {
		if err := publishOnce(t, bearer(t), dial(t, target, creds)); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want UNAVAILABLE (refused at the handshake)", name, err)
		}
	}
	good := dial(t, target, clientTLS(ca.KeyPair(t, "app")))
	if err := publishOnce(t, bearer(t), good); err != nil {
		t.Fatalf("mTLS with the token: %v", err)
	}
	if err := publishOnce(t, callCtx(t), good); status.Code(err) != codes.Unauthenticated {
		t.Errorf("mTLS without the token: %v, want UNAUTHENTICATED", err)
	}

	// Renewal: new files, later modification times.
	certPEM, keyPEM = ca.Issue(t, "eventgw-2", "127.0.0.1")
	testenv.WriteFile(t, dir, "tls.crt", certPEM)
	testenv.WriteFile(t, dir, "tls.key", keyPEM)
	later := time.Now().Add(time.Minute)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	var served *x509.Certificate
	conn, err := tls.Dial("tcp", target, &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{ca.KeyPair(t, "app")}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	served = conn.ConnectionState().PeerCertificates[0]
	_ = conn.Close()
	if served.Subject.CommonName != "eventgw-2" {
		t.Errorf("after renewal the listener serves %q, want eventgw-2", served.Subject.CommonName)
	}
	if err := publishOnce(t, bearer(t), dial(t, target, clientTLS(ca.KeyPair(t, "app")))); err != nil {
		t.Errorf("a new connection after renewal: %v", err)
	}
}
