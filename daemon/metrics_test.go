package daemon

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMetricsCutsIdleAndSlowClients: the metrics endpoint, reachable by
// whoever reaches --metrics-addr, does not keep a connection for a client
// that idles after a scrape, never finishes its headers, or sends headers
// without end. The limits are shortened for the test; "never" is a wait
// far longer than them.
func TestMetricsCutsIdleAndSlowClients(t *testing.T) {
	saved := metricsLimits
	t.Cleanup(func() { metricsLimits = saved })
	metricsLimits.ReadHeader, metricsLimits.Read, metricsLimits.Idle = 300*time.Millisecond, time.Second, 300*time.Millisecond
	d := newSyncd(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := d.serveMetrics("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	const never = 20 * time.Second
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", d.bound)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(never))
		return c
	}
	// closed waits for the server to close c: EOF or a reset, not our
	// own deadline.
	closed := func(t *testing.T, c net.Conn, r *bufio.Reader) {
		t.Helper()
		_, err := io.Copy(io.Discard, r)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the server kept the connection for %s", never)
		}
	}

	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial(t)
		r := bufio.NewReader(c)
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "go_goroutines") || resp.Close {
			t.Fatalf("scrape: %s, close %v, %d bytes", resp.Status, resp.Close, len(body))
		}
		closed(t, c, r)
	})
	t.Run("headers never finished", func(t *testing.T) {
		c := dial(t)
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
		closed(t, c, bufio.NewReader(c))
	})
	t.Run("headers without end", func(t *testing.T) {
		c := dial(t)
		req := "GET /metrics HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 100)+"\r\n", 300)
		io.WriteString(c, req) // the server may stop reading part-way
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%d bytes of headers: no answer (%v); want 431", len(req), err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("%d bytes of headers: %s, want 431", len(req), resp.Status)
		}
	})
}

// TestMetricsConnLimit: clients hold at most metricsLimits.Conns
// connections at once; one more waits (in the listen backlog) until a
// slot frees, then is served. The daemon's file descriptors are not the
// clients' to use up.
func TestMetricsConnLimit(t *testing.T) {
	saved := metricsLimits
	t.Cleanup(func() { metricsLimits = saved })
	metricsLimits.Conns = 2
	d := newSyncd(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := d.serveMetrics("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	scrape := func(c net.Conn) (*http.Response, error) {
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	var held []net.Conn
	for range metricsLimits.Conns {
		c, err := net.Dial("tcp", d.bound)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		// A scrape proves the server accepted it; it then idles.
		if _, err := scrape(c); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	extra, err := net.Dial("tcp", d.bound) // the kernel completes the handshake
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	// Not served while the slots are held. (A slow machine can only
	// make this pass without the limit, never fail with it.)
	extra.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if resp, err := scrape(extra); err == nil {
		t.Fatalf("a connection over the limit of %d was served: %s", metricsLimits.Conns, resp.Status)
	}
	// A freed slot serves it.
	held[0].Close()
	extra.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := http.ReadResponse(bufio.NewReader(extra), nil); err != nil {
		t.Fatalf("once a slot was free, the waiting connection was not served: %v", err)
	}
}
