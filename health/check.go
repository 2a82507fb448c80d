// Package health runs a service's backend health checks (TCP connect,
// HTTP and HTTPS GET, an external command) with keepalived's interval,
// rise and fall semantics, and reports each backend's verdict.
//
// Every backend has its own goroutine and every check its own deadline:
// a check that hangs ends at its timeout, and a slow backend never delays
// another backend's checks or the caller (see Runner).
package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Kinds of check.
const (
	TCP     = "tcp"     // a TCP connect to the backend
	HTTP    = "http"    // GET path over HTTP: up when the status is the expected one
	HTTPS   = "https"   // the same over TLS (verified unless Insecure)
	Command = "command" // a command run with the backend in its environment: exit 0 is up
)

// Defaults of a check's settings (keepalived's checkers default to a 60 s
// delay_loop and 5 s connect_timeout; a proxy that must stop sending new
// connections to a dead backend within seconds wants shorter ones).
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = time.Second
	DefaultRise     = 2
	DefaultFall     = 3
	DefaultPath     = "/"
	DefaultStatus   = 200
)

// Bounds of the settings: below MinInterval checks cost more than they
// tell; rise and fall above MaxCount make a verdict meaningless.
const (
	MinInterval = 10 * time.Millisecond
	MaxInterval = time.Hour
	MinTimeout  = time.Millisecond
	MaxCount    = 100
)

// MaxResponseHeader bounds the response headers an HTTP check reads:
// more fails the check.
const MaxResponseHeader = 64 << 10

// Check is one service's check, applied to each of its backends.
type Check struct {
	Kind     string
	Interval time.Duration // between the starts of two checks of a backend
	Timeout  time.Duration // one check's bound: a check still running then fails
	Rise     int           // consecutive passes that bring a down backend up
	Fall     int           // consecutive failures that take an up backend down
	Path     string        // http, https: the path (and query) to GET
	Status   int           // http, https: the status that means up
	Host     string        // http, https: the Host header and TLS server name; "": the backend's address
	Insecure bool          // https: skip certificate verification
	Command  []string      // command: argv; run with TANDEM_BACKEND_ADDR, _PORT, TANDEM_SERVICE
}

// Defaults fills the settings left zero.
func (c *Check) Defaults() {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = min(DefaultTimeout, c.Interval)
	}
	if c.Rise == 0 {
		c.Rise = DefaultRise
	}
	if c.Fall == 0 {
		c.Fall = DefaultFall
	}
	if c.Kind == HTTP || c.Kind == HTTPS {
		if c.Path == "" {
			c.Path = DefaultPath
		}
		if c.Status == 0 {
			c.Status = DefaultStatus
		}
	}
}

// Validate says what is wrong with c (after Defaults), naming the setting.
func (c *Check) Validate() error {
	switch c.Kind {
	case TCP, HTTP, HTTPS:
	case Command:
		if len(c.Command) == 0 || c.Command[0] == "" {
			return errors.New("check command: give the command to run (cmd=PATH or command = [...])")
		}
	default:
		return fmt.Errorf("check type %q: want tcp, http, https or command", c.Kind)
	}
	if c.Interval < MinInterval || c.Interval > MaxInterval {
		return fmt.Errorf("check interval %s: want %s to %s", c.Interval, MinInterval, MaxInterval)
	}
	if c.Timeout < MinTimeout || c.Timeout > c.Interval {
		return fmt.Errorf("check timeout %s: want %s to the interval (%s)", c.Timeout, MinTimeout, c.Interval)
	}
	if c.Rise < 1 || c.Rise > MaxCount || c.Fall < 1 || c.Fall > MaxCount {
		return fmt.Errorf("check rise %d, fall %d: want 1 to %d each", c.Rise, c.Fall, MaxCount)
	}
	if c.Kind == HTTP || c.Kind == HTTPS {
		if !strings.HasPrefix(c.Path, "/") {
			return fmt.Errorf("check path %q: want an absolute path (/healthz)", c.Path)
		}
		if c.Status < 100 || c.Status > 599 {
			return fmt.Errorf("check status %d: want an HTTP status, 100 to 599", c.Status)
		}
	}
	if c.Insecure && c.Kind != HTTPS {
		return errors.New("check insecure: only https checks verify certificates")
	}
	return nil
}

// String is the check in ParseCheck's syntax.
func (c Check) String() string {
	s := fmt.Sprintf("%s,interval=%s,timeout=%s,rise=%d,fall=%d", c.Kind, c.Interval, c.Timeout, c.Rise, c.Fall)
	if c.Kind == HTTP || c.Kind == HTTPS {
		s += fmt.Sprintf(",path=%s,status=%d", c.Path, c.Status)
		if c.Host != "" {
			s += ",host=" + c.Host
		}
	}
	if c.Insecure {
		s += ",insecure"
	}
	if c.Kind == Command {
		s += ",cmd=" + strings.Join(c.Command, " ")
	}
	return s
}

// ParseCheck reads a check written KIND[,KEY=VALUE...], the form of
// --health-check: keys interval, timeout (durations), rise, fall, path,
// status, host, insecure (no value), cmd (the rest of the string, split on
// spaces: it must come last). Unset settings get their defaults.
func ParseCheck(s string) (Check, error) {
	var c Check
	rest := s
	if i := strings.Index(rest, ",cmd="); i >= 0 {
		c.Command = strings.Fields(rest[i+len(",cmd="):])
		rest = rest[:i]
	}
	parts := strings.Split(rest, ",")
	c.Kind = strings.TrimSpace(parts[0])
	for _, p := range parts[1:] {
		k, v, hasV := strings.Cut(strings.TrimSpace(p), "=")
		var err error
		switch k {
		case "interval":
			c.Interval, err = time.ParseDuration(v)
		case "timeout":
			c.Timeout, err = time.ParseDuration(v)
		case "rise":
			c.Rise, err = strconv.Atoi(v)
		case "fall":
			c.Fall, err = strconv.Atoi(v)
		case "status":
			c.Status, err = strconv.Atoi(v)
		case "path":
			c.Path = v
		case "host":
			c.Host = v
		case "insecure":
			if hasV {
				c.Insecure, err = strconv.ParseBool(v)
			} else {
				c.Insecure = true
			}
		default:
			return Check{}, fmt.Errorf("check %q: unknown setting %q (interval, timeout, rise, fall, path, status, host, insecure, cmd)", s, k)
		}
		if err != nil {
			return Check{}, fmt.Errorf("check %q: %s: %w", s, k, err)
		}
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return Check{}, err
	}
	return c, nil
}

// Config is a check as the host config writes it ([proxy.service.check]).
type Config struct {
	Type     string   `toml:"type"`
	Interval string   `toml:"interval"`
	Timeout  string   `toml:"timeout"`
	Rise     int      `toml:"rise"`
	Fall     int      `toml:"fall"`
	Path     string   `toml:"path"`
	Status   int      `toml:"status"`
	Host     string   `toml:"host"`
	Insecure bool     `toml:"insecure"`
	Command  []string `toml:"command"`
}

// Check turns the config's table into a validated Check.
func (fc Config) Check() (Check, error) {
	c := Check{Kind: fc.Type, Rise: fc.Rise, Fall: fc.Fall, Path: fc.Path, Status: fc.Status, Host: fc.Host,
		Insecure: fc.Insecure, Command: fc.Command}
	var err error
	if fc.Interval != "" {
		if c.Interval, err = time.ParseDuration(fc.Interval); err != nil {
			return Check{}, fmt.Errorf("check interval: %w", err)
		}
	}
	if fc.Timeout != "" {
		if c.Timeout, err = time.ParseDuration(fc.Timeout); err != nil {
			return Check{}, fmt.Errorf("check timeout: %w", err)
		}
	}
	c.Defaults()
	return c, c.Validate()
}

// Checker runs one check of a backend; nil is up. It must return by the
// context's deadline.
type Checker interface {
	Check(ctx context.Context, service, backend netip.AddrPort) error
}

// CheckerFunc adapts a function to Checker.
type CheckerFunc func(ctx context.Context, service, backend netip.AddrPort) error

func (f CheckerFunc) Check(ctx context.Context, service, backend netip.AddrPort) error {
	return f(ctx, service, backend)
}

// NewChecker is the checker of c's kind.
func NewChecker(c Check) Checker {
	switch c.Kind {
	case HTTP, HTTPS:
		return newHTTPChecker(c)
	case Command:
		return commandChecker{argv: c.Command}
	default:
		return CheckerFunc(tcpCheck)
	}
}

func tcpCheck(ctx context.Context, _, backend netip.AddrPort) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", backend.String())
	if err != nil {
		return err
	}
	return conn.Close()
}

type httpChecker struct {
	c      Check
	client *http.Client
}

func newHTTPChecker(c Check) *httpChecker {
	tr := &http.Transport{
		// A fresh connection each check: a check proves the backend
		// accepts connections, which a kept-alive one would not.
		DisableKeepAlives: true,
		// A check needs the status line; a backend's headers beyond this
		// are not worth the memory (the client's default is 10 MiB, per
		// check, per backend, at once).
		MaxResponseHeaderBytes: MaxResponseHeader,
		TLSClientConfig:        &tls.Config{InsecureSkipVerify: c.Insecure, ServerName: c.Host},
		Proxy:                  nil, // a backend is never reached through an HTTP proxy
	}
	return &httpChecker{c: c, client: &http.Client{
		Transport: tr,
		// A redirect is an answer: compare its status, do not follow it.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (h *httpChecker) Check(ctx context.Context, _, backend netip.AddrPort) error {
	url := h.c.Kind + "://" + backend.String() + h.c.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if h.c.Host != "" {
		req.Host = h.c.Host
	}
	req.Header.Set("User-Agent", "tandem-health/1")
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Read a little of the body so the server is not reset mid-answer;
	// the connection is not reused.
	_, _ = io.CopyN(io.Discard, resp.Body, 4096)
	if resp.StatusCode != h.c.Status {
		return fmt.Errorf("status %d, want %d", resp.StatusCode, h.c.Status)
	}
	return nil
}

type commandChecker struct{ argv []string }

// Check runs the command in its own process group, so the kill at the
// timeout reaches whatever it started too, and does not wait for pipes
// an orphan keeps open (WaitDelay). Its exit status is the verdict: what
// it left running in its group is killed when it exits (thousands of
// checks would otherwise leave thousands of processes), and an orphan
// that held its output past the exit does not fail it. A child that
// leaves the group (setsid) escapes: a check must not daemonize.
func (cc commandChecker) Check(ctx context.Context, service, backend netip.AddrPort) error {
	cmd := exec.CommandContext(ctx, cc.argv[0], cc.argv[1:]...)
	cmd.Env = append(checkEnv(os.Environ()),
		"TANDEM_SERVICE="+service.String(),
		"TANDEM_BACKEND_ADDR="+backend.Addr().String(),
		"TANDEM_BACKEND_PORT="+strconv.Itoa(int(backend.Port())))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 100 * time.Millisecond
	var tail tailBuf
	cmd.Stdout, cmd.Stderr = &tail, &tail
	err := cmd.Run()
	if cmd.Process != nil {
		// The leader is reaped; its group id stays reserved while a
		// member lives, so this reaches only what the command left.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success() {
		err = nil // an orphan held the output: the command itself passed
	}
	if ctx.Err() != nil {
		return fmt.Errorf("command killed at the timeout: %w", ctx.Err())
	}
	if err != nil {
		if msg := strings.TrimSpace(tail.String()); msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}

// checkEnv is the daemon's environment without what is the daemon's
// alone: the service manager's readiness and watchdog sockets (a check
// that ran systemd-notify would speak for the daemon).
func checkEnv(env []string) []string {
	return slices.DeleteFunc(env, func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == "NOTIFY_SOCKET" || k == "WATCHDOG_PID" || k == "WATCHDOG_USEC" || k == "LISTEN_FDS" || k == "LISTEN_PID" || k == "LISTEN_FDNAMES"
	})
}

// tailBuf keeps the last 200 bytes a command wrote: the error's detail.
type tailBuf struct{ b []byte }

func (t *tailBuf) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 200 {
		t.b = t.b[len(t.b)-200:]
	}
	return len(p), nil
}

func (t *tailBuf) String() string { return string(t.b) }
