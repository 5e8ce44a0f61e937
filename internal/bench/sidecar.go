package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/eventgw/eventgw/internal/config"
)

// sidecarProc is the sidecar a bench talks to: a separate `eventgw serve` process (the
// cross-process layout, as a pod runs it) or an App in the bench's own process.
type sidecarProc struct {
	grpcAddr string // dial target
	httpAddr string
	pprof    string
	pid      int // 0: in the bench's process
	stop     func()
}

// usage is a sidecar's CPU time and memory at a moment.
type usage struct {
	cpu time.Duration
	rss int64 // VmRSS, bytes
	hwm int64 // VmHWM, bytes (peak since the last reset)
}

// clockTick is the unit of utime/stime in /proc/<pid>/stat: USER_HZ, 100 on Linux
// (sysconf(_SC_CLK_TCK) without cgo).
const clockTick = 10 * time.Millisecond

func (s *sidecarProc) usage() usage {
	if s.pid == 0 {
		return usage{cpu: cpuTime(), rss: procStatus("self", "VmRSS:"), hwm: procStatus("self", "VmHWM:")}
	}
	pid := strconv.Itoa(s.pid)
	var u usage
	if b, err := os.ReadFile("/proc/" + pid + "/stat"); err == nil {
		// Fields after the command name (which may hold spaces) in parentheses.
		if i := strings.LastIndexByte(string(b), ')'); i > 0 {
			f := strings.Fields(string(b)[i+1:])
			if len(f) > 12 {
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				u.cpu = time.Duration(ut+st) * clockTick
			}
		}
	}
	u.rss, u.hwm = procStatus(pid, "VmRSS:"), procStatus(pid, "VmHWM:")
	return u
}

// resetPeak resets the sidecar's VmHWM so that the next usage's hwm is the peak since.
func (s *sidecarProc) resetPeak() {
	p := "self"
	if s.pid != 0 {
		p = strconv.Itoa(s.pid)
	}
	if f, err := os.OpenFile("/proc/"+p+"/clear_refs", os.O_WRONLY, 0); err == nil {
		_, _ = f.Write([]byte("5"))
		_ = f.Close()
	}
}

func procStatus(pid, key string) int64 {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// startSidecar runs the sidecar of cfg in the layout o asks for. extra are more serve
// flags (cross-process only; in-process they are set on cfg by the caller).
func startSidecar(ctx context.Context, o Options, cfg config.Config, dir, name string) (*sidecarProc, error) {
	if o.Layout == "in-process" {
		a, stop, err := startApp(ctx, cfg)
		if err != nil {
			return nil, err
		}
		target := a.GRPCAddr()
		if strings.HasPrefix(cfg.GRPCAddr, "unix://") {
			target = cfg.GRPCAddr
		}
		return &sidecarProc{grpcAddr: target, httpAddr: a.HTTPAddr(), pprof: a.PprofAddr(), stop: stop}, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	grpcAddr := cfg.GRPCAddr
	if !strings.HasPrefix(grpcAddr, "unix://") {
		if grpcAddr, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	args := []string{"serve",
		"--kafka-brokers", cfg.KafkaBrokers, "--schema-registry-url", cfg.SchemaRegistryURL,
		"--database-url", cfg.DatabaseURL, "--grpc-addr", grpcAddr, "--http-addr", httpAddr,
		"--log-level", "warn", "--snapshot-every", strconv.Itoa(cfg.SnapshotEvery),
	}
	if o.SidecarPprof != "" {
		args = append(args, "--pprof-addr", o.SidecarPprof)
	}
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(envWithout(os.Environ(), "EVENTGW_"), o.SidecarEnv...)
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); _ = logf.Close() }()
	s := &sidecarProc{grpcAddr: grpcAddr, httpAddr: httpAddr, pprof: o.SidecarPprof, pid: cmd.Process.Pid}
	s.stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if ready(httpAddr) {
			return s, nil
		}
		select {
		case err := <-done:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("sidecar process exited (%v): %s", err, tailBytes(b, 2000))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("sidecar process not ready after a minute")
		}
	}
}

func ready(httpAddr string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var rep struct{ Status string }
	return json.NewDecoder(resp.Body).Decode(&rep) == nil && rep.Status == "ready"
}

func envWithout(env []string, prefix string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, prefix) {
			out = append(out, kv)
		}
	}
	return out
}

func tailBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
