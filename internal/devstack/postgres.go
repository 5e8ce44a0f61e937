package devstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoPostgres is returned when no PostgreSQL server binaries can be found.
var ErrNoPostgres = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found: " +
	"install them (Debian: apt-get install postgresql) or pass --database-url")

// PostgresOptions configures a private PostgreSQL cluster.
type PostgresOptions struct {
	// Dir holds the cluster (created with initdb when empty).
	Dir string
	// Port to listen on, on 127.0.0.1; 0 picks a free one.
	Port int
	// Fast turns off fsync and synchronous commit: for tests only, data may be lost.
	Fast bool
	// Settings are extra server settings (name → value).
	Settings map[string]string
}

// Postgres is a running private PostgreSQL cluster.
type Postgres struct {
	dir    string
	port   int
	pgCtl  string
	cred   *syscall.Credential
	logDir string
	opts   string // the server settings, as pg_ctl -o (Restart uses them again)
}

// LogPrivacy are the server settings that keep statements and data out of the
// cluster's server.log: no statement text (log_statement, log_min_duration_statement,
// log_min_error_statement), no bind parameters, no DETAIL, CONTEXT or QUERY lines
// (log_error_verbosity = terse: they quote rows, e.g. "Key (…)=(…) already exists" or
// "JSON data, line 1: …"), and no ERROR or WARNING lines at all (log_min_messages = log:
// some primary messages quote the refused value, such as invalid input syntax for type
// uuid: "…"). LOG, FATAL and PANIC lines (start, stop, crashes, checkpoints) remain.
// README "Running in production" gives the same list for a production server.
var LogPrivacy = map[string]string{
	"log_min_messages":                  "log",
	"log_min_error_statement":           "panic",
	"log_error_verbosity":               "terse",
	"log_statement":                     "none",
	"log_min_duration_statement":        "-1",
	"log_min_duration_sample":           "-1",
	"log_duration":                      "off",
	"log_parameter_max_length":          "0",
	"log_parameter_max_length_on_error": "0",
}

// FindPostgresBin returns the directory holding initdb and pg_ctl.
func FindPostgresBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err == nil {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	for i := len(matches) - 1; i >= 0; i-- { // newest version first
		dir := filepath.Dir(matches[i])
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err == nil {
			return dir, nil
		}
	}
	return "", ErrNoPostgres
}

// StartPostgres creates (if needed) and starts a private cluster. The superuser is
// "postgres" with trust authentication on 127.0.0.1 only.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	bin, err := FindPostgresBin()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	pg := &Postgres{dir: dir, pgCtl: filepath.Join(bin, "pg_ctl"), logDir: filepath.Dir(dir)}
	// initdb and postgres refuse to run as root: run them as the postgres user.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a 'postgres' user to own the private cluster: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		pg.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// The parent stays enterable by the postgres user; the cluster itself is private.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("postgres dir: %w", err)
	}
	if pg.cred != nil {
		if err := chownTree(dir, pg.cred); err != nil {
			return nil, err
		}
		if err := checkTraversable(dir, pg.cred); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", dir, "-U", "postgres",
			"--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions")
		if err := pg.run(cmd); err != nil {
			return nil, fmt.Errorf("initdb: %w", err)
		}
	}
	// A cluster left running by a killed process: stop it first so its port is ours.
	_ = pg.run(exec.CommandContext(ctx, pg.pgCtl, "stop", "-D", dir, "-m", "immediate", "-w"))

	port := opts.Port
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	pg.port = port
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": "",
		"max_connections":         "200",
		"shared_buffers":          "128MB",
	}
	for k, v := range LogPrivacy {
		settings[k] = v
	}
	if opts.Fast {
		settings["fsync"] = "off"
		settings["synchronous_commit"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	var o strings.Builder
	for k, v := range settings {
		fmt.Fprintf(&o, "-c %s='%s' ", k, v)
	}
	pg.opts = o.String()
	logFile := filepath.Join(dir, "server.log")
	cmd := exec.CommandContext(ctx, pg.pgCtl, "start", "-D", dir, "-w", "-t", "60", "-l", logFile, "-o", pg.opts)
	if err := pg.run(cmd); err != nil {
		tail, _ := os.ReadFile(logFile)
		return nil, fmt.Errorf("pg_ctl start: %w\n%s", err, lastLines(tail, 10))
	}
	return pg, nil
}

// DSN returns a connection string for a database of the cluster.
func (p *Postgres) DSN(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, database)
}

// Port is the TCP port the cluster listens on.
func (p *Postgres) Port() int { return p.port }

// Dir is the cluster's data directory.
func (p *Postgres) Dir() string { return p.dir }

// Stop shuts the cluster down (fast mode: open sessions are ended).
func (p *Postgres) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.pgCtl, "stop", "-D", p.dir, "-m", "fast", "-w", "-t", "60")
	if err := p.run(cmd); err != nil {
		return fmt.Errorf("pg_ctl stop: %w", err)
	}
	return nil
}

// Kill stops the cluster abruptly, as a crash would (for fault tests).
func (p *Postgres) Kill() error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	return p.run(exec.CommandContext(ctx, p.pgCtl, "stop", "-D", p.dir, "-m", "immediate", "-w"))
}

// Restart starts a stopped cluster again with its previous settings.
func (p *Postgres) Restart(ctx context.Context) error {
	logFile := filepath.Join(p.dir, "server.log")
	return p.run(exec.CommandContext(ctx, p.pgCtl, "start", "-D", p.dir, "-w", "-t", "60", "-l", logFile, "-o", p.opts))
}

// LogFile is the cluster's server log.
func (p *Postgres) LogFile() string { return filepath.Join(p.dir, "server.log") }

func (p *Postgres) run(cmd *exec.Cmd) error {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Dir = p.dir
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	// pg_ctl start leaves the server running: it must not die with our process group
	// signals (Ctrl-C reaches the sidecar, which then stops the server cleanly).
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

func chownTree(dir string, cred *syscall.Credential) error {
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("chown %s to postgres: %w", path, err)
		}
		return nil
	})
}

// checkTraversable fails with a clear message when the postgres user cannot reach dir.
func checkTraversable(dir string, cred *syscall.Credential) error {
	for d := filepath.Dir(dir); d != "/"; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("postgres dir: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			continue
		}
		mode := fi.Mode().Perm()
		if st.Uid == cred.Uid || mode&0o001 != 0 || (st.Gid == cred.Gid && mode&0o010 != 0) {
			continue
		}
		return fmt.Errorf("the postgres user cannot enter %s (mode %v): choose a --data-dir it can reach, or chmod o+x that folder", d, mode)
	}
	return nil
}

func freePort() (int, error) {
	l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
