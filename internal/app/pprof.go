package app

import (
	"net/http"
	"net/http/pprof"
	"time"
)

// newPprofServer serves Go's profiles (--pprof-addr, loopback only): the sidecar can be
// profiled under real load with `go tool pprof http://127.0.0.1:6060/debug/pprof/profile`.
func newPprofServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}
