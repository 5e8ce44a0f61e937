package app

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --grpc-addr unix://PATH removes only a stale socket: never another file, and never
// a socket another process listens on.
func TestListenUnixRemovesOnlyAStaleSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "egw-sock-") // short: socket paths are limited to ~100 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	file := filepath.Join(dir, "data.txt")
	if err := os.WriteFile(file, []byte("patient records"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listen("unix://" + file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listen on a regular file: %v, want a refusal saying it is not a socket", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "patient records" {
		t.Errorf("the regular file was touched: %q, %v", b, err)
	}
	if _, err := listen("unix://" + dir); err == nil {
		t.Error("listen on a directory succeeded")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the directory is gone: %v", err)
	}

	live := filepath.Join(dir, "live.sock")
	other, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := listen("unix://" + live); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Errorf("listen on a live socket: %v, want a refusal", err)
	}
	go func() {
		if c, err := other.Accept(); err == nil {
			_ = c.Close()
		}
	}()
	if c, err := net.Dial("unix", live); err != nil {
		t.Errorf("the other process's socket no longer answers: %v", err)
	} else {
		_ = c.Close()
	}

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false) // as a killed process leaves it
	_ = l.Close()
	if _, err := os.Lstat(stale); err != nil {
		t.Fatalf("no stale socket to test with: %v", err)
	}
	ours, err := listen("unix://" + stale)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	_ = ours.Close()

	fresh, err := listen("unix://" + filepath.Join(dir, "fresh.sock"))
	if err != nil {
		t.Fatalf("listen on a new path: %v", err)
	}
	_ = fresh.Close()
}
