package loader

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
)

// KernelFeature is one kernel capability tandem may use.
type KernelFeature struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Required  bool   `json:"required"`            // tandem cannot run without it
	NeededBy  string `json:"needed_by,omitempty"` // the programs or the part of tandem that uses it
	Detail    string `json:"detail,omitempty"`    // why not, when not
	Without   string `json:"without,omitempty"`   // what tandem does without it
}

func trivialProg(t ebpf.ProgramType, ret int32) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         t,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()},
	})
}

var tcxOnce = sync.OnceValue(probeTCX)

// HaveTCX reports whether TCX links work here, by attaching a program
// that only says "next" to loopback and removing it at once. Kernels
// before 6.6 refuse the attach type.
func HaveTCX() error { return tcxOnce() }

func probeTCX() error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("no loopback to probe on: %w", err)
	}
	prog, err := trivialProg(ebpf.SchedCLS, -1)
	if err != nil {
		return fmt.Errorf("load probe program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: lo.Index, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("attach tcx: %w", err)
	}
	return l.Close()
}

// HaveXDPNative reports whether ifname's driver runs XDP natively, by the
// same attach test (the probe program passes every frame).
func HaveXDPNative(ifname string) error {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("interface %s: %w", ifname, err)
	}
	prog, err := trivialProg(ebpf.XDP, 2 /* XDP_PASS */)
	if err != nil {
		return fmt.Errorf("load probe program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPDriverMode})
	if err != nil {
		return err
	}
	return l.Close()
}

// Probe checks what tandem needs and can use on this kernel, without
// reading its version: every program type, helper and map type the
// embedded programs use (read from the objects themselves, so the list
// cannot fall behind the C sources), the loader's kernel interfaces, and
// the optional features tandem has a fallback for. ifaces, if given, are
// also checked for native XDP.
func Probe(ifaces []string) []KernelFeature {
	res := func(name string, err error, required bool, neededBy, without string) KernelFeature {
		f := KernelFeature{Name: name, Available: err == nil, Required: required, NeededBy: neededBy}
		if err != nil {
			f.Detail = err.Error()
			f.Without = without
			if errors.Is(err, unix.EPERM) {
				// Refused, not absent: the kernel may well have it.
				f.Without = "could not be checked without privileges: run tandem probe as root"
			}
		}
		return f
	}
	cannot := "tandem's programs do not load: run tandem on Linux " + MinKernel + " or later"
	// Without privileges the kernel refuses every check: say so first.
	out := []KernelFeature{res("privileges", RequirePrivileges(), true, "every command that loads or attaches", "the kernel refuses the checks below")}
	u, err := readUsage()
	if err != nil {
		// The objects are embedded: only a broken build gets here.
		return append(out, res("embedded programs", err, true, "every command", "rebuild tandem (make generate build)"))
	}
	for _, pt := range sortedBy(u.progTypes, progTypeName) {
		out = append(out, res("program type "+progTypeName(pt), features.HaveProgramType(pt), true, u.progTypes[pt].of(u.progs), cannot))
	}
	for _, fn := range sortedBy(u.helpers, HelperName) {
		h := u.helpers[fn]
		var errs []error
		for _, pt := range sortedBy(h.types, progTypeName) {
			if err := features.HaveProgramHelper(pt, fn); err != nil {
				errs = append(errs, fmt.Errorf("in %s programs: %w", progTypeName(pt), err))
			}
		}
		out = append(out, res("helper "+HelperName(fn), errors.Join(errs...), true, h.users.of(u.progs), cannot))
	}
	for _, mt := range sortedBy(u.mapTypes, mapTypeName) {
		out = append(out, res("map type "+mapTypeName(mt), features.HaveMapType(mt), true, u.mapTypes[mt].String(), cannot))
	}
	for _, c := range []struct {
		name  string
		users users
		probe func() error
	}{
		{"bounded loops", u.loops, features.HaveBoundedLoops},
		{"large programs (1M instructions)", u.large, features.HaveLargeInstructions},
		{"isa v2 (jlt, jle, jslt, jsle)", u.isaV2, features.HaveV2ISA},
		{"isa v3 (jmp32)", u.isaV3, features.HaveV3ISA},
		{"global data (read-only .rodata)", u.globalData, func() error { return features.HaveMapFlag(features.BPF_F_RDONLY_PROG) }},
	} {
		if len(c.users) > 0 {
			out = append(out, res(c.name, c.probe(), true, c.users.of(u.progs), cannot))
		}
	}
	out = append(out,
		res("btf (program and map types)", haveBTF(), true, "every object", cannot),
		res("xdp links (bpf_link)", haveXDPLink(), true, "every XDP attachment (pinned, replaced atomically)", "tandem cannot pin XDP attachments: run tandem on Linux "+MinKernel+" or later"),
		res("kernel btf", kernelBTF(), false, "the ESP replay tracer (esptrace.c, CO-RE)", "SA replay state follows XFRM aevents"),
		espHooksFeature(),
		res("tcx links", HaveTCX(), false, "TC hooks (--tc auto)", "TC hooks use clsact + cls_bpf (replaced atomically with NLM_F_REPLACE)"),
		res("map batch operations", haveBatch(), false, "state sync scans and applies", "maps are read and written one key at a time"),
	)
	fs := res("bpffs", bpffsReady(), true, "pins (every map, program and attachment)", "pins cannot be kept: run tandem as root, so it can mount bpffs")
	if fs.Available {
		if ok, _ := IsBPFFS(DefaultBPFFS); !ok {
			fs.Detail = "not mounted at " + DefaultBPFFS + " yet; tandem up mounts it"
		}
	}
	out = append(out, fs)
	for _, i := range ifaces {
		out = append(out, res("native xdp on "+i, HaveXDPNative(i), false, "XDP on "+i+" at driver speed", "XDP runs in generic (skb) mode on "+i))
	}
	return out
}

// MinKernel is the oldest Linux release whose kernel has everything the
// shipped programs use: bpf_ktime_get_tai_ns arrived in 6.1 (the XDP
// load/store helpers in 5.18, bpf_loop in 5.17). Only messages and docs
// use it; Probe tries each feature instead of reading the version.
const MinKernel = "6.1"

// espHooksFeature says where SA replay state comes from on this kernel:
// fexit, else kprobes, on the replay functions; else XFRM aevents.
func espHooksFeature() KernelFeature {
	src, err := ESPSource()
	f := KernelFeature{
		Name:      "esp replay hooks (" + strings.Join(espTraceHooks, ", ") + ")",
		Available: src != ESPSourceAEvents,
		NeededBy:  "SA replay state marked dirty per ESP packet (source on this kernel: " + src + ")",
	}
	if err != nil {
		f.Detail = err.Error()
	}
	switch src {
	case ESPSourceKprobe:
		f.Without = "fexit refused: the kprobe fallback is used (same state, a little more per packet)"
	case ESPSourceAEvents:
		f.Without = "SA replay state follows XFRM aevents (NEWAE on the kernel's replay threshold and timer)"
	}
	return f
}

type shippedObject struct {
	file string
	load func() (*ebpf.CollectionSpec, error)
}

// shippedObjects are the embedded objects tandem loads in production: the
// chain's entry and every registered feature's object. Test-only features
// (synctest) are not listed: a kernel they do not load on is still one
// tandem runs on. (sync.c is not loaded: its maps come with every program
// that replicates state.)
func shippedObjects() []shippedObject {
	out := []shippedObject{{"chain.c", bpf.LoadChain}}
	for _, f := range registry {
		if !f.TestOnly {
			out = append(out, shippedObject{f.File, f.Spec})
		}
	}
	return out
}

// users names what needs a kernel feature: per object, its programs (or
// maps), e.g. "synproxy.c (tc_synproxy, xdp_synproxy)".
type users map[string]map[string]bool

// add records that name in file (or, with name "", file as a whole) is a user.
func (u users) add(file, name string) {
	if u[file] == nil {
		u[file] = map[string]bool{}
	}
	if name != "" {
		u[file][name] = true
	}
}

func (u users) String() string { return u.of(nil) }

// of is String, with a file whose every program is a user (progs[file]
// of them) named alone.
func (u users) of(progs map[string]int) string {
	var parts []string
	for _, f := range sortedKeys(u) {
		if len(u[f]) == 0 || len(u[f]) == progs[f] {
			parts = append(parts, f)
			continue
		}
		parts = append(parts, f+" ("+strings.Join(sortedKeys(u[f]), ", ")+")")
	}
	return strings.Join(parts, "; ")
}

type helperUse struct {
	types map[ebpf.ProgramType]bool
	users users
}

// usage is what the shipped programs ask of the kernel.
type usage struct {
	progs               map[string]int // file -> how many programs
	progTypes           map[ebpf.ProgramType]users
	mapTypes            map[ebpf.MapType]users
	helpers             map[asm.BuiltinFunc]*helperUse
	loops, large, isaV2 users
	isaV3, globalData   users
}

// readUsage reads the shipped objects: each program's type, the helpers
// it calls (its subprograms and loop callbacks included), backward jumps,
// size and instruction set, and each map's type.
func readUsage() (*usage, error) {
	u := &usage{progs: map[string]int{}, progTypes: map[ebpf.ProgramType]users{}, mapTypes: map[ebpf.MapType]users{}, helpers: map[asm.BuiltinFunc]*helperUse{},
		loops: users{}, large: users{}, isaV2: users{}, isaV3: users{}, globalData: users{}}
	addMap := func(t ebpf.MapType, file, name string) {
		if u.mapTypes[t] == nil {
			u.mapTypes[t] = users{}
		}
		u.mapTypes[t].add(file, name)
	}
	addHelper := func(fn asm.BuiltinFunc, pt ebpf.ProgramType, file, name string) {
		h := u.helpers[fn]
		if h == nil {
			h = &helperUse{types: map[ebpf.ProgramType]bool{}, users: users{}}
			u.helpers[fn] = h
		}
		h.types[pt] = true
		h.users.add(file, name)
	}
	for _, o := range shippedObjects() {
		spec, err := o.load()
		if err != nil {
			return nil, fmt.Errorf("read embedded %s: %w", o.file, err)
		}
		u.progs[o.file] = len(spec.Programs)
		for name, p := range spec.Programs {
			if u.progTypes[p.Type] == nil {
				u.progTypes[p.Type] = users{}
			}
			u.progTypes[p.Type].add(o.file, name)
			if len(p.Instructions) > 4096 {
				u.large.add(o.file, name)
			}
			for _, ins := range p.Instructions {
				op := ins.OpCode
				switch {
				case ins.IsBuiltinCall():
					addHelper(asm.BuiltinFunc(ins.Constant), p.Type, o.file, name)
				case op.Class() == asm.Jump32Class:
					u.isaV3.add(o.file, name)
				case op.Class() == asm.JumpClass && slices.Contains([]asm.JumpOp{asm.JLT, asm.JLE, asm.JSLT, asm.JSLE}, op.JumpOp()):
					u.isaV2.add(o.file, name)
				}
				// A loop is a jump backwards (one to a symbol is a call,
				// resolved at load).
				if op.Class().IsJump() && op.JumpOp() != asm.Call && op.JumpOp() != asm.Exit && ins.Offset < 0 && ins.Reference() == "" {
					u.loops.add(o.file, name)
				}
			}
		}
		for name, m := range spec.Maps {
			if strings.HasPrefix(name, ".") {
				if name == ".rodata" {
					u.globalData.add(o.file, "")
				}
			} else {
				addMap(m.Type, o.file, name)
			}
			if m.InnerMap != nil {
				addMap(m.InnerMap.Type, o.file, name+"'s inner maps")
			}
		}
	}
	return u, nil
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// sortedBy lists m's keys in the order of their names.
func sortedBy[K comparable, V any](m map[K]V, name func(K) string) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b K) int { return strings.Compare(name(a), name(b)) })
	return keys
}

// HelperName is a helper's name in C: asm.FnKtimeGetTaiNs is
// "bpf_ktime_get_tai_ns".
func HelperName(fn asm.BuiltinFunc) string {
	s := strings.TrimPrefix(fn.String(), "Fn")
	var b strings.Builder
	b.WriteString("bpf")
	for i, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		} else if i == 0 {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ProbedHelpers lists the helpers Probe checks: those the shipped
// programs call.
func ProbedHelpers() ([]string, error) {
	u, err := readUsage()
	if err != nil {
		return nil, err
	}
	var out []string
	for fn := range u.helpers {
		out = append(out, HelperName(fn))
	}
	slices.Sort(out)
	return out, nil
}

// progTypeName and mapTypeName are the kernel's names (BPF_PROG_TYPE_*,
// BPF_MAP_TYPE_*) in lower case.
func progTypeName(t ebpf.ProgramType) string {
	if n, ok := map[ebpf.ProgramType]string{ebpf.SchedCLS: "sched_cls"}[t]; ok {
		return n
	}
	return strings.ToLower(t.String())
}

func mapTypeName(t ebpf.MapType) string {
	if n, ok := map[ebpf.MapType]string{ebpf.PerCPUArray: "percpu_array", ebpf.PerCPUHash: "percpu_hash", ebpf.LRUHash: "lru_hash",
		ebpf.ArrayOfMaps: "array_of_maps", ebpf.HashOfMaps: "hash_of_maps", ebpf.ProgramArray: "prog_array"}[t]; ok {
		return n
	}
	return strings.ToLower(t.String())
}

// haveBTF loads a one-type BTF blob: the kernel takes the programs' and
// maps' type information.
func haveBTF() error {
	b, err := btf.NewBuilder([]btf.Type{&btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}}, nil)
	if err != nil {
		return err
	}
	h, err := btf.NewHandle(b)
	if err != nil {
		return err
	}
	return h.Close()
}

func kernelBTF() error {
	_, err := btf.LoadKernelSpec()
	return err
}

func bpffsReady() error {
	ok, err := IsBPFFS(DefaultBPFFS)
	if err == nil && ok {
		return nil
	}
	if os.Geteuid() == 0 {
		return nil // tandem up mounts it
	}
	return errors.New("not mounted at " + DefaultBPFFS + " and not root to mount it")
}

func haveXDPLink() error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return err
	}
	prog, err := trivialProg(ebpf.XDP, 2)
	if err != nil {
		return err
	}
	defer prog.Close()
	// Generic mode on loopback: every kernel with XDP links accepts it.
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: lo.Index, Flags: link.XDPGenericMode})
	if err != nil {
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
			return nil // something is on lo already, so links work
		}
		return err
	}
	return l.Close()
}

func haveBatch() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 4})
	if err != nil {
		return err
	}
	defer m.Close()
	keys := []uint32{1}
	vals := []uint32{1}
	_, err = m.BatchUpdate(keys, vals, nil)
	return err
}
