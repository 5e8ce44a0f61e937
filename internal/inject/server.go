package inject

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ServeOptions configure the webhook's HTTPS server.
type ServeOptions struct {
	// Addr to listen on, such as ":8443".
	Addr string
	// CertFile and KeyFile are the serving certificate (PEM). They are read again
	// when they change, so a certificate renewed by cert-manager is picked up
	// without a restart.
	CertFile, KeyFile string
	Log               *zap.Logger
	// Ready, when set, is called with the address once the server listens.
	Ready func(addr string)
}

// Serve runs the webhook over TLS until ctx ends: POST /mutate takes AdmissionReviews,
// GET /healthz answers for the webhook's own probes.
func (in *Injector) Serve(ctx context.Context, o ServeOptions) error {
	certs := &certReloader{certFile: o.CertFile, keyFile: o.KeyFile}
	if _, err := certs.get(); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(MutatePath, in.Handler(o.Log))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get() },
		},
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.Addr, err)
	}
	o.Log.Info("eventgw inject is ready", zap.String("addr", l.Addr().String()), zap.String("path", MutatePath))
	if o.Ready != nil {
		o.Ready(l.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// certReloader loads a key pair again when either file's modification time changes.
type certReloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	modCert time.Time
	modKey  time.Time
}

func (c *certReloader) get() (*tls.Certificate, error) {
	ci, err := os.Stat(c.certFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	ki, err := os.Stat(c.keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS key: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && ci.ModTime().Equal(c.modCert) && ki.ModTime().Equal(c.modKey) {
		return c.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		if c.cert != nil { // a renewal half written: keep serving the previous pair
			return c.cert, nil
		}
		return nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	c.cert, c.modCert, c.modKey = &cert, ci.ModTime(), ki.ModTime()
	return c.cert, nil
}
