package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/tandem-net/tandem/migrate/remote"
	"github.com/tandem-net/tandem/syncer"
)

// TestMigrateListener: the daemon's migration control serves the
// allowed follower (here without a migration datapath: every step is
// refused with no_datapath), refuses another host of the pair's CA and
// counts it, moves to a new address on reload and stops on close.
func TestMigrateListener(t *testing.T) {
	dir := t.TempDir()
	if _, err := syncer.IssueCerts(dir, map[string][]net.IP{"gw": {net.ParseIP("127.0.0.1")}, "peer": nil, "hv-1": nil}, syncer.CertOptions{}); err != nil {
		t.Fatal(err)
	}
	c := Defaults()
	c.Sync.Certs, c.Sync.Name = dir, "gw"
	c.Migrate.Listen, c.Migrate.Clients = "127.0.0.1:0", []string{"hv-1"}
	m := newMigremote(slog.New(slog.DiscardHandler))
	if err := m.apply(c); err != nil {
		t.Fatal(err)
	}
	defer m.close()
	do := func(name string) error {
		cfg, err := syncer.ClientTLSConfig(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		cl := &remote.Client{Gateways: []string{m.addr()}, TLS: cfg, Timeout: 5 * time.Second}
		defer cl.Close()
		_, err = cl.Do(context.Background(), remote.Request{Op: remote.OpBlackout, Endpoint: "10.1.0.5"})
		return err
	}
	var re *remote.RemoteError
	if err := do("hv-1"); !errors.As(err, &re) || re.Code != remote.CodeNoDatapath {
		t.Fatalf("allowed follower: %v, want code %s", err, remote.CodeNoDatapath)
	}
	if err := do("peer"); err == nil || errors.As(err, &re) {
		t.Fatalf("the sync peer's certificate, not allowed to drive migrations: %v, want refused in the handshake", err)
	}
	for i := 0; i < 500 && refusedName(m) < 2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	// The client dials twice (it retries once).
	if n := refusedName(m); n != 2 {
		t.Fatalf("refused for name: %v, want 2", n)
	}
	fams, err := m.reg.Gather()
	found := false
	for _, f := range fams {
		found = found || f.GetName() == "tandem_migrate_clients_refused_total"
	}
	if err != nil || !found {
		t.Fatalf("metrics: no tandem_migrate_clients_refused_total (%v)", err)
	}
	old := m.addr()
	c.Migrate.Listen = "127.0.0.1:0"
	c.Migrate.Clients = []string{"hv-1", "hv-2"}
	if err := m.apply(c); err != nil {
		t.Fatal(err)
	}
	if m.addr() == old {
		t.Fatal("a reload with other clients kept the old listener")
	}
	if _, err := net.DialTimeout("tcp", old, time.Second); err == nil {
		t.Fatal("the old listener still accepts")
	}
	c.Migrate.Listen = ""
	if err := m.apply(c); err != nil || m.addr() != "" {
		t.Fatalf("listen turned off: %v, still at %q", err, m.addr())
	}
	if !strings.Contains(old, "127.0.0.1:") {
		t.Fatalf("bound address %q", old)
	}
}

func refusedName(m *migremote) float64 {
	var d dto.Metric
	m.refused.WithLabelValues(remote.RefuseName).Write(&d)
	return d.GetCounter().GetValue()
}
