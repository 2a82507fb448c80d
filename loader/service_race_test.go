package loader_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestServiceAddConcurrent: many `tandem service add` at once (as a
// deployment script run on every service might) never share a service id,
// never lose or overwrite a backend and never leave a reverse entry that
// points at the wrong VIP. Each process reads the services, picks a free id
// and writes: without one lock over that, two picks collide. Each round
// runs the adds as parallel processes of the real binary; each add pauses
// 50 ms between its read and its write (TANDEM_TEST_SERVICE_PAUSE), so
// without the lock they collide every time.
func TestServiceAddConcurrent(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	root := gw.BPFFS()
	secret := filepath.Join(t.TempDir(), "cookie.key")
	if err := os.WriteFile(secret, []byte("a pair's shared cookie secret, 32+ bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustTandem(t, gw, "up", "--once", "--bpffs", root, "--proxy-iface", "eth0", "--proxy-secret", secret)
	const n = 20
	// A race shows only sometimes on a busy machine: a few rounds, each
	// from an empty table.
	for round := range 2 {
		want := map[netip.AddrPort][]netip.AddrPort{}
		var wg sync.WaitGroup
		errs := make([]string, n)
		for i := range n {
			vip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 77, 0, byte(10 + i)}), 80)
			bes := []netip.AddrPort{
				netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 66, byte(i), 1}), 8080),
				netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 66, byte(i), 2}), 8080),
			}
			want[vip] = bes
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r := tandemEnv(t, gw, []string{"TANDEM_TEST_SERVICE_PAUSE=50ms"}, "service", "add", "--bpffs", root, vip.String(), bes[0].String(), bes[1].String()); r.code != 0 {
					errs[i] = fmt.Sprintf("service add %s: exit %d: %s", vip, r.code, r.stderr)
				}
			}()
		}
		wg.Wait()
		for _, e := range errs {
			if e != "" {
				t.Error(e)
			}
		}
		checkServices(t, gw, want)
		if t.Failed() {
			t.Fatalf("round %d: services inconsistent after %d concurrent adds", round, n)
		}
		for vip := range want {
			mustTandem(t, gw, "service", "del", "--bpffs", root, vip.String())
		}
	}
}

// checkServices compares the pinned service tables with want: one
// distinct id per service, its backends in order, and exactly one reverse
// entry per backend, naming that backend's VIP.
func checkServices(t *testing.T, gw *lab.Host, want map[netip.AddrPort][]netip.AddrPort) {
	t.Helper()
	root := gw.BPFFS()
	r := mustTandem(t, gw, "service", "list", "--json", "--bpffs", root)
	var got []maps.Service
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("service list --json: %v\n%s", err, r.stdout)
	}
	if len(got) != len(want) {
		t.Errorf("%d services, want %d", len(got), len(want))
	}
	ids := map[uint32]netip.AddrPort{}
	for _, s := range got {
		if other, dup := ids[s.ID]; dup {
			t.Errorf("services %s and %s share id %d", other, s.VIP, s.ID)
		}
		ids[s.ID] = s.VIP
		if !slices.Equal(s.Backends, want[s.VIP]) {
			t.Errorf("service %s (id %d): backends %v, want %v", s.VIP, s.ID, s.Backends, want[s.VIP])
		}
	}
	pins := maps.Pins{Root: root}
	rev, err := ebpf.LoadPinnedMap(pins.Map(bpf.SynproxyMapSpBackendRev), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rev.Close()
	owner := map[netip.AddrPort]netip.AddrPort{}
	for vip, bes := range want {
		for _, b := range bes {
			owner[b] = vip
		}
	}
	var (
		k    maps.SvcKey
		v    maps.RevVal
		nrev int
	)
	it := rev.Iterate()
	for it.Next(&k, &v) {
		nrev++
		be := netip.AddrPortFrom(netip.AddrFrom16(k.Addr).Unmap(), maps.HostPort(k.Port))
		vip := netip.AddrPortFrom(netip.AddrFrom16(v.Vaddr).Unmap(), maps.HostPort(v.Vport))
		if owner[be] != vip {
			t.Errorf("reverse entry %s -> %s: want -> %v (orphan or stale)", be, vip, owner[be])
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if nrev != len(owner) {
		t.Errorf("%d reverse entries, want %d (one per backend)", nrev, len(owner))
	}
}

// tandemEnv is tandem with extra environment variables.
func tandemEnv(t testing.TB, h *lab.Host, env []string, args ...string) result {
	t.Helper()
	cmd := h.Cmd(testenv.Tandem(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run tandem %v: %v", args, err)
	}
	return r
}
