package cli

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/migrate/qmp"
	"github.com/tandem-net/tandem/migrate/remote"
	"github.com/tandem-net/tandem/syncer"
)

// statusOnly answers status for one endpoint and refuses every step.
type statusOnly struct{ remote.Controller }

func (statusOnly) Status(ep netip.Addr) (remote.Status, error) {
	return remote.Status{State: remote.StateNone}, nil
}

// serveRemote serves ctl as a migration control on loopback, the pair's
// certificates in dir (the gateway "gw" at 127.0.0.1, the one driver
// allowed "hv-a"), until the test ends.
func serveRemote(t *testing.T, ctl remote.Controller) (dir, addr string) {
	t.Helper()
	dir = t.TempDir()
	if _, err := syncer.IssueCerts(dir, map[string][]net.IP{"gw": {net.ParseIP("127.0.0.1")}, "hv-a": nil}, syncer.CertOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := syncer.TLSConfigAllowing(dir, "gw", []string{"hv-a"})
	if err != nil {
		t.Fatal(err)
	}
	srv := &remote.Server{TLS: cfg, Controller: ctl, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { ln.Close(); srv.Stop() })
	return dir, ln.Addr().String()
}

// TestMigrateRemote runs tandem migrate status against a migration
// control on loopback: the gateway is checked by the address dialled
// (its certificate lists 127.0.0.1) or by --gateway-name, and a wrong
// --gateway-name is refused by the client.
func TestMigrateRemote(t *testing.T) {
	dir, addr := serveRemote(t, statusOnly{})
	base := []string{"migrate", "status", "10.1.0.5", "--gateway", addr, "--certs", dir, "--name", "hv-a", "--timeout", "5s"}
	for _, tc := range []struct {
		name  string
		extra []string
		code  int
		out   string
	}{
		{"address dialled", nil, 0, "10.1.0.5: none"},
		{"gateway name", []string{"--gateway-name", "gw"}, 0, "10.1.0.5: none"},
		{"wrong gateway name", []string{"--gateway-name", "gw-z"}, 1, "not one of the allowed gw-z"},
		{"not an allowed client", []string{"--name", "gw"}, 1, "the gateway refused this host's certificate"},
		{"start without --to", []string{"start"}, 2, "--to"},
		{"start to a bad routed host", []string{"start", "--to", "ipip:nope"}, 2, "--to HOST or --to ipip:HOST"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string(nil), base...), tc.extra...)
			if tc.extra != nil && tc.extra[0] == "start" {
				args = append([]string{"migrate", "start", "10.1.0.5", "--gateway", addr, "--certs", dir, "--name", "hv-a"}, tc.extra[1:]...)
			}
			out, errOut, code := run(args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.out) {
				t.Fatalf("exit %d, want %d; out %q err %q, want %q", code, tc.code, out, errOut, tc.out)
			}
		})
	}
}

// standbyOnly refuses every step as a standby gateway does.
type standbyOnly struct{ statusOnly }

func (standbyOnly) Blackout(ep netip.Addr) error { return remote.ErrStandby }

// TestFollowerRetriesAtTheStandby: a step no gateway takes as the owner
// (the standby answers, the owner is not there yet: a failover under way)
// is retried by the follower, not skipped as a refusal.
func TestFollowerRetriesAtTheStandby(t *testing.T) {
	dir, addr := serveRemote(t, standbyOnly{})
	ccfg, err := syncer.ClientTLSConfig(dir, "hv-a")
	if err != nil {
		t.Fatal(err)
	}
	c := &remote.Client{Gateways: []string{addr}, TLS: ccfg, Timeout: 5 * time.Second}
	defer c.Close()
	s := &remoteSteps{c: c, ep: "10.1.0.5", to: "10.2.0.12", deadline: 20 * time.Second}
	err = s.Step(context.Background(), remote.OpBlackout)
	var p *qmp.Permanent
	if err == nil || errors.As(err, &p) {
		t.Fatalf("blackout at the standby: %v; want an error to retry, not a refusal", err)
	}
}
