package loader

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadConfigFileKinds: a config path that is not a regular file
// (a FIFO, a device, a directory, a symlink to one) is refused at once
// with the reason; before, a FIFO blocked tandem config check (and up)
// in open(2) forever, deaf to SIGTERM, and a symlink to /dev/zero read
// until memory ran out. A file larger than MaxConfigBytes is refused
// unread (300 MB took 32 s and 1.3 GB of memory to reject). A symlink
// to a regular file (config management's way) is read.
func TestReadConfigFileKinds(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.toml")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", 1<<20)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("interfaces = [\"eth0\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.toml")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, errHas string }{
		{"fifo", fifo, "not a regular file"},
		{"symlink to /dev/zero", zero, "not a regular file"},
		{"directory", dir, "not a regular file"},
		{"too big", big, "larger than"},
		{"symlink to a file", link, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { _, err := ReadConfig(tc.path); done <- err }()
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				// Unblock the reader (a FIFO's open waits for a writer).
				if w, oerr := os.OpenFile(tc.path, os.O_WRONLY|syscall.O_NONBLOCK, 0); oerr == nil {
					w.Close()
				}
				t.Fatalf("ReadConfig(%s) still blocked after 20 s", tc.name)
			}
			switch {
			case tc.errHas == "" && err != nil:
				t.Errorf("err %v, want none", err)
			case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
				t.Errorf("err %v, want one with %q", err, tc.errHas)
			}
		})
	}
}
