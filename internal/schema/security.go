package schema

import (
	"crypto/tls"
	"net/http"
)

// registrySecurity is how the registry client authenticates and encrypts: basic auth
// (instead of credentials in the URL) and a TLS configuration for https (CA roots,
// a client certificate).
type registrySecurity struct {
	user, password string
	tls            *tls.Config
}

// WithBasicAuth sends user and password (HTTP basic auth) with every registry request.
// They are never logged, nor put in ce_dataschema.
func WithBasicAuth(user, password string) Option {
	return func(o *registryOptions) { o.security.user, o.security.password = user, password }
}

// WithTLS sets the TLS configuration of https connections to the registry.
func WithTLS(c *tls.Config) Option {
	return func(o *registryOptions) { o.security.tls = c }
}

// transport wraps the registry's HTTP transport with s.
func (s registrySecurity) transport(tr *http.Transport) http.RoundTripper {
	if s.tls != nil {
		tr.TLSClientConfig = s.tls.Clone()
	}
	if s.user == "" {
		return tr
	}
	return &basicAuth{base: tr, user: s.user, password: s.password}
}

// basicAuth sets the Authorization header of each request.
type basicAuth struct {
	base           *http.Transport
	user, password string
}

func (b *basicAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context()) // a RoundTripper must not change the caller's request
	req.SetBasicAuth(b.user, b.password)
	return b.base.RoundTrip(req)
}

// CloseIdleConnections is the transport's (Registry.Close).
func (b *basicAuth) CloseIdleConnections() { b.base.CloseIdleConnections() }
