package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// removeStaleSocket clears the way for a unix socket at path. It removes only a stale
// socket: a socket file that nothing listens on (left by a sidecar that was killed).
// Any other file, or a socket another process serves, is left alone and reported.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--grpc-addr unix://%s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("--grpc-addr unix://%s: the path exists and is not a socket (%s); not removing it", path, fi.Mode().Type())
	}
	conn, err := (&net.Dialer{Timeout: time.Second}).DialContext(context.Background(), "unix", path)
	if err == nil {
		_ = conn.Close()
		return fmt.Errorf("--grpc-addr unix://%s: another process is listening on this socket", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// Not known to be stale (no permission, a server too busy to accept...).
		return fmt.Errorf("--grpc-addr unix://%s: cannot tell whether the socket is in use, not removing it: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
