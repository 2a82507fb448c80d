package loader

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/tools/testenv"
)

// TestReadSecretPermissions: the pair's secret (cookie keys, signed
// adverts) is refused, as ssh refuses a private key, when group or others
// may read or write it, when someone other than root or this user owns
// it, or when it is not a regular file; the error says the fix.
func TestReadSecretPermissions(t *testing.T) {
	const secret = "a pair's shared secret, 32+ bytes"
	cases := []struct {
		name  string
		mode  os.FileMode
		owner int // -1: as created
		want  string
	}{
		{"owner only", 0o600, -1, ""},
		{"read only", 0o400, -1, ""},
		{"world readable", 0o644, -1, "(mode 0644): chmod 600"},
		{"group readable", 0o640, -1, "(mode 0640): chmod 600"},
		{"others writable", 0o602, -1, "(mode 0602): chmod 600"},
		{"another user's", 0o600, 65534, "owned by uid 65534"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pair.key")
			if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, c.mode); err != nil {
				t.Fatal(err)
			}
			if c.owner >= 0 {
				testenv.RequireRoot(t) // to give the file away
				if err := os.Chown(path, c.owner, -1); err != nil {
					t.Fatal(err)
				}
			}
			b, err := ReadSecret(path)
			if c.want == "" {
				if err != nil || string(b) != secret {
					t.Fatalf("ReadSecret: %q, %v", b, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted a secret file with mode %04o, owner %d", c.mode, c.owner)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q lacks %q or the path", err, c.want)
			}
		})
	}
	t.Run("not a regular file", func(t *testing.T) {
		if _, err := ReadSecret(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("a directory as secret: %v", err)
		}
	})
}
