// Package testenv holds what tandem's tests share: skips that name the
// missing feature, the tandem binary built once per test binary, and the
// -update flag for golden files.
package testenv

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Update rewrites golden files instead of comparing against them:
//
//	go test ./bpf -run Fixtures -update
var Update = flag.Bool("update", false, "rewrite golden files under testdata/")

// RequireRoot skips a privileged test when not root. CI runs as root, so
// there these tests always run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (CAP_BPF, CAP_NET_ADMIN); run the suite as root, as CI does")
	}
}

// RequireFeature skips when a kernel feature probe failed, naming it.
func RequireFeature(t testing.TB, name string, probeErr error) {
	t.Helper()
	if probeErr != nil {
		t.Skipf("skipped: kernel feature %q missing: %v", name, probeErr)
	}
}

// RequireCommand fails when a tool the test needs is not installed: the
// Makefile and .ci/run install them, so a missing one is a setup error,
// not a reason to skip.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (make deps installs it)", name)
	}
	return p
}

// RepoRoot is the module root, found from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// Tandem returns the path of a tandem binary built from this tree, built
// once per test binary; $TANDEM_BIN names a prebuilt one (the VM runs use
// the host's, built by make).
func Tandem(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TANDEM_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tandem-bin-")
		if err != nil {
			buildErr = err
			return
		}
		// Readable by all: some tests run it as an unprivileged user.
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "tandem")
		cmd := exec.Command("go", "build", "-o", binPath, "./loader/cmd/tandem")
		cmd.Dir = RepoRoot()
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build tandem: %v\n%s", buildErr, buildOut)
	}
	return binPath
}
