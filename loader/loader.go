// Package loader loads tandem's kernel programs, attaches them to
// interfaces (XDP; TCX where the kernel has it, else clsact + cls_bpf), pins
// everything under one bpffs root, replaces programs in place, and takes
// down exactly what it made.
package loader

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
)

// Ingress hooks accepted by --ingress.
const (
	IngressXDP = "xdp"
	IngressTC  = "tc"
)

// TC attach paths accepted by --tc.
const (
	TCAuto   = "auto"
	TCTCX    = "tcx"
	TCClsact = "clsact"
)

// Gate modes accepted by --gate.
const (
	GateEnforce = "enforce"
	GateMonitor = "monitor"
)

// Options is everything Up needs; the CLI builds it from the config file
// and flags.
type Options struct {
	Pins       maps.Pins
	Interfaces []string
	XDPMode    string // auto, native, generic
	Ingress    string // xdp, tc
	TC         string // auto, tcx, clsact
	Gate       string // enforce, monitor
	VIPs       map[netip.Addr]bool
	// SyncTestIface, when set, also loads the test-only synctest program
	// (bpf/synctest.c) on that interface's XDP hook, for labs and tests.
	SyncTestIface string
	RingBytes     uint32 // each CPU's dirty ring; 0: maps.DefaultRingBytes
	Proxy         ProxyOptions
	ESP           ESPOptions
	Migrate       MigrateOptions
	// ElectedVIPs are the addresses whose gate entries a running VIP
	// election owns (the daemon's: daemon.Config.Options sets them); Up
	// leaves those entries as they are. The election, the state sync and
	// the daemon's own options live in daemon.Config, not here.
	ElectedVIPs []netip.Addr
	// Undoable: a successful Up keeps what Undo needs to put back a chain
	// it swapped in through a running link (the earlier entry and maps,
	// held open); the caller must then call Result.Release.
	Undoable bool
	Log      *slog.Logger
}

// MaxRingBytes bounds --sync-ring-bytes, each CPU's ring: above it a
// ring pins kernel memory no pair needs.
const MaxRingBytes = 64 << 20

// Validate checks the choices, not the machine.
func (o *Options) Validate() error {
	var errs []error
	oneOf := func(flag, v string, ok ...string) {
		if !slices.Contains(ok, v) {
			errs = append(errs, fmt.Errorf("--%s %q: choose one of %v", flag, v, ok))
		}
	}
	oneOf("xdp-mode", o.XDPMode, XDPAuto, XDPNative, XDPGeneric)
	oneOf("ingress", o.Ingress, IngressXDP, IngressTC)
	oneOf("tc", o.TC, TCAuto, TCTCX, TCClsact)
	oneOf("gate", o.Gate, GateEnforce, GateMonitor)
	if len(o.plan()) == 0 {
		errs = append(errs, errors.New("no interface: name one with --iface, --proxy-iface, --esp-iface or --migrate-iface (or interfaces in the config file)"))
	}
	seen := map[string]bool{}
	for _, i := range o.Interfaces {
		if seen[i] {
			errs = append(errs, fmt.Errorf("interface %s named twice", i))
		}
		seen[i] = true
	}
	if o.SyncTestIface != "" && seen[o.SyncTestIface] {
		errs = append(errs, fmt.Errorf("--sync-test-iface %s: also a datapath interface; give the test program an interface of its own", o.SyncTestIface))
	}
	for _, f := range registry {
		if f.Validate != nil {
			errs = append(errs, f.Validate(o)...)
		}
	}
	if o.Ingress == IngressTC {
		// The gate's verdict must come before every feature's: on TC
		// ingress it would run after the XDP stages of the others.
		for _, p := range o.plan() {
			if len(p.tc[Ingress]) > 0 && len(p.stages) > 0 && p.tc[Ingress][0].Name == "gate" {
				errs = append(errs, fmt.Errorf("interface %s: --ingress tc would run the VIP gate after the XDP stages of %s; use --ingress xdp (the default) on an interface that carries other features", p.name, p.stages[0].Name))
			}
		}
	}
	vips := make([]netip.Addr, 0, len(o.VIPs))
	for a := range o.VIPs {
		vips = append(vips, a)
	}
	slices.SortFunc(vips, netip.Addr.Compare)
	for _, a := range vips {
		if err := CheckVIP(a); err != nil {
			errs = append(errs, fmt.Errorf("--vip %s: %w", a, err))
		}
	}
	if o.RingBytes > MaxRingBytes {
		errs = append(errs, fmt.Errorf("--sync-ring-bytes %d: at most %d (64 MiB) a CPU", o.RingBytes, MaxRingBytes))
	} else if o.RingBytes != 0 {
		if _, err := maps.RingSpec(o.RingBytes); err != nil {
			errs = append(errs, fmt.Errorf("--sync-ring-bytes: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Result says what Up did.
type Result struct {
	Mounted     string // bpffs mount point Up created, if any
	TCPath      string // tcx or clsact
	Attachments []*Attachment
	Removed     []string // attachments from an earlier run no longer wanted
	// Fresh: nothing was pinned under the root before this Up, so
	// undoing it means taking everything down.
	Fresh bool
	// With Options.Undoable: what puts back the chains this Up swapped
	// in through running links, and what lets go of what they hold.
	undos    []func() error
	releases []func()
	gate     gateSnapshot // the VIP gate before this Up
}

// Release lets go of what Undo would have needed (Options.Undoable).
// Safe to call twice, and on nil.
func (r *Result) Release() {
	if r == nil {
		return
	}
	for _, f := range r.releases {
		f()
	}
	r.undos, r.releases, r.gate = nil, nil, nil
}

// Undo takes back what a successful Up did, for a daemon that could not
// start: everything when the root was fresh, else the attachments this Up
// created, and (with Options.Undoable) the chains it swapped in through
// running links. A datapath that ran before it keeps running (with the
// programs this Up swapped into their slots: they serve the same config).
// It releases the result.
func Undo(o Options, res *Result) error {
	if res == nil {
		return nil
	}
	defer res.Release()
	if res.Fresh {
		_, err := Down(o.Pins, o.log())
		return err
	}
	unlock, err := lockDir(o.Pins.AttachDir(), false)
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	for _, a := range slices.Backward(res.Attachments) {
		if a.created {
			if err := detach(o.Pins, a.Pin); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, undo := range slices.Backward(res.undos) {
		errs = append(errs, undo())
	}
	if res.gate != nil {
		errs = append(errs, res.gate.restore(o.Pins))
	}
	errs = append(errs, unpinOrphanChains(o.Pins))
	return errors.Join(errs...)
}

// unpinOrphanChains drops the chain maps of interfaces that have no XDP
// link pinned any more (a rolled-back up made them).
func unpinOrphanChains(pins maps.Pins) error {
	entries, err := listAttach(pins)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, e := range entries {
		have[e] = true
	}
	return unpinStaleChains(pins, have)
}

// PinnedMapIDs maps each map pinned under the root to its id: a daemon
// compares them with the maps it holds open.
func PinnedMapIDs(pins maps.Pins) (map[string]ebpf.MapID, error) {
	des, err := os.ReadDir(pins.MapsDir())
	if errors.Is(err, os.ErrNotExist) {
		return map[string]ebpf.MapID{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", pins.MapsDir(), err)
	}
	out := make(map[string]ebpf.MapID, len(des))
	for _, d := range des {
		if id, err := pinnedMapID(pins.Map(d.Name())); err == nil {
			out[d.Name()] = id
		} // else a directory, or a pin being replaced
	}
	return out, nil
}

// pinnedMapID is the id of the map pinned at path: two bpf(2) calls.
// The daemon asks every second for every pin; ebpf.LoadPinnedMap and
// Map.Info read the map's /proc fdinfo twice on top (a tenth of an idle
// daemon's CPU time).
func pinnedMapID(path string) (ebpf.MapID, error) {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return 0, err
	}
	// union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
	var get struct {
		path      uint64
		fd, flags uint32
		pathFD    int32
		_         uint32
	}
	get.path, get.flags = uint64(uintptr(unsafe.Pointer(p))), unix.BPF_F_RDONLY
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&get)), unsafe.Sizeof(get))
	runtime.KeepAlive(p)
	if errno != 0 {
		return 0, fmt.Errorf("open pin %s: %w", path, errno)
	}
	defer unix.Close(int(fd))
	// BPF_OBJ_GET_INFO_BY_FD: struct bpf_map_info starts type, id.
	var info [2]uint32
	var req struct {
		fd, len uint32
		info    uint64
	}
	req.fd, req.len, req.info = uint32(fd), uint32(unsafe.Sizeof(info)), uint64(uintptr(unsafe.Pointer(&info)))
	if _, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&req)), unsafe.Sizeof(req)); errno != 0 {
		return 0, fmt.Errorf("info of pin %s: %w", path, errno)
	}
	runtime.KeepAlive(&info)
	return ebpf.MapID(info[1]), nil
}

func (o *Options) log() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o.Log
}

// Up loads the programs and makes the datapath match o: new attachments
// are made, existing ones get the new program atomically (no traffic gap),
// attachments no longer wanted are removed, and the VIP gate is set. On a
// failure, what this run created is undone; what an earlier run made stays.
func Up(o Options) (_ *Result, err error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := RequirePrivileges(); err != nil {
		return nil, err
	}
	log := o.log()
	plan := o.plan()
	for _, p := range plan {
		if p.iface, err = net.InterfaceByName(p.name); err != nil {
			return nil, fmt.Errorf("interface %s: not found in this network namespace (see `ip link`)", p.name)
		}
	}

	_, statErr := os.Stat(o.Pins.Root)
	fresh := errors.Is(statErr, os.ErrNotExist)
	res := &Result{Fresh: fresh}
	// Last, after any rollback: what the attachments held to undo, kept
	// for Undo when the caller asked and Up succeeded.
	defer func() {
		for _, a := range res.Attachments {
			if a.release == nil {
				continue
			}
			if err == nil && o.Undoable {
				res.undos = append(res.undos, a.undo)
				res.releases = append(res.releases, a.release)
				continue
			}
			a.release()
		}
	}()
	if res.Mounted, err = EnsureBPFFS(o.Pins.Root); err != nil {
		return nil, err
	}
	if res.Mounted != "" {
		log.Info("mounted bpffs", "event", "mount", "at", res.Mounted)
	}
	for _, d := range []string{o.Pins.MapsDir(), o.Pins.ProgsDir(), o.Pins.AttachDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	for _, d := range []string{o.Pins.Root, o.Pins.MapsDir(), o.Pins.ProgsDir(), o.Pins.AttachDir()} {
		if err := checkPrivate(d); err != nil {
			return nil, err
		}
	}
	unlock, err := lockDir(o.Pins.AttachDir(), false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The VIP gate as it is: a failed up puts it back (the gate's setup
	// runs before the features after it load, and any of them may fail).
	gate, err := snapshotGate(o.Pins)
	if err != nil {
		return nil, err
	}
	if o.Undoable {
		res.gate = gate
	}
	defer func() {
		if err == nil {
			return
		}
		if gate != nil {
			if derr := gate.restore(o.Pins); derr != nil {
				log.Warn("roll back", "gate", o.Pins.Map(maps.MapVIPGate), "err", derr)
			}
		}
		for _, a := range slices.Backward(res.Attachments) {
			switch {
			case a.created:
				if derr := detach(o.Pins, a.Pin); derr != nil {
					log.Warn("roll back", "attachment", a.Pin, "err", derr)
				}
			case a.undo != nil:
				// A chain swapped in through a link that ran before:
				// the interface runs its earlier chain again, not a
				// feature's XDP stage without the rest of it.
				if derr := a.undo(); derr != nil {
					log.Warn("roll back", "attachment", a.Pin, "err", derr)
				}
			}
		}
		if derr := unpinOrphanChains(o.Pins); derr != nil {
			log.Warn("roll back", "chains", o.Pins.Root, "err", derr)
		}
		if fresh {
			if _, derr := down(o.Pins, log); derr != nil {
				log.Warn("roll back", "root", o.Pins.Root, "err", derr)
			}
		}
	}()

	// Each feature's maps and shared programs once; then, per interface,
	// its XDP chain and its TC programs.
	loaded := map[*Feature]*loadedFeature{}
	defer func() {
		for _, lf := range loaded {
			lf.coll.Close()
		}
	}()
	for _, f := range o.used() {
		lf, err := loadFeature(&o, f)
		if err != nil {
			return res, err
		}
		loaded[f] = lf
	}

	res.TCPath = o.tcPath()
	want := map[string]bool{}
	for _, p := range plan {
		if p.renamed, err = adoptRenamed(o.Pins, p.iface); err != nil {
			return res, err
		}
	}
	for _, p := range plan {
		if len(p.stages) > 0 {
			a, err := upChain(&o, p, loaded)
			if a != nil {
				res.Attachments = append(res.Attachments, a)
			}
			if err != nil {
				return res, err
			}
		}
		for _, dir := range []Direction{Ingress, Egress} {
			for _, f := range p.tc[dir] {
				_, tc := f.hooks(&o)
				prog := loaded[f].coll.Programs[tc[dir]]
				var a *Attachment
				if res.TCPath == TCTCX {
					a, err = attachTCX(o.Pins, p.iface, prog, dir, f)
				} else {
					a, err = attachCls(o.Pins, p.iface, prog, tc[dir], dir, f)
				}
				if err != nil {
					return res, err
				}
				res.Attachments = append(res.Attachments, a)
			}
		}
	}
	for _, a := range res.Attachments {
		want[a.Pin] = true
		kind, ifname, _ := maps.SplitAttachName(a.Pin)
		seen := inspect(o.Pins, a.Pin, kind, ifname, true)
		a.ProgID, a.LinkID, a.Prog, a.Problem, a.Chain = seen.ProgID, seen.LinkID, seen.Prog, seen.Problem, seen.Chain
		event := "replace" // an attachment that was there, its program swapped
		if a.created {
			event = "attach"
		}
		log.Info("attached", "event", event, "iface", a.Iface, "hook", a.Hook, "feature", a.Feature, "via", a.Via, "prog_id", a.ProgID, "note", a.Note)
	}

	// Only now, with the new datapath in place, drop what is no longer
	// wanted: a hook that moved (tcx to clsact, xdp to tc) never has a gap.
	entries, err := listAttach(o.Pins)
	if err != nil {
		return res, err
	}
	for _, e := range entries {
		if want[e] {
			continue
		}
		if kind, _, _ := maps.SplitAttachName(e); kind == KindClsactMarker {
			continue
		}
		if err := detach(o.Pins, e); err != nil {
			return res, err
		}
		res.Removed = append(res.Removed, e)
		log.Info("detached", "event", "detach", "attachment", e, "why", "no longer configured")
	}
	if err := unpinStaleChains(o.Pins, want); err != nil {
		return res, err
	}
	// A clsact qdisc tandem created stays until down even when no hook
	// uses it any more: adding or deleting a qdisc deactivates the
	// device's queues for a moment, and up never costs a packet.
	return res, nil
}

// gateWant is the VIP gate Up leaves: the --vip entries, and the entries
// of the addresses the election moves as they are (the running daemon's
// election owns those: an up that swaps programs under it must not close
// the owner's gate, not even until the daemon's next check).
func gateWant(vm *maps.VIPMaps, o Options) map[netip.Addr]bool {
	want := make(map[netip.Addr]bool, len(o.VIPs))
	for a, owned := range o.VIPs {
		want[a] = owned
	}
	if len(o.ElectedVIPs) == 0 {
		return want // no election: the --vip list is the whole gate
	}
	elected := o.ElectedVIPs
	have, err := vm.VIPs()
	if err != nil {
		return want // SetVIPs reads them again and says why
	}
	for _, v := range have {
		if _, set := want[v.Addr]; !set && slices.Contains(elected, v.Addr.Unmap()) {
			want[v.Addr] = v.Owned
		}
	}
	// An elected address not in the gate yet gets its entry here, closed
	// until the election decides, so that it has a counter slot of its
	// own (the election only flips entries; one it made would share slot
	// 0's counters).
	for _, a := range elected {
		if _, set := want[a]; !set {
			want[a] = false
		}
	}
	return want
}

// tcPath resolves --tc auto with the TCX probe.
func (o *Options) tcPath() string {
	if o.TC != TCAuto {
		return o.TC
	}
	if HaveTCX() == nil {
		return TCTCX
	}
	return TCClsact
}

// ExpectedPins lists the attachment entries Up makes for o.
func (o *Options) ExpectedPins() []string {
	tcx := o.tcPath() == TCTCX
	var out []string
	for _, p := range o.plan() {
		if len(p.stages) > 0 {
			out = append(out, maps.AttachName(KindXDP, p.name))
		}
		for _, dir := range []Direction{Ingress, Egress} {
			for _, f := range p.tc[dir] {
				out = append(out, maps.AttachName(tcKind(tcx, dir, f.Name), p.name))
			}
		}
	}
	return out
}

// Check compares the datapath with o and lists what is wrong: attachments
// missing or broken. Nothing wrong: an empty list.
func Check(o Options) ([]string, error) {
	// Under the lock: an up running meanwhile (another tandem up) swaps a
	// chain's entry through the link before it pins the new chain, and a
	// check in between would see a link that runs no pinned chain.
	if _, err := os.Stat(o.Pins.AttachDir()); err == nil {
		unlock, err := lockDir(o.Pins.AttachDir(), false)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	as, err := readAttachments(o.Pins, false)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	var problems []string
	for _, a := range as {
		have[a.Pin] = true
		if a.Problem != "" {
			problems = append(problems, a.Pin+": "+a.Problem)
		}
	}
	for _, p := range o.ExpectedPins() {
		if !have[p] {
			problems = append(problems, p+": missing")
		}
	}
	return problems, nil
}

func loadError(err error, pins maps.Pins) error {
	var ve *ebpf.VerifierError
	switch {
	case errors.Is(err, ebpf.ErrMapIncompatible):
		return fmt.Errorf("load programs: %w (the maps pinned under %s come from another tandem build; run `tandem down --bpffs %s` first, which resets counters)", err, pins.MapsDir(), pins.Root)
	case errors.As(err, &ve):
		return fmt.Errorf("load programs: the verifier refused them: %+v", ve)
	case errors.Is(err, syscall.EPERM):
		return fmt.Errorf("load programs: %w (tandem needs root: CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)", err)
	}
	return fmt.Errorf("load programs: %w", err)
}

// listAttach returns the entry names under attach/, skipping temporaries.
func listAttach(pins maps.Pins) ([]string, error) {
	des, err := os.ReadDir(pins.AttachDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", pins.AttachDir(), err)
	}
	var out []string
	for _, d := range des {
		if _, _, err := maps.SplitAttachName(d.Name()); err == nil {
			out = append(out, d.Name())
		}
	}
	return out, nil
}

// detach undoes one attachment entry and removes its pin.
func detach(pins maps.Pins, entry string) error {
	kind, ifname, err := maps.SplitAttachName(entry)
	if err != nil {
		return err
	}
	path := pins.Attach(entry)
	switch {
	case isLinkKind(kind):
		// The link lives while a pin or an fd holds it: drop both.
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin %s: %w", path, err)
		}
		return nil
	case strings.HasPrefix(kind, "cls-"):
		hook, feature := splitKind(kind)
		dir := Ingress
		if hook == KindClsEgress {
			dir = Egress
		}
		if err := detachCls(pins, ifname, dir, clsPrioOf(feature)); err != nil {
			return err
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin %s: %w", path, err)
		}
		return nil
	case kind == KindClsactMarker:
		return removeClsactIfOurs(pins, ifname)
	}
	return fmt.Errorf("attachment %s: unknown kind %q (not made by this tandem; remove it by hand)", entry, kind)
}

// DownResult says what Down removed and what it left.
type DownResult struct {
	Detached []string
	Unpinned []string
	Restored []string // sysctls put back to their value before up, as path=value
	Left     []string // entries under the root that tandem did not make
}

// Down detaches and unpins everything Up made under the root, and nothing
// else. Running it twice, or on a root that was never used, is not an error.
func Down(pins maps.Pins, log *slog.Logger) (*DownResult, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if _, err := os.Stat(pins.Root); errors.Is(err, os.ErrNotExist) {
		return &DownResult{}, nil
	}
	if err := RequirePrivileges(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(pins.AttachDir()); err == nil {
		unlock, err := lockDir(pins.AttachDir(), false)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	return down(pins, log)
}

// down is Down for a caller that holds the lock.
func down(pins maps.Pins, log *slog.Logger) (*DownResult, error) {
	res := &DownResult{}
	entries, err := listAttach(pins)
	if err != nil {
		return nil, err
	}
	// Links and filters first, clsact markers last: a qdisc goes only once
	// tandem's filters are off it.
	slices.SortStableFunc(entries, func(a, b string) int {
		ka, _, _ := maps.SplitAttachName(a)
		kb, _, _ := maps.SplitAttachName(b)
		return boolCmp(ka == KindClsactMarker, kb == KindClsactMarker)
	})
	var errs []error
	for _, e := range entries {
		if err := detach(pins, e); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Detached = append(res.Detached, e)
		log.Info("detached", "event", "detach", "attachment", e)
	}
	// After the detach: no program runs on without what it relied on.
	restored, err := restoreSysctls(pins)
	res.Restored = restored
	if err != nil {
		errs = append(errs, err)
	}
	progs, pinned, err := embeddedNames()
	if err != nil {
		return nil, err
	}
	chains, err := chainIfaces(pins)
	if err != nil {
		errs = append(errs, err)
	}
	for _, ifname := range chains {
		removed, err := chain.Unpin(pins, ifname)
		res.Unpinned = append(res.Unpinned, removed...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range progs {
		res.Unpinned = append(res.Unpinned, removePin(pins.Prog(name), &errs)...)
	}
	for _, name := range pinned {
		res.Unpinned = append(res.Unpinned, removePin(pins.Map(name), &errs)...)
	}
	for _, d := range []string{pins.AttachDir(), pins.ProgsDir(), pins.MapsDir(), sysctlDir(pins), pins.Root} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			des, _ := os.ReadDir(d)
			for _, x := range des {
				res.Left = append(res.Left, d+"/"+x.Name())
			}
		}
	}
	return res, errors.Join(errs...)
}

// chainIfaces lists the interfaces with chain maps pinned under the root.
func chainIfaces(pins maps.Pins) ([]string, error) {
	des, err := os.ReadDir(pins.MapsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", pins.MapsDir(), err)
	}
	var out []string
	for _, d := range des {
		name, ifname, err := maps.SplitAttachName(d.Name())
		if err == nil && name == chain.MapProgs {
			out = append(out, ifname)
		}
	}
	return out, nil
}

// unpinStaleChains drops the chain maps of interfaces whose XDP chain is
// no longer wanted (its link was just detached).
func unpinStaleChains(pins maps.Pins, want map[string]bool) error {
	ifaces, err := chainIfaces(pins)
	if err != nil {
		return err
	}
	var errs []error
	for _, ifname := range ifaces {
		if !want[maps.AttachName(KindXDP, ifname)] {
			if _, err := chain.Unpin(pins, ifname); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func removePin(path string, errs *[]error) []string {
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		*errs = append(*errs, fmt.Errorf("unpin %s: %w", path, err))
		return nil
	}
	return []string{path}
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
