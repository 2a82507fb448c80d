package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// kernel is a bootable kernel and its module tree.
type kernel struct {
	Vmlinuz    string
	ModulesDir string // .../lib/modules/RELEASE
	Release    string
}

// DefaultCache keeps fetched kernels between runs (and between CI runs on
// one machine), outside any checkout.
const DefaultCache = "/var/cache/tandem/kernels"

// resolveKernel turns --kernel into a kernel: a vmlinuz path (its modules
// beside it in an extracted package, in /lib/modules, or --modules), or a
// version such as 6.1, fetched as Debian's current linux-image package.
func resolveKernel(spec, modules, cache string, progress io.Writer) (*kernel, error) {
	if strings.Contains(spec, "/") {
		return localKernel(spec, modules)
	}
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+$`).MatchString(spec) {
		return nil, fmt.Errorf("--kernel %q: give a vmlinuz path or a version such as 6.1", spec)
	}
	return debianKernel(spec, cache, progress)
}

func localKernel(path, modules string) (*kernel, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	k := &kernel{Vmlinuz: path}
	if modules != "" {
		k.ModulesDir, k.Release = modules, filepath.Base(modules)
		return k, nil
	}
	rel, ok := strings.CutPrefix(filepath.Base(path), "vmlinuz-")
	if !ok {
		return nil, fmt.Errorf("kernel %s: cannot tell its release from the name; pass --modules /lib/modules/RELEASE", path)
	}
	k.Release = rel
	for _, d := range []string{filepath.Join(filepath.Dir(path), "..", "lib", "modules", rel), filepath.Join("/lib/modules", rel)} {
		if _, err := os.Stat(filepath.Join(d, "kernel")); err == nil {
			k.ModulesDir, _ = filepath.Abs(d)
			return k, nil
		}
	}
	return nil, fmt.Errorf("kernel %s: no module tree for %s beside it or in /lib/modules; pass --modules", path, rel)
}

// debianPackage finds the newest linux-image-VERSION.*-N-amd64 package
// apt knows, so the name is resolved now rather than written down.
func debianPackage(version string) (string, error) {
	out, err := exec.Command("apt-cache", "search", "--names-only", "^linux-image-"+regexp.QuoteMeta(version)+`\.[0-9]+-[0-9]+-amd64$`).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache search: %w", err)
	}
	re := regexp.MustCompile(`^(linux-image-` + regexp.QuoteMeta(version) + `\.[0-9]+-([0-9]+)-amd64) `)
	type cand struct {
		name string
		abi  int
	}
	var cs []cand
	for _, l := range strings.Split(string(out), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			abi, _ := strconv.Atoi(m[2])
			cs = append(cs, cand{m[1], abi})
		}
	}
	if len(cs) == 0 {
		return "", fmt.Errorf("no Debian package for Linux %s in apt's lists (run apt-get update; this machine's sources must carry it)", version)
	}
	slices.SortFunc(cs, func(a, b cand) int { return a.abi - b.abi })
	return cs[len(cs)-1].name, nil
}

func debianKernel(version, cache string, progress io.Writer) (*kernel, error) {
	pkg, err := debianPackage(version)
	if err != nil {
		return nil, err
	}
	rel := strings.TrimPrefix(pkg, "linux-image-")
	dir := filepath.Join(cache, pkg)
	k := &kernel{Vmlinuz: filepath.Join(dir, "boot", "vmlinuz-"+rel), ModulesDir: filepath.Join(dir, "lib", "modules", rel), Release: rel}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return k, nil
	}
	fmt.Fprintf(progress, "vmtest: fetching %s (Debian's Linux %s) into %s\n", pkg, version, dir)
	tmp, err := os.MkdirTemp(cache+"-tmp", "")
	if err != nil {
		if err := os.MkdirAll(cache+"-tmp", 0o755); err != nil {
			return nil, err
		}
		if tmp, err = os.MkdirTemp(cache+"-tmp", ""); err != nil {
			return nil, err
		}
	}
	defer os.RemoveAll(tmp)
	// apt-get download drops privileges to _apt, which needs to write here.
	os.Chmod(tmp, 0o777)
	dl := exec.Command("apt-get", "download", "-q", pkg)
	dl.Dir, dl.Stdout, dl.Stderr = tmp, progress, progress
	if err := dl.Run(); err != nil {
		return nil, fmt.Errorf("apt-get download %s: %w", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s: no .deb", pkg)
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	x := exec.Command("dpkg-deb", "-x", debs[0], dir)
	x.Stdout, x.Stderr = progress, progress
	if err := x.Run(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x: %w", err)
	}
	for _, p := range []string{k.Vmlinuz, filepath.Join(k.ModulesDir, "kernel")} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s: the package has no %s", pkg, p)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".complete"), []byte(pkg+"\n"), 0o644); err != nil {
		return nil, err
	}
	return k, nil
}

var errNotStatic = errors.New("vmtest must be a static binary to run as the guest's init: build it with CGO_ENABLED=0")
