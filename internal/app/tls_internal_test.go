package app

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/config"
)

// TestSocketMode: the socket is created with --grpc-socket-mode.
func TestSocketMode(t *testing.T) {
	for _, mode := range []string{"0600", "0660"} {
		path := filepath.Join(t.TempDir(), "s.sock")
		a := &App{cfg: config.Config{Security: config.Security{GRPCSocketMode: mode}}, log: zap.NewNop()}
		l, err := a.listenGRPC("unix://" + path)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		_ = l.Close()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := a.cfg.SocketMode()
		if fi.Mode().Perm() != want {
			t.Errorf("--grpc-socket-mode=%s: socket mode %v", mode, fi.Mode().Perm())
		}
	}
}
