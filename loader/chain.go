package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
)

// upChain makes the interface's XDP chain run p.stages. When the running
// chain has the same stages and the same ABI, each stage's program is
// swapped in its slot (one atomic map update each; the entry and the link
// stay). Otherwise a new chain is built beside the old one (new maps, the
// stages in their slots, a new entry) and the entry is swapped in through
// the pinned XDP link in one step; the old chain goes when its last packet
// has left it.
func upChain(o *Options, p *ifacePlan, loaded map[*Feature]*loadedFeature) (*Attachment, error) {
	a, err := upChainOn(o, p, loaded, stageBits(p.stages))
	if a != nil && p.renamed != "" {
		a.Note = strings.TrimSuffix("adopted from "+p.renamed+" (the interface was renamed); "+a.Note, "; ")
	}
	return a, err
}

// adoptRenamed finds tandem's links on iface pinned under another name,
// one no interface has any more (iface was renamed since an earlier up),
// and moves every pin of that name (links, filters' programs, the clsact
// marker, the chain's maps, the sysctl records) to iface's name, so up
// replaces in place what runs there instead of failing on "another XDP
// program" or running a feature's TC program twice. It returns the old
// name, or "".
func adoptRenamed(pins maps.Pins, iface *net.Interface) (string, error) {
	entries, err := listAttach(pins)
	if err != nil {
		return "", err
	}
	old := ""
	for _, e := range entries {
		kind, name, _ := maps.SplitAttachName(e)
		if !isLinkKind(kind) || name == iface.Name {
			continue
		}
		if _, err := net.InterfaceByName(name); err == nil {
			continue // that interface is there: the link is its own
		}
		l, err := link.LoadPinnedLink(pins.Attach(e), nil)
		if err != nil {
			continue
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			continue
		}
		idx := 0
		switch {
		case info.XDP() != nil:
			idx = int(info.XDP().Ifindex)
		case info.TCX() != nil:
			idx = int(info.TCX().Ifindex)
		}
		if idx == iface.Index {
			old = name
			break
		}
	}
	if old == "" {
		return "", nil
	}
	for _, e := range entries {
		kind, name, _ := maps.SplitAttachName(e)
		if name != old {
			continue
		}
		to := pins.Attach(maps.AttachName(kind, iface.Name))
		if _, err := os.Lstat(to); err == nil {
			continue // the new name has its own already
		}
		if err := os.Rename(pins.Attach(e), to); err != nil {
			return "", fmt.Errorf("adopt %s of %s, now %s: %w", e, old, iface.Name, err)
		}
	}
	if err := chain.Rename(pins, old, iface.Name); err != nil {
		return "", err
	}
	return old, renameSysctlRecords(pins, old, iface.Name)
}

// upChainOn is upChain once the pins carry the interface's name.
func upChainOn(o *Options, p *ifacePlan, loaded map[*Feature]*loadedFeature, want uint32) (*Attachment, error) {
	old, err := chain.Open(o.Pins, p.name)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	defer func() { old.Close() }() // the old maps may be handed to swapBack
	if old != nil && xdpLinkReusable(o.Pins, p.iface, o.XDPMode) && linkRunsChain(o.Pins, p.name, old) {
		if info, err := old.ReadInfo(); err == nil && info.ABI == chain.ABI && info.Stages == want {
			for _, f := range p.stages {
				prog, err := chain.LoadStage(loaded[f].spec, f.XDP, old, o.Pins.MapsDir())
				if err != nil {
					return nil, loadError(err, o.Pins)
				}
				err = old.Set(f.Slot, prog)
				prog.Close()
				if err != nil {
					return nil, fmt.Errorf("chain of %s: %w", p.name, err)
				}
			}
			cur, _ := xdpAttachedMode(p.iface.Index)
			return &Attachment{Pin: maps.AttachName(KindXDP, p.name), Iface: p.name, Ifindex: p.iface.Index,
				Hook: "xdp", Via: xdpVia(cur), Note: "stages replaced in their slots"}, nil
		}
	}

	// The entry the link runs now, to swap back if this up fails later
	// (Up's rollback) with the old chain's maps: held open, because the
	// kernel empties a program array when its last descriptor or pin
	// goes, and the old entry would then reach no stage.
	prev := linkProgram(o.Pins, p.name)
	defer func() {
		if prev != nil {
			prev.Close()
		}
	}()
	cm, err := chain.NewMaps(old)
	if err != nil {
		return nil, err
	}
	defer cm.Close()
	for _, f := range p.stages {
		prog, err := chain.LoadStage(loaded[f].spec, f.XDP, cm, o.Pins.MapsDir())
		if err != nil {
			return nil, loadError(err, o.Pins)
		}
		err = cm.Set(f.Slot, prog)
		prog.Close()
		if err != nil {
			return nil, fmt.Errorf("chain of %s: %w", p.name, err)
		}
	}
	entry, err := chain.LoadEntry(cm, want)
	if err != nil {
		return nil, loadError(err, o.Pins)
	}
	defer entry.Close()
	a, err := attachXDP(o.Pins, p.iface, entry, o.XDPMode)
	if err != nil {
		return nil, err
	}
	if err := cm.Pin(o.Pins, p.name); err != nil {
		return a, err
	}
	if !a.created && prev != nil {
		a.undo, a.release = swapBack(o.Pins, p.name, prev, old)
		prev, old = nil, nil // theirs now
	}
	if a.Note == "replaced in place" {
		a.Note = "new chain swapped in through the link"
	}
	return a, nil
}

// linkProgram is the program the interface's pinned XDP link runs; nil
// when there is no link.
func linkProgram(pins maps.Pins, ifname string) *ebpf.Program {
	l, err := link.LoadPinnedLink(pins.Attach(maps.AttachName(KindXDP, ifname)), nil)
	if err != nil {
		return nil
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return nil
	}
	p, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil
	}
	return p
}

// swapBack returns what puts back the chain an interface ran before a
// root swap (its entry prev, its maps old; nil maps: none were pinned),
// and what lets go of them once the swap stays.
func swapBack(pins maps.Pins, ifname string, prev *ebpf.Program, old *chain.Maps) (undo func() error, release func()) {
	release = func() {
		prev.Close()
		old.Close()
	}
	undo = func() error {
		l, err := link.LoadPinnedLink(pins.Attach(maps.AttachName(KindXDP, ifname)), nil)
		if err != nil {
			return fmt.Errorf("swap back the chain of %s: %w", ifname, err)
		}
		err = l.Update(prev)
		l.Close()
		if err != nil {
			return fmt.Errorf("swap back the chain of %s: %w", ifname, err)
		}
		if old == nil {
			_, err = chain.Unpin(pins, ifname)
			return err
		}
		return old.Pin(pins, ifname)
	}
	return undo, release
}

// xdpLinkReusable: the interface's pinned XDP link is healthy and in the
// mode asked for, so its program can stay.
func xdpLinkReusable(pins maps.Pins, iface *net.Interface, mode string) bool {
	l, err := link.LoadPinnedLink(pins.Attach(maps.AttachName(KindXDP, iface.Name)), nil)
	if err != nil {
		return false
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil || info.XDP() == nil || int(info.XDP().Ifindex) != iface.Index {
		return false
	}
	cur, _ := xdpAttachedMode(iface.Index)
	return mode == XDPAuto || (mode == XDPNative && cur == xdpAttachedDrv) || (mode == XDPGeneric && cur == xdpAttachedSkb)
}

// linkRunsChain: the interface's pinned XDP link runs the entry of the
// chain cm, so filling cm's slots changes what packets meet. An earlier
// build's up may have swapped its own program into the link (a downgrade,
// then this upgrade), leaving this build's chain pins behind unused.
func linkRunsChain(pins maps.Pins, ifname string, cm *chain.Maps) bool {
	l, err := link.LoadPinnedLink(pins.Attach(maps.AttachName(KindXDP, ifname)), nil)
	if err != nil {
		return false
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return false
	}
	ok, err := cm.RunBy(info.Program)
	return err == nil && ok
}

// progLabel names a program for a message: "program 12 (xdp_chain)".
func progLabel(id ebpf.ProgramID) string {
	if name := progName(id); name != "" {
		return fmt.Sprintf("program %d (%s)", id, name)
	}
	return fmt.Sprintf("program %d", id)
}

// entryOf is a program found to be the entry of the chain whose program
// array has id progs.
type entryOf struct {
	prog  ebpf.ProgramID
	progs ebpf.MapID
}

var runningEntries sync.Map // entryOf -> true

// ChainStage is one stage of an interface's chain, for status.
type ChainStage struct {
	Slot    uint32         `json:"slot"`
	Feature string         `json:"feature"`
	ProgID  ebpf.ProgramID `json:"prog_id"`
	Prog    string         `json:"prog"`
	Claimed uint64         `json:"claimed"`
	Missed  uint64         `json:"missed"`
}

// readChain lists an interface's chain: every configured slot (filled or
// not: an empty configured slot is a fault, its missed tail calls say how
// many packets it cost) and, last, the packets no stage claimed.
func readChain(pins maps.Pins, ifname string) ([]ChainStage, error) {
	cm, err := chain.Open(pins, ifname)
	if err != nil {
		return nil, err
	}
	defer cm.Close()
	info, err := cm.ReadInfo()
	if err != nil {
		return nil, err
	}
	ids, err := cm.ProgIDs()
	if err != nil {
		return nil, err
	}
	stats, err := cm.ReadStats()
	if err != nil {
		return nil, err
	}
	var out []ChainStage
	for slot := uint32(0); slot < chain.Slots; slot++ {
		if info.Stages&(1<<slot) == 0 && ids[slot] == 0 {
			continue
		}
		s := ChainStage{Slot: slot, ProgID: ids[slot], Claimed: stats[slot].Claimed, Missed: stats[slot].Missed}
		for _, f := range registry {
			if f.XDP != "" && f.Slot == slot {
				s.Feature = f.Name
			}
		}
		if s.ProgID != 0 {
			s.Prog = progName(s.ProgID)
		}
		out = append(out, s)
	}
	out = append(out, ChainStage{Slot: chain.Slots, Feature: "(stack)", Claimed: stats[chain.Slots].Claimed})
	return out, nil
}

// chainProblem says what is wrong with an interface's chain: the XDP
// link (running program prog) does not run the chain pinned for the
// interface (an earlier build's program swapped into the link, or a chain
// pin removed), or a slot the entry runs holds no program (its packets
// pass to the stack unserved). stages, when read already, saves reading
// the slots again.
func chainProblem(pins maps.Pins, ifname string, prog ebpf.ProgramID, stages []ChainStage, full bool) string {
	open := chain.OpenSlots // the daemon's periodic check: the slots only
	if full {
		open = chain.Open // status: every pin of the chain
	}
	cm, err := open(pins, ifname)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Sprintf("the XDP link runs %s, but the chain pins of %s are missing: run tandem up again", progLabel(prog), ifname)
	}
	if err != nil {
		return err.Error()
	}
	defer cm.Close()
	// Whether the link's program is the pinned chain's entry takes reading
	// the program's map ids; the daemon checks every few seconds, so a
	// pair found to match is remembered (ids are not reused while the
	// system runs).
	key := entryOf{prog: prog}
	if mi, err := cm.Progs.Info(); err == nil {
		key.progs, _ = mi.ID()
	}
	if _, seen := runningEntries.Load(key); !seen || key.progs == 0 {
		if ok, err := cm.RunBy(prog); err != nil {
			return err.Error()
		} else if !ok {
			return fmt.Sprintf("the XDP link runs %s, not the entry of the chain pinned for %s: run tandem up again", progLabel(prog), ifname)
		}
		runningEntries.Store(key, true)
	}
	if stages == nil {
		info, err := cm.ReadInfo()
		if err != nil {
			return err.Error()
		}
		for slot := uint32(0); slot < chain.Slots; slot++ {
			if info.Stages&(1<<slot) == 0 {
				continue
			}
			var id uint32
			if err := cm.Progs.Lookup(slot, &id); err != nil {
				stages = append(stages, ChainStage{Slot: slot})
			}
		}
	}
	for _, s := range stages {
		if s.Slot < chain.Slots && s.ProgID == 0 {
			return fmt.Sprintf("chain slot %d (%s) is empty: its packets pass unserved; run tandem up again", s.Slot, s.Feature)
		}
	}
	return ""
}
