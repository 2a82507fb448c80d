package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	tc "github.com/florianl/go-tc"
	"github.com/florianl/go-tc/core"
	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/maps"
)

// Attachment kinds, as they appear in pin names under attach/.
const (
	KindXDP          = "xdp"         // pinned XDP link
	KindTCXIngress   = "tcx-ingress" // pinned TCX link
	KindTCXEgress    = "tcx-egress"
	KindClsIngress   = "cls-ingress" // pinned program of a cls_bpf filter
	KindClsEgress    = "cls-egress"
	KindClsactMarker = "clsact" // directory: tandem created the clsact qdisc
)

// tandem's cls_bpf filters are known by their handle and priorities, so
// `down` removes its own filters and never another tool's. Each feature
// has its own priority, clsPrioBase plus its chain slot: on one hook the
// features run in chain order (a lower priority runs first), as in XDP.
// clsPrio is the one priority of builds before the chain; their filters
// are found and replaced by it.
const (
	clsPrio     = 0x7a6d
	clsPrioBase = 0x7a60
	clsHandle   = 0x7a6d
)

// tcKind is the attachment kind of a feature's TC program:
// "tcx-ingress:synproxy", "cls-egress:gate" (bpffs refuses dots in names).
func tcKind(tcx bool, dir Direction, feature string) string {
	k := clsKind(dir)
	if tcx {
		k = KindTCXIngress
		if dir == Egress {
			k = KindTCXEgress
		}
	}
	return k + ":" + feature
}

// splitKind splits an attachment kind into the hook kind and the feature
// ("" for the XDP chain and for entries of builds before the chain).
func splitKind(kind string) (hook, feature string) {
	hook, feature, _ = strings.Cut(kind, ":")
	return hook, feature
}

// clsPrioOf is the priority of a feature's cls_bpf filters.
func clsPrioOf(feature string) uint32 {
	if f := FeatureByName(feature); f != nil {
		return clsPrioBase + f.Slot
	}
	return clsPrio
}

// Direction of a TC hook.
type Direction string

const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Attachment describes one program attached to one hook of one interface.
type Attachment struct {
	Pin     string         `json:"pin"`
	Feature string         `json:"feature,omitempty"` // a TC program's feature; "" for the XDP chain
	Iface   string         `json:"iface"`
	Ifindex int            `json:"ifindex"`
	Hook    string         `json:"hook"` // xdp, tc-ingress, tc-egress
	Via     string         `json:"via"`  // xdp-native, xdp-generic, tcx, clsact
	ProgID  ebpf.ProgramID `json:"prog_id"`
	Prog    string         `json:"prog"`
	LinkID  link.ID        `json:"link_id,omitempty"`
	Problem string         `json:"problem,omitempty"` // why it is not working, if it is not
	Note    string         `json:"note,omitempty"`    // how it was made, e.g. a fallback
	Chain   []ChainStage   `json:"chain,omitempty"`   // the XDP chain's stages, then the packets none claimed
	created bool           // made by this run (rolled back on failure)
	// undo puts back what the attachment ran before this run (a chain
	// swapped through its link) when the run fails; release lets go of
	// what undo holds. nil: nothing to put back.
	undo    func() error
	release func()
}

// XDP modes accepted by --xdp-mode.
const (
	XDPAuto    = "auto"
	XDPNative  = "native"
	XDPGeneric = "generic"
)

// attachXDP attaches prog to iface, or atomically swaps the program of the
// pinned link that is already there.
func attachXDP(pins maps.Pins, iface *net.Interface, prog *ebpf.Program, mode string) (*Attachment, error) {
	a := &Attachment{Pin: maps.AttachName(KindXDP, iface.Name), Iface: iface.Name, Ifindex: iface.Index, Hook: "xdp"}
	path := pins.Attach(a.Pin)
	cur, _ := xdpAttachedMode(iface.Index)

	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		info, ierr := l.Info()
		healthy := ierr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == iface.Index
		wantOK := mode == XDPAuto || (mode == XDPNative && cur == xdpAttachedDrv) || (mode == XDPGeneric && cur == xdpAttachedSkb)
		if healthy && wantOK {
			err := l.Update(prog)
			l.Close()
			if err != nil {
				return nil, fmt.Errorf("replace xdp program on %s: %w", iface.Name, err)
			}
			a.Via = xdpVia(cur)
			a.Note = "replaced in place"
			return a, nil
		}
		// Defunct (interface gone and back) or in the wrong mode: the old
		// link must go before a new one can attach. This is the one case
		// with a gap, and it is said.
		if healthy {
			a.Note = fmt.Sprintf("re-attached to change mode from %s to %s", xdpVia(cur), mode)
		} else {
			a.Note = "re-attached: the pinned link was defunct"
		}
		l.Unpin()
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open pinned link %s: %w", path, err)
	}

	var (
		l   link.Link
		err error
	)
	switch mode {
	case XDPNative:
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPDriverMode})
	case XDPGeneric:
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPGenericMode})
	default:
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPDriverMode})
		if err != nil && errors.Is(err, unix.EOPNOTSUPP) {
			a.Note = "native XDP unsupported by the driver; using generic"
			l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPGenericMode})
		}
	}
	if err != nil {
		return nil, xdpAttachError(iface, mode, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin xdp link %s: %w", path, err)
	}
	l.Close()
	a.created = true
	cur, _ = xdpAttachedMode(iface.Index)
	a.Via = xdpVia(cur)
	return a, nil
}

func xdpAttachError(iface *net.Interface, mode string, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EEXIST):
		return fmt.Errorf("attach xdp %s: %w (another XDP program that tandem did not attach is there; remove it with `ip link set dev %s xdp off`, or choose another interface)", iface.Name, err, iface.Name)
	case errors.Is(err, unix.EOPNOTSUPP) && mode == XDPNative:
		return fmt.Errorf("attach xdp %s: %w (the driver has no native XDP; use --xdp-mode auto or generic)", iface.Name, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("attach xdp %s: %w (run tandem as root)", iface.Name, err)
	}
	return fmt.Errorf("attach xdp %s: %w", iface.Name, err)
}

// Values of IFLA_XDP_ATTACHED.
const (
	xdpAttachedNone = 0
	xdpAttachedDrv  = 1
	xdpAttachedSkb  = 2
	xdpAttachedHw   = 3
)

func xdpVia(attached uint8) string {
	switch attached {
	case xdpAttachedDrv:
		return "xdp-native"
	case xdpAttachedSkb:
		return "xdp-generic"
	case xdpAttachedHw:
		return "xdp-offload"
	}
	return "xdp-none"
}

// xdpAttachedMode asks rtnetlink how XDP is attached to ifindex.
func xdpAttachedMode(ifindex int) (uint8, error) {
	c, err := rtnetlink.Dial(nil)
	if err != nil {
		return 0, fmt.Errorf("rtnetlink: %w", err)
	}
	defer c.Close()
	msg, err := c.Link.Get(uint32(ifindex))
	if err != nil {
		return 0, fmt.Errorf("get link %d: %w", ifindex, err)
	}
	if msg.Attributes == nil || msg.Attributes.XDP == nil {
		return xdpAttachedNone, nil
	}
	return msg.Attributes.XDP.Attached, nil
}

// attachTCX attaches prog to a TCX hook, or swaps the program of the
// pinned link already there.
//
// A new link goes before the link of the next feature in chain order
// already on the hook, else at the tail, so features run in chain order.
func attachTCX(pins maps.Pins, iface *net.Interface, prog *ebpf.Program, dir Direction, f *Feature) (*Attachment, error) {
	at := ebpf.AttachTCXIngress
	if dir == Egress {
		at = ebpf.AttachTCXEgress
	}
	a := &Attachment{Pin: maps.AttachName(tcKind(true, dir, f.Name), iface.Name), Feature: f.Name, Iface: iface.Name, Ifindex: iface.Index, Hook: "tc-" + string(dir), Via: "tcx"}
	path := pins.Attach(a.Pin)
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		info, ierr := l.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == iface.Index {
			err := l.Update(prog)
			l.Close()
			if err != nil {
				return nil, fmt.Errorf("replace tcx %s program on %s: %w", dir, iface.Name, err)
			}
			a.Note = "replaced in place"
			return a, nil
		}
		a.Note = "re-attached: the pinned link was defunct"
		l.Unpin()
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open pinned link %s: %w", path, err)
	}
	opts := link.TCXOptions{Interface: iface.Index, Program: prog, Attach: at, Anchor: link.Tail()}
	for _, g := range registry {
		if g.Slot <= f.Slot {
			continue
		}
		next, err := link.LoadPinnedLink(pins.Attach(maps.AttachName(tcKind(true, dir, g.Name), iface.Name)), nil)
		if err != nil {
			continue
		}
		if info, err := next.Info(); err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == iface.Index {
			opts.Anchor = link.BeforeLinkByID(info.ID)
		}
		next.Close()
		if opts.Anchor != nil {
			break
		}
	}
	l, err := link.AttachTCX(opts)
	if err != nil {
		return nil, fmt.Errorf("attach tcx %s %s: %w", dir, iface.Name, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin tcx link %s: %w", path, err)
	}
	l.Close()
	a.created = true
	return a, nil
}

func clsParent(dir Direction) uint32 {
	if dir == Egress {
		return core.BuildHandle(tc.HandleRoot, tc.HandleMinEgress)
	}
	return core.BuildHandle(tc.HandleRoot, tc.HandleMinIngress)
}

func clsKind(dir Direction) string {
	if dir == Egress {
		return KindClsEgress
	}
	return KindClsIngress
}

func openTC() (*tc.Tc, error) {
	t, err := tc.Open(&tc.Config{})
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink for tc: %w", err)
	}
	// Extended acks carry the kernel's reason for a refusal.
	_ = t.SetOption(netlink.ExtendedAcknowledge, true)
	return t, nil
}

// hasClsact reports whether iface has a clsact qdisc.
func hasClsact(t *tc.Tc, ifindex int) (bool, error) {
	qs, err := t.Qdisc().Get()
	if err != nil {
		return false, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if int(q.Ifindex) == ifindex && q.Kind == "clsact" {
			return true, nil
		}
	}
	return false, nil
}

func clsactObject(ifindex int) *tc.Object {
	return &tc.Object{
		Msg:       tc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(ifindex), Handle: core.BuildHandle(tc.HandleRoot, 0), Parent: tc.HandleIngress},
		Attribute: tc.Attribute{Kind: "clsact"},
	}
}

// clsFilterMsg addresses one of tandem's filters on one hook.
func clsFilterMsg(ifindex int, dir Direction, prio uint32) tc.Msg {
	return tc.Msg{
		Family:  unix.AF_UNSPEC,
		Ifindex: uint32(ifindex),
		Handle:  clsHandle,
		Parent:  clsParent(dir),
		Info:    prio<<16 | uint32(htons(unix.ETH_P_ALL)),
	}
}

func clsFilter(ifindex int, dir Direction, prio uint32, prog *ebpf.Program, name string) *tc.Object {
	fd := uint32(prog.FD())
	flags := uint32(1) // TCA_BPF_FLAG_ACT_DIRECT: the program's return is the verdict
	return &tc.Object{
		Msg:       clsFilterMsg(ifindex, dir, prio),
		Attribute: tc.Attribute{Kind: "bpf", BPF: &tc.Bpf{FD: &fd, Name: &name, Flags: &flags}},
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// attachCls attaches prog as a direct-action cls_bpf filter under clsact,
// creating the qdisc when the interface has none. A second run replaces the
// filter in place (NLM_F_REPLACE on the same priority and handle), which the
// kernel swaps atomically.
func attachCls(pins maps.Pins, iface *net.Interface, prog *ebpf.Program, progName string, dir Direction, f *Feature) (*Attachment, error) {
	a := &Attachment{Pin: maps.AttachName(tcKind(false, dir, f.Name), iface.Name), Feature: f.Name, Iface: iface.Name, Ifindex: iface.Index, Hook: "tc-" + string(dir), Via: "clsact"}
	prio := clsPrioOf(f.Name)
	t, err := openTC()
	if err != nil {
		return nil, err
	}
	defer t.Close()

	ok, err := hasClsact(t, iface.Index)
	if err != nil {
		return nil, err
	}
	if !ok {
		if err := t.Qdisc().Add(clsactObject(iface.Index)); err != nil {
			return nil, fmt.Errorf("add clsact qdisc to %s: %w", iface.Name, err)
		}
		marker := pins.Attach(maps.AttachName(KindClsactMarker, iface.Name))
		if err := os.Mkdir(marker, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("record clsact on %s: %w", iface.Name, err)
		}
	}
	existing, _ := findClsFilter(t, iface.Index, dir, prio)
	if err := t.Filter().Replace(clsFilter(iface.Index, dir, prio, prog, progName)); err != nil {
		return nil, fmt.Errorf("attach cls_bpf %s %s: %w", dir, iface.Name, err)
	}
	if existing != 0 {
		a.Note = "replaced in place"
	} else {
		a.created = true
	}
	if err := pinReplace(prog, pins.Attach(a.Pin)); err != nil {
		return nil, err
	}
	return a, nil
}

// findClsFilter returns the program id of tandem's filter with priority
// prio on a hook, or 0. The dump asks the kernel for that priority only,
// so other tools' filters (which go-tc cannot always decode) never come
// back.
func findClsFilter(t *tc.Tc, ifindex int, dir Direction, prio uint32) (uint32, error) {
	fs, err := t.Filter().Get(&tc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(ifindex), Parent: clsParent(dir), Info: prio<<16 | uint32(htons(unix.ETH_P_ALL))})
	if err != nil {
		return 0, fmt.Errorf("list filters: %w", err)
	}
	for _, f := range fs {
		if f.Kind == "bpf" && f.Handle == clsHandle && f.Info>>16 == prio && f.BPF != nil && f.BPF.ID != nil {
			return *f.BPF.ID, nil
		}
	}
	return 0, nil
}

// countFilters counts all filters (anyone's) on an interface's clsact
// hooks. A dump it cannot decode holds someone else's filter: that counts.
func countFilters(t *tc.Tc, ifindex int) (int, error) {
	n := 0
	for _, dir := range []Direction{Ingress, Egress} {
		fs, err := t.Filter().Get(&tc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(ifindex), Parent: clsParent(dir)})
		if err != nil {
			n++
			continue
		}
		// A filter shows once per chain head and once per handle; count handles.
		for _, f := range fs {
			if f.Handle != 0 {
				n++
			}
		}
	}
	return n, nil
}

// detachCls removes tandem's filter with priority prio from a hook.
func detachCls(pins maps.Pins, ifname string, dir Direction, prio uint32) error {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil // the interface is gone, and its filters with it
	}
	t, err := openTC()
	if err != nil {
		return err
	}
	defer t.Close()
	id, err := findClsFilter(t, iface.Index, dir, prio)
	if err != nil {
		return err
	}
	if id != 0 {
		f := &tc.Object{Msg: clsFilterMsg(iface.Index, dir, prio), Attribute: tc.Attribute{Kind: "bpf"}}
		if err := t.Filter().Delete(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete cls_bpf filter %s %s: %w", dir, ifname, err)
		}
	}
	return nil
}

func removeClsactIfOurs(pins maps.Pins, ifname string) error {
	marker := pins.Attach(maps.AttachName(KindClsactMarker, ifname))
	if _, err := os.Stat(marker); err != nil {
		return nil
	}
	if iface, err := net.InterfaceByName(ifname); err == nil {
		t, err := openTC()
		if err != nil {
			return err
		}
		defer t.Close()
		n, err := countFilters(t, iface.Index)
		if err != nil {
			return err
		}
		if n == 0 {
			if err := t.Qdisc().Delete(clsactObject(iface.Index)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("delete clsact on %s: %w", ifname, err)
			}
		}
	}
	return os.Remove(marker)
}

// pinReplace pins prog at path, replacing whatever is pinned there in one
// rename, so the path never dangles.
func pinReplace(prog *ebpf.Program, path string) error {
	tmp := filepath.Join(filepath.Dir(path), "tmp-"+filepath.Base(path))
	os.Remove(tmp)
	c, err := prog.Clone()
	if err != nil {
		return fmt.Errorf("clone program: %w", err)
	}
	defer c.Close()
	if err := c.Pin(tmp); err != nil {
		return fmt.Errorf("pin %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pin %s: %w", path, err)
	}
	return nil
}

// isLinkKind tells pinned links from pinned programs in attach/.
func isLinkKind(kind string) bool {
	return kind == KindXDP || strings.HasPrefix(kind, "tcx-")
}
