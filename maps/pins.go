// Package maps gives typed access to tandem's pinned maps: where they are
// pinned, their key and value types (generated from BTF by bpf2go), and
// readers that turn them into rows. It holds no policy: what to write into
// a map is the loader's and the syncer's business.
package maps

import (
	"fmt"
	"path/filepath"
	"strings"
)

// DefaultRoot is where tandem pins everything unless --bpffs says otherwise.
const DefaultRoot = "/sys/fs/bpf/tandem"

// Pins names the paths under one bpffs root. Every map, program and link
// tandem makes lives below Root, so `down` knows exactly what is its own.
type Pins struct {
	Root string
}

// MapsDir holds the maps, pinned by name (LIBBPF_PIN_BY_NAME).
func (p Pins) MapsDir() string { return filepath.Join(p.Root, "maps") }

// ProgsDir holds the loaded programs, pinned by their C function name.
func (p Pins) ProgsDir() string { return filepath.Join(p.Root, "progs") }

// AttachDir holds one entry per attachment: a pinned link (XDP, TCX), or
// for cls_bpf the pinned program of the filter plus a marker directory when
// tandem created the clsact qdisc.
func (p Pins) AttachDir() string { return filepath.Join(p.Root, "attach") }

// Map is the pin path of the named map.
func (p Pins) Map(name string) string { return filepath.Join(p.MapsDir(), name) }

// Prog is the pin path of the named program.
func (p Pins) Prog(name string) string { return filepath.Join(p.ProgsDir(), name) }

// Attach is the pin path of an attachment entry, e.g. "xdp@eth0".
func (p Pins) Attach(name string) string { return filepath.Join(p.AttachDir(), name) }

// AttachName joins a hook kind and an interface name: "tcx-egress@eth0".
// bpffs refuses a '.' in any name, and VLAN interfaces have one
// ("eth0.100"): it is written as ':', which no interface name holds
// (the kernel refuses '/', ':' and spaces), so "xdp@eth0:100".
func AttachName(kind, ifname string) string {
	return kind + "@" + strings.ReplaceAll(ifname, ".", ":")
}

// SplitAttachName is the inverse of AttachName.
func SplitAttachName(name string) (kind, ifname string, err error) {
	kind, ifname, ok := strings.Cut(name, "@")
	if !ok || kind == "" || ifname == "" {
		return "", "", fmt.Errorf("attachment pin %q: want KIND@IFNAME", name)
	}
	return kind, strings.ReplaceAll(ifname, ":", "."), nil
}
