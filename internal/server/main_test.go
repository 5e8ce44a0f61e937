package server

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if they leave goroutines behind (servers, guards,
// connections, limiter waiters).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
