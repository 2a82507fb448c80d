package syncer_test

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/syncer"
)

// TestIssueCertsLifetimes: the CA outlives the host certificates (10
// years against 1 by default); issuing again reuses the CA, so a renewed
// host still trusts and is trusted by its peer; NewCA replaces it; a host
// certificate never outlives its CA.
func TestIssueCertsLifetimes(t *testing.T) {
	dir := t.TempDir()
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	hosts := map[string][]net.IP{"gw-a": lo, "gw-b": lo}
	rep, err := syncer.IssueCerts(dir, hosts, syncer.CertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hostEnd, caEnd, err := syncer.CertExpiry(dir, "gw-a")
	if err != nil {
		t.Fatal(err)
	}
	days := func(at time.Time) int { return int(time.Until(at).Hours() / 24) }
	if !rep.CACreated || rep.CAReplaced || days(caEnd) < 3640 || days(hostEnd) < 364 || days(hostEnd) > 366 {
		t.Fatalf("first issue: report %+v, CA %d days, host %d days", rep, days(caEnd), days(hostEnd))
	}
	ca, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))

	rep, err = syncer.IssueCerts(dir, map[string][]net.IP{"gw-b": lo}, syncer.CertOptions{HostValidity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if rep.CACreated || !bytes.Equal(ca, again) {
		t.Fatalf("re-issue replaced the CA: %+v", rep)
	}
	if b, _, _ := syncer.CertExpiry(dir, "gw-b"); days(b) > 2 {
		t.Fatalf("renewed gw-b valid %d days, want 2", days(b))
	}
	// The renewed host and the untouched one still make a session.
	pairSession(t, dir, "gw-a", "gw-b")

	rep, err = syncer.IssueCerts(dir, map[string][]net.IP{"gw-a": nil}, syncer.CertOptions{NewCA: true, CAValidity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	again, _ = os.ReadFile(filepath.Join(dir, "ca.pem"))
	if !rep.CACreated || !rep.CAReplaced || bytes.Equal(ca, again) || !rep.Hosts[0].Capped || rep.Hosts[0].NotAfter.After(rep.CANotAfter) {
		t.Fatalf("new CA: %+v", rep)
	}
}

// pairSession checks that a's and b's certificates in dir make a TLS
// session with each naming the other as its peer.
func pairSession(t *testing.T, dir, a, b string) {
	t.Helper()
	ln := listen(t)
	defer ln.Close()
	srv := tlsPeer(t, dir, b, a)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		errc <- tlsServer(c, srv)
	}()
	c, err := tlsDialCfg(ln.Addr().String(), tlsPeer(t, dir, a, b))
	if err != nil {
		t.Fatalf("%s to %s: %v", a, b, err)
	}
	c.Close()
	if err := <-errc; err != nil {
		t.Fatalf("%s accepting %s: %v", b, a, err)
	}
}

// TestKeyFileModes: keys are written 0600, also over a file that was
// readable before; a key that group or others can read is refused with
// the command that fixes it.
func TestKeyFileModes(t *testing.T) {
	dir := t.TempDir()
	_, kf := syncer.HostFiles(dir, "gw-a")
	os.WriteFile(kf, []byte("old"), 0o644)
	if _, err := syncer.IssueCerts(dir, map[string][]net.IP{"gw-a": nil, "gw-b": nil}, syncer.CertOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{kf, filepath.Join(dir, "ca-key.pem")} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", f, st.Mode(), err)
		}
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		os.Chmod(kf, mode)
		_, err := syncer.TLSConfig(dir, "gw-a", "gw-b")
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+kf) {
			t.Fatalf("key mode %04o: %v", mode, err)
		}
	}
	// The CA key too, when tandem certs reuses it.
	os.Chmod(kf, 0o600)
	os.Chmod(filepath.Join(dir, "ca-key.pem"), 0o644)
	if _, err := syncer.IssueCerts(dir, map[string][]net.IP{"gw-a": nil}, syncer.CertOptions{}); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("readable CA key: %v", err)
	}
	if _, err := syncer.TLSConfig(dir, "gw-a", "gw-b"); err != nil {
		t.Fatalf("mode 0600: %v", err)
	}
}

// TestExpiryWarnings: certificates of short life warn within 30 days of
// their end, with what to do; those further out do not.
func TestExpiryWarnings(t *testing.T) {
	dir := t.TempDir()
	if _, err := syncer.IssueCerts(dir, map[string][]net.IP{"gw-a": nil}, syncer.CertOptions{HostValidity: 10 * 24 * time.Hour, CAValidity: 40 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	host, ca, err := syncer.CertExpiry(dir, "gw-a")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cases := []struct {
		at   time.Time
		want []string
	}{
		{now, []string{"host's sync certificate expires", "(9 days left)", "re-issue it with tandem certs"}},
		{now.Add(11 * 24 * time.Hour), []string{"host's sync certificate expired", "pair CA expires", "--new-ca"}},
		{now.Add(41 * 24 * time.Hour), []string{"host's sync certificate expired", "pair CA expired"}},
	}
	for _, c := range cases {
		got := strings.Join(syncer.ExpiryWarnings(c.at, host, ca), "\n")
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("at +%s: %q lacks %q", c.at.Sub(now).Round(time.Hour), got, w)
			}
		}
	}
	if got := syncer.ExpiryWarnings(now, now.Add(31*24*time.Hour), now.Add(3650*24*time.Hour)); len(got) != 0 {
		t.Errorf("31 days left: %q", got)
	}
	if got := syncer.ExpiryWarnings(now, host, ca); len(got) != 1 {
		t.Errorf("now: %q, want only the host certificate's", got)
	}
}

// TestPeerNameDefault: without a configured peer name, the one other
// host certificate in the directory is the peer; with more, the name
// must be given.
func TestPeerNameDefault(t *testing.T) {
	dir := t.TempDir()
	syncer.MakeCerts(dir, map[string][]net.IP{"gw-a": nil, "gw-b": nil}, time.Hour)
	if p, err := syncer.PeerName(dir, "gw-a"); p != "gw-b" || err != nil {
		t.Fatalf("peer of gw-a: %q %v", p, err)
	}
	syncer.MakeCerts(dir, map[string][]net.IP{"gw-c": nil}, time.Hour)
	if _, err := syncer.PeerName(dir, "gw-a"); err == nil || !strings.Contains(err.Error(), "--sync-peer-name") {
		t.Fatalf("three hosts: %v", err)
	}
	if _, err := syncer.TLSConfig(dir, "gw-a", "gw-a"); err == nil {
		t.Fatal("a host admitting its own name")
	}
}
