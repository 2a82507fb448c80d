package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// KernelFeature is one kernel capability tandem may use.
type KernelFeature struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Detail    string `json:"detail,omitempty"`  // why not, when not
	Without   string `json:"without,omitempty"` // what tandem does without it
	Required  bool   `json:"required"`          // tandem cannot run without it
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

// Probe checks what tandem can use on this kernel. ifaces, if given, are
// also checked for native XDP.
func Probe(ifaces []string) []KernelFeature {
	res := func(name string, err error, required bool, without string) KernelFeature {
		f := KernelFeature{Name: name, Available: err == nil, Required: required}
		if err != nil {
			f.Detail = err.Error()
			f.Without = without
		}
		return f
	}
	var out []KernelFeature
	out = append(out,
		res("program type xdp", features.HaveProgramType(ebpf.XDP), true, "tandem cannot run"),
		res("program type sched_cls", features.HaveProgramType(ebpf.SchedCLS), true, "tandem cannot run"),
		res("map type percpu_array", features.HaveMapType(ebpf.PerCPUArray), true, "tandem cannot run"),
		res("map type hash", features.HaveMapType(ebpf.Hash), true, "tandem cannot run"),
		res("map type ringbuf", features.HaveMapType(ebpf.RingBuf), false, "state sync cannot use ring buffers"),
		res("bounded loops", features.HaveBoundedLoops(), false, "programs must unroll every loop"),
		res("helper bpf_skb_pull_data", features.HaveProgramHelper(ebpf.SchedCLS, asm.FnSkbPullData), true, "tandem cannot run"),
		res("kernel btf", kernelBTF(), false, "no CO-RE; tandem's programs do not need it"),
		res("xdp links (bpf_link)", haveXDPLink(), true, "tandem cannot pin XDP attachments (kernel 5.9+ needed)"),
		res("tcx links", HaveTCX(), false, "TC hooks use clsact + cls_bpf (replaced atomically with NLM_F_REPLACE)"),
		res("map batch operations", haveBatch(), false, "maps are read one key at a time"),
	)
	fs := res("bpffs", bpffsReady(), true, "pins cannot be kept; run as root so tandem can mount it")
	if fs.Available {
		if ok, _ := IsBPFFS(DefaultBPFFS); !ok {
			fs.Detail = "not mounted at " + DefaultBPFFS + " yet; tandem up mounts it"
		}
	}
	out = append(out, fs)
	for _, i := range ifaces {
		out = append(out, res("native xdp on "+i, HaveXDPNative(i), false, "XDP runs in generic (skb) mode on "+i))
	}
	return out
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
