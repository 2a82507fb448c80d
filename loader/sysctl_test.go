package loader

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/maps"
)

// TestSysctlRecord: the first change records the original, later ones
// never overwrite it, a value that needs no change records nothing, and
// restore puts back every original (spaces and '=' included) and drops
// the records; a sysctl gone by then is skipped.
func TestSysctlRecord(t *testing.T) {
	dir := t.TempDir()
	old := procSys
	procSys = filepath.Join(dir, "proc")
	t.Cleanup(func() { procSys = old })
	pins := maps.Pins{Root: filepath.Join(dir, "root")}
	write := func(path, v string) {
		t.Helper()
		full := filepath.Join(procSys, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(path string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(procSys, path))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	const local, tcp, same, gone = "net/ipv4/conf/eth0.5/accept_local", "net/ipv4/tcp_rmem", "net/ipv4/conf/eth1/accept_local", "net/ipv4/conf/veth9/accept_local"
	write(local, "0")
	write(tcp, "4096 a=b 6291456")
	write(same, "1")
	write(gone, "0")
	for _, s := range []struct{ path, v string }{{local, "1"}, {local, "1"}, {tcp, "1 2 3"}, {same, "1"}, {gone, "1"}} {
		if err := setSysctl(pins, s.path, s.v); err != nil {
			t.Fatal(err)
		}
		if got := read(s.path); got != s.v && got != s.v+"\n" {
			t.Fatalf("%s = %q after set, want %q", s.path, got, s.v)
		}
	}
	// A record is a bpffs directory: no '.' in its name (bpffs refuses
	// it; this temp dir would not), yet local's interface has one.
	des, _ := os.ReadDir(sysctlDir(pins))
	for _, d := range des {
		if strings.Contains(d.Name(), ".") {
			t.Errorf("record %q has a '.': bpffs refuses it", d.Name())
		}
	}
	// A record an earlier build made (no escapes) reads as before.
	const earlier = "net/ipv4/conf/eth2/accept_local"
	write(earlier, "1")
	if err := os.Mkdir(filepath.Join(sysctlDir(pins), "net:ipv4:conf:eth2:accept_local=0"), 0o700); err != nil {
		t.Fatal(err)
	}
	recs, err := sysctlRecords(pins)
	if err != nil || len(recs) != 4 {
		t.Fatalf("records %+v, %v: want local, tcp, gone and earlier, once each", recs, err)
	}
	os.RemoveAll(filepath.Dir(filepath.Join(procSys, gone))) // the interface went away
	restored, err := restoreSysctls(pins)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(restored)
	if want := []string{local + "=0", earlier + "=0", tcp + "=4096 a=b 6291456"}; !slices.Equal(restored, want) {
		t.Errorf("restored %q, want %q", restored, want)
	}
	if got := read(local); got != "0" {
		t.Errorf("%s = %q after restore, want 0", local, got)
	}
	if got := read(tcp); got != "4096 a=b 6291456" {
		t.Errorf("%s = %q after restore", tcp, got)
	}
	if des, _ := os.ReadDir(sysctlDir(pins)); len(des) != 0 {
		t.Errorf("records left after restore: %v", des)
	}
}

// TestSysctlRecordsUntrusted: down writes what the records say as root,
// so a record is honoured only when nobody else could have made it: a
// path that leaves /proc/sys (escaped dots decode to "..") is ignored,
// and a records directory that group or others may write is refused.
func TestSysctlRecordsUntrusted(t *testing.T) {
	dir := t.TempDir()
	old := procSys
	procSys = filepath.Join(dir, "proc")
	t.Cleanup(func() { procSys = old })
	if err := os.MkdirAll(procSys, 0o755); err != nil {
		t.Fatal(err)
	}
	pins := maps.Pins{Root: filepath.Join(dir, "root")}
	if err := os.MkdirAll(filepath.Join(sysctlDir(pins), "%2E%2E:escaped=1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "escaped"), []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := restoreSysctls(pins); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "escaped")); string(b) != "0" {
		t.Errorf("a record of ../escaped was written outside /proc/sys: %q", b)
	}
	if err := os.Chmod(sysctlDir(pins), 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := sysctlRecords(pins); err == nil {
		t.Error("records in a directory others may write were trusted")
	}
}
