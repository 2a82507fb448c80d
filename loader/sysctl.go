package loader

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/tandem-net/tandem/maps"
)

// Sysctls that up changes are recorded under the pin root, so down, which
// removes exactly what tandem made, puts each back. bpffs holds no regular
// files, so a record is an empty directory named after the sysctl and its
// original value: sysctl/net:ipv4:conf:eth0:accept_local=0 (interface
// names cannot hold ':'; the value is query-escaped, so the last '='
// splits the two). bpffs refuses '.' in names, which VLAN interfaces
// have: the path is path-escaped with '.' too ("eth0%2E100"; a record
// without escapes reads the same).

// procSys is where sysctls live; a variable so a test can use a temp dir.
var procSys = "/proc/sys"

func sysctlDir(pins maps.Pins) string { return filepath.Join(pins.Root, "sysctl") }

// setSysctl writes value to the sysctl at path (relative to /proc/sys,
// e.g. "net/ipv4/conf/eth0/accept_local"). The first time it changes the
// sysctl under pins it records the value found, and it never records
// again while that record is there: a second up would find its own
// value, not the original.
func setSysctl(pins maps.Pins, path, value string) error {
	full := filepath.Join(procSys, path)
	cur, err := os.ReadFile(full)
	if err != nil {
		return fmt.Errorf("read sysctl %s: %w", path, err)
	}
	orig := strings.TrimSpace(string(cur))
	if orig == value {
		return nil
	}
	if _, ok, err := sysctlRecord(pins, path); err != nil {
		return err
	} else if !ok {
		if err := os.MkdirAll(sysctlDir(pins), 0o700); err != nil {
			return fmt.Errorf("record sysctl %s: %w", path, err)
		}
		// Recorded before the write: a crash in between leaves the
		// original on record, never a lost one.
		name := sysctlRecordName(path) + "=" + url.QueryEscape(orig)
		if err := os.Mkdir(filepath.Join(sysctlDir(pins), name), 0o700); err != nil {
			return fmt.Errorf("record sysctl %s: %w", path, err)
		}
	}
	if err := os.WriteFile(full, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", path, value, err)
	}
	return nil
}

// sysctlRecordName is the record's name for a sysctl path: '/' as ':',
// '.' (and '%', the escape itself) as %2E (%25).
func sysctlRecordName(path string) string {
	path = strings.ReplaceAll(path, "%", "%25")
	path = strings.ReplaceAll(path, ".", "%2E")
	return strings.ReplaceAll(path, "/", ":")
}

type sysctlSaved struct{ entry, path, value string }

// sysctlRecords lists the recorded originals under pins.
func sysctlRecords(pins maps.Pins) ([]sysctlSaved, error) {
	// down writes what the records say, as root: trust them only when
	// nobody else could have made them (a root directory someone made
	// before up, in a bpffs mounted open to all, would let them).
	fi, err := os.Lstat(sysctlDir(pins))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sysctl records: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !fi.IsDir() || fi.Mode().Perm()&0o022 != 0 || (ok && st.Uid != 0 && int(st.Uid) != os.Geteuid()) {
		return nil, fmt.Errorf("sysctl records %s: group or others may write them (mode %s): not trusted; check them, restore the sysctls by hand and remove the directory", sysctlDir(pins), fi.Mode())
	}
	des, err := os.ReadDir(sysctlDir(pins))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", sysctlDir(pins), err)
	}
	var out []sysctlSaved
	for _, d := range des {
		i := strings.LastIndexByte(d.Name(), '=')
		if i < 0 {
			continue // not tandem's: down reports it as left in place
		}
		v, err := url.QueryUnescape(d.Name()[i+1:])
		if err != nil {
			continue
		}
		path, err := url.PathUnescape(strings.ReplaceAll(d.Name()[:i], ":", "/"))
		if err != nil || !filepath.IsLocal(path) || filepath.Clean(path) != path {
			continue // not tandem's (nor under /proc/sys): down reports it as left in place
		}
		out = append(out, sysctlSaved{entry: d.Name(), path: path, value: v})
	}
	return out, nil
}

func sysctlRecord(pins maps.Pins, path string) (string, bool, error) {
	recs, err := sysctlRecords(pins)
	for _, r := range recs {
		if r.path == path {
			return r.value, true, err
		}
	}
	return "", false, err
}

// restoreSysctls writes back every recorded original and drops its
// record. A sysctl that is gone (its interface was deleted) has nothing
// to restore. It returns the sysctls restored, as path=value.
func restoreSysctls(pins maps.Pins) ([]string, error) {
	recs, err := sysctlRecords(pins)
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for _, r := range recs {
		err := os.WriteFile(filepath.Join(procSys, r.path), []byte(r.value), 0o644)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			// The record stays, so the next down tries again.
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w (set it by hand, then run down again)", r.path, r.value, err))
			continue
		default:
			done = append(done, r.path+"="+r.value)
		}
		if err := os.Remove(filepath.Join(sysctlDir(pins), r.entry)); err != nil {
			errs = append(errs, fmt.Errorf("drop sysctl record: %w", err))
		}
	}
	return done, errors.Join(errs...)
}

// renameSysctlRecords moves the records of an interface's sysctls to its
// new name (it was renamed): the sysctl went with the interface, and its
// original is still the one recorded.
func renameSysctlRecords(pins maps.Pins, from, to string) error {
	recs, err := sysctlRecords(pins)
	if err != nil {
		return err
	}
	for _, r := range recs {
		parts := strings.Split(r.path, "/")
		if len(parts) != 5 || parts[0] != "net" || parts[2] != "conf" || parts[3] != from {
			continue
		}
		parts[3] = to
		_, value, _ := strings.Cut(r.entry[strings.LastIndexByte(r.entry, '='):], "=")
		name := sysctlRecordName(strings.Join(parts, "/")) + "=" + value
		if err := os.Rename(filepath.Join(sysctlDir(pins), r.entry), filepath.Join(sysctlDir(pins), name)); err != nil {
			return fmt.Errorf("sysctl record of %s, now %s: %w", from, to, err)
		}
	}
	return nil
}
