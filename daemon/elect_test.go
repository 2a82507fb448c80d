package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPeerNameFor: the peer's name is --vip-peer-name, else the one host
// certificate in the sync's directory that is not this host's; anything
// else is an error that names the flag.
func TestPeerNameFor(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flag  string
		files []string
		want  string
		err   string
	}{
		{"the other certificate", "", []string{"ca.pem", "ca-key.pem", "a.pem", "a-key.pem", "b.pem", "b-key.pem"}, "b", ""},
		{"the flag wins", "gw-c", []string{"ca.pem", "a.pem", "b.pem"}, "gw-c", ""},
		{"only our own", "", []string{"ca.pem", "a.pem", "a-key.pem"}, "", "--vip-peer-name"},
		{"three hosts", "", []string{"ca.pem", "a.pem", "b.pem", "c.pem"}, "", "besides"},
		{"our own name", "a", nil, "", "own name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			c := Defaults()
			c.Sync.Certs = dir
			c.Elect.PeerName = tc.flag
			got, err := c.Elect.PeerNameFor(&c, "a")
			if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("PeerNameFor = %q, %v; want %q, error ~%q", got, err, tc.want, tc.err)
			}
		})
	}
}
