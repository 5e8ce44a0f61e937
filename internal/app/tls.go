package app

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/server"
)

// How the sidecar's gRPC listeners are secured (README "Production"):
//   - a unix socket: plaintext, the file's mode (--grpc-socket-mode, 0600) and its
//     folder decide who may connect;
//   - loopback TCP (--grpc-addr 127.0.0.1:..., --grpc-loopback-addr): plaintext, only the
//     pod (or host) reaches it;
//   - any other TCP address: TLS with --tls-cert/--tls-key, and mTLS with
//     --tls-client-ca; the sidecar refuses to start without them unless
//     --grpc-insecure-listen says plaintext is meant.
//
// The API token (--api-token-file) and the tenant allow-list apply on every listener.

// listenGRPC listens on addr for gRPC: a unix socket gets its mode, a TCP address that
// is not loopback gets TLS when configured.
func (a *App) listenGRPC(addr string) (net.Listener, error) {
	l, err := listen(addr)
	if err != nil {
		return nil, err
	}
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		mode, _ := a.cfg.SocketMode()
		if err := os.Chmod(path, mode); err != nil {
			_ = l.Close()
			return nil, fmt.Errorf("--grpc-socket-mode: %w", err)
		}
		return l, nil
	}
	if !config.NeedsTLS(addr) || a.cfg.TLSCert == "" {
		return l, nil
	}
	tc, err := serverTLS(&a.cfg.Security, a.log)
	if err != nil {
		_ = l.Close()
		return nil, err
	}
	return tls.NewListener(l, tc), nil
}

// serverTLS is the TLS configuration of a gRPC listener: TLS 1.2 at least, HTTP/2 by
// ALPN, the certificate reread when its files change (cert-manager renews them in
// place), client certificates required and verified with --tls-client-ca.
func serverTLS(s *config.Security, log *zap.Logger) (*tls.Config, error) {
	kp := &keyPair{certFile: s.TLSCert, keyFile: s.TLSKey, log: log}
	if err := kp.load(); err != nil {
		return nil, err
	}
	tc := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2"},
		GetCertificate: kp.get,
	}
	if s.TLSClientCA != "" {
		pool, err := loadCAs("--tls-client-ca", s.TLSClientCA)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// loadCAs reads PEM CA certificates.
func loadCAs(flag, file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in the file", flag, file)
	}
	return pool, nil
}

// keyPair is a certificate and key from files, reloaded when either file changes.
type keyPair struct {
	certFile, keyFile string
	log               *zap.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	certMod time.Time
	keyMod  time.Time
}

func modTime(file string) time.Time {
	fi, err := os.Stat(file)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

func (k *keyPair) load() error {
	cm, km := modTime(k.certFile), modTime(k.keyFile)
	c, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		// The error names the files, never their content.
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	k.mu.Lock()
	k.cert, k.certMod, k.keyMod = &c, cm, km
	k.mu.Unlock()
	return nil
}

// get answers the certificate, reloading it first when a file changed (a failed reload
// keeps the previous one: a renewal half written is retried at the next handshake).
func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cm, km := modTime(k.certFile), modTime(k.keyFile)
	k.mu.Lock()
	changed := !cm.Equal(k.certMod) || !km.Equal(k.keyMod)
	k.mu.Unlock()
	if changed {
		if err := k.load(); err != nil {
			k.log.Warn("TLS certificate changed but does not load; serving the previous one", zap.Error(err))
		} else {
			k.log.Info("TLS certificate reloaded", zap.String("file", k.certFile))
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cert, nil
}

// readSecret reads a secret from a file (a mounted Kubernetes Secret): surrounding
// whitespace, such as a final newline, is dropped.
func readSecret(flag, file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("%s %s: the file is empty", flag, file)
	}
	return b, nil
}

// access builds the token check and the tenant allow-list.
func (a *App) access() (server.Access, error) {
	acc := server.Access{Tracing: server.NewTracing(a.tracer), Tenants: server.NewTenants(a.tenants)}
	if a.cfg.APITokenFile == "" {
		return acc, nil
	}
	tok, err := readSecret("--api-token-file", a.cfg.APITokenFile)
	if err != nil {
		return acc, err
	}
	if len(tok) < 16 {
		return acc, errors.New("--api-token-file: the token is shorter than 16 characters (make one with: openssl rand -hex 32)")
	}
	acc.Token = server.NewToken(tok, a.cfg.AuthOpenHealth, a.cfg.AuthOpenReflection)
	return acc, nil
}

// GRPCLoopbackAddr is the address of the --grpc-loopback-addr listener ("" without).
func (a *App) GRPCLoopbackAddr() string {
	if a.loopLis == nil {
		return ""
	}
	return a.loopLis.Addr().String()
}
