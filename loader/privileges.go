package loader

import (
	"bufio"
	"errors"
	"os"
	"strconv"
	"strings"
)

// Capability bits (linux/capability.h).
const (
	capNetAdmin = 12
	capSysAdmin = 21
	capBPF      = 39
)

// ErrPrivileges says tandem was started without the rights it needs.
var ErrPrivileges = errors.New("tandem needs root (CAP_BPF or CAP_SYS_ADMIN, and CAP_NET_ADMIN): run it with sudo")

// RequirePrivileges checks the effective capabilities before anything is
// touched, so a user without them gets one clear line, not an EPERM from
// the middle of an attach.
func RequirePrivileges() error {
	eff, err := effectiveCaps()
	if err != nil {
		return nil // cannot tell; let the kernel decide
	}
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	if !has(capNetAdmin) || !(has(capBPF) || has(capSysAdmin)) {
		return ErrPrivileges
	}
	return nil
}

func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}
