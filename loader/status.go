package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
)

// ProgStatus is one pinned program.
type ProgStatus struct {
	Name string         `json:"name"`
	ID   ebpf.ProgramID `json:"id"`
	Tag  string         `json:"tag"`
}

// MapStatus is one pinned map and how full it is.
type MapStatus struct {
	Name       string     `json:"name"`
	ID         ebpf.MapID `json:"id"`
	Type       string     `json:"type"`
	Entries    int        `json:"entries"`
	MaxEntries uint32     `json:"max_entries"`
}

// VIPStatus is one VIP with its counters.
type VIPStatus struct {
	Addr     netip.Addr       `json:"addr"`
	Owned    bool             `json:"owned"`
	Counters maps.VIPCounters `json:"counters"`
}

// Status is what `tandem status` shows.
type Status struct {
	Root        string            `json:"root"`
	Up          bool              `json:"up"`
	Attachments []*Attachment     `json:"attachments"`
	Programs    []ProgStatus      `json:"programs"`
	Maps        []MapStatus       `json:"maps"`
	VIPs        []VIPStatus       `json:"vips"`
	Stats       map[string]uint64 `json:"stats"`
	// Features are the counters of each loaded feature that has some
	// (Feature.Counters), by feature name.
	Features map[string]map[string]uint64 `json:"features,omitempty"`
}

// Healthy reports whether every attachment works.
func (s *Status) Healthy() bool {
	for _, a := range s.Attachments {
		if a.Problem != "" {
			return false
		}
	}
	return s.Up
}

// ReadStatus inspects what is pinned under the root and checks that every
// attachment is still in place.
func ReadStatus(pins maps.Pins) (*Status, error) {
	st := &Status{Root: pins.Root, Stats: map[string]uint64{}}
	if _, err := os.Stat(pins.Root); errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	var err error
	if st.Attachments, err = readAttachments(pins, true); err != nil {
		return nil, err
	}
	progNames, mapNames, err := embeddedNames()
	if err != nil {
		return nil, err
	}
	for _, name := range progNames {
		p, err := ebpf.LoadPinnedProgram(pins.Prog(name), nil)
		if err != nil {
			continue
		}
		ps := ProgStatus{Name: name}
		if info, err := p.Info(); err == nil {
			ps.ID, _ = info.ID()
			ps.Tag = info.Tag
		}
		p.Close()
		st.Programs = append(st.Programs, ps)
	}
	sortBy(st.Programs, func(p ProgStatus) string { return p.Name })
	for _, name := range mapNames {
		m, err := ebpf.LoadPinnedMap(pins.Map(name), nil)
		if err != nil {
			continue
		}
		ms := MapStatus{Name: name, Type: m.Type().String(), MaxEntries: m.MaxEntries()}
		if info, err := m.Info(); err == nil {
			ms.ID, _ = info.ID()
		}
		ms.Entries, _ = maps.Fill(m)
		m.Close()
		st.Maps = append(st.Maps, ms)
	}
	sortBy(st.Maps, func(m MapStatus) string { return m.Name })
	for _, f := range registry {
		if f.Counters == nil {
			continue
		}
		if c, err := f.Counters(pins); err == nil {
			if st.Features == nil {
				st.Features = map[string]map[string]uint64{}
			}
			st.Features[f.Name] = c
		}
	}

	vm, err := maps.OpenVIPMaps(pins)
	if err != nil {
		return st, nil // nothing loaded yet
	}
	defer vm.Close()
	st.Up = len(st.Attachments) > 0
	vips, err := vm.VIPs()
	if err != nil {
		return nil, err
	}
	counters, err := vm.VIPCounters()
	if err != nil {
		return nil, err
	}
	for _, v := range vips {
		st.VIPs = append(st.VIPs, VIPStatus{Addr: v.Addr, Owned: v.Owned, Counters: counters[v.Addr]})
	}
	stats, err := vm.GlobalStats()
	if err != nil {
		return nil, err
	}
	for r, n := range stats {
		st.Stats[maps.StatNames[r]] = n
	}
	return st, nil
}

// inspect checks one attachment entry against the kernel.
// full: also read the XDP chain's stages and counters (status); without
// it only the chain's configured slots are checked (the daemon's periodic
// check, which must stay cheap at rest).
func inspect(pins maps.Pins, entry, kind, ifname string, full bool) *Attachment {
	a := &Attachment{Pin: entry, Iface: ifname}
	// The index by one ioctl: net.InterfaceByName dumps every link over
	// netlink, once per attachment in the daemon's check every second.
	index, ierr := ifindexByName(ifname)
	if ierr == nil {
		a.Ifindex = index
	}
	path := pins.Attach(entry)
	kind, a.Feature = splitKind(kind)
	if isLinkKind(kind) {
		a.Hook = "xdp"
		if kind != KindXDP {
			a.Hook = "tc-" + kind[len("tcx-"):]
			a.Via = "tcx"
		} else if full {
			if ch, err := readChain(pins, ifname); err == nil {
				a.Chain = ch
			} else if !errors.Is(err, os.ErrNotExist) {
				a.Problem = fmt.Sprintf("chain unreadable: %v", err)
			}
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			a.Problem = fmt.Sprintf("pinned link unreadable: %v", err)
			return a
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			a.Problem = fmt.Sprintf("link info: %v", err)
			return a
		}
		a.LinkID = info.ID
		a.ProgID = info.Program
		linkIfindex := 0
		switch {
		case info.XDP() != nil:
			linkIfindex = int(info.XDP().Ifindex)
		case info.TCX() != nil:
			linkIfindex = int(info.TCX().Ifindex)
		}
		if kind == KindXDP && ierr == nil && full {
			// How it is attached is for the status only: the check
			// looks for problems.
			m, _ := xdpAttachedMode(index)
			a.Via = xdpVia(m)
		}
		switch {
		case linkIfindex == 0:
			a.Problem = "defunct: the interface went away; run tandem up again"
		case ierr != nil:
			a.Problem = "interface " + ifname + " not found in this network namespace"
		case linkIfindex != index:
			a.Problem = fmt.Sprintf("attached to ifindex %d, but %s is now ifindex %d; run tandem up again", linkIfindex, ifname, index)
		}
		if a.Problem == "" && kind == KindXDP {
			a.Problem = chainProblem(pins, ifname, a.ProgID, a.Chain, full)
		}
		if full {
			a.Prog = progName(a.ProgID)
		}
		return a
	}
	// cls_bpf: the pin is the program; the filter must still carry it.
	dir := Ingress
	if kind == KindClsEgress {
		dir = Egress
	}
	a.Hook, a.Via = "tc-"+string(dir), "clsact"
	p, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		a.Problem = fmt.Sprintf("pinned program unreadable: %v", err)
		return a
	}
	if info, err := p.Info(); err == nil {
		a.ProgID, _ = info.ID()
		a.Prog = info.Name
	}
	p.Close()
	if ierr != nil {
		a.Problem = "interface " + ifname + " not found in this network namespace"
		return a
	}
	t, err := openTC()
	if err != nil {
		a.Problem = err.Error()
		return a
	}
	defer t.Close()
	id, err := findClsFilter(t, index, dir, clsPrioOf(a.Feature))
	switch {
	case err != nil:
		a.Problem = err.Error()
	case id == 0:
		a.Problem = "tandem's cls_bpf filter is gone; run tandem up again"
	case ebpf.ProgramID(id) != a.ProgID:
		a.Problem = fmt.Sprintf("the filter runs program %d, not the pinned %d; run tandem up again", id, a.ProgID)
	}
	return a
}

func progName(id ebpf.ProgramID) string {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return ""
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return ""
	}
	return info.Name
}

// readAttachments inspects every attachment pinned under the root; not
// full, it is the part of the status the daemon's periodic check needs,
// and cheap.
func readAttachments(pins maps.Pins, full bool) ([]*Attachment, error) {
	entries, err := listAttach(pins)
	if err != nil {
		return nil, err
	}
	var out []*Attachment
	have := map[string]bool{}
	for _, e := range entries {
		have[e] = true
		kind, ifname, _ := maps.SplitAttachName(e)
		if kind == KindClsactMarker {
			continue
		}
		out = append(out, inspect(pins, e, kind, ifname, full))
	}
	// A chain pinned with no XDP link: the link's pin was removed, and
	// the link (the gate, every feature's XDP stage) with it.
	chains, err := chainIfaces(pins)
	if err != nil {
		return nil, err
	}
	for _, ifname := range chains {
		if pin := maps.AttachName(KindXDP, ifname); !have[pin] {
			out = append(out, &Attachment{Pin: pin, Iface: ifname, Hook: "xdp",
				Problem: "the XDP link is gone (its pin was removed): no chain runs on " + ifname + "; run tandem up again"})
		}
	}
	return out, nil
}

func sortBy[T any](s []T, key func(T) string) {
	slices.SortFunc(s, func(a, b T) int { return strings.Compare(key(a), key(b)) })
}

// embeddedNames lists the programs and the pinned maps of every embedded
// object, each name once. Parsing the objects costs milliseconds, so it is
// done once per process, not on every status read or daemon check.
func embeddedNames() (progs, pinned []string, err error) {
	embedded.once.Do(func() { embedded.progs, embedded.pinned, embedded.err = readEmbeddedNames() })
	return embedded.progs, embedded.pinned, embedded.err
}

var embedded struct {
	once          sync.Once
	progs, pinned []string
	err           error
}

func readEmbeddedNames() (progs, pinned []string, err error) {
	loads := []func() (*ebpf.CollectionSpec, error){bpf.LoadChain}
	for _, f := range registry {
		loads = append(loads, f.Spec)
	}
	for _, load := range loads {
		spec, err := load()
		if err != nil {
			return nil, nil, fmt.Errorf("read embedded programs: %w", err)
		}
		for name := range spec.Programs {
			progs = append(progs, name)
		}
		for name, m := range spec.Maps {
			if m.Pinning == ebpf.PinByName && !slices.Contains(pinned, name) {
				pinned = append(pinned, name)
			}
		}
	}
	return progs, pinned, nil
}

// ifindexByName is the index of the interface named name in this network
// namespace (SIOCGIFINDEX).
func ifindexByName(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}
