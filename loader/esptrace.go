package loader

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/bpf"
)

// The kernel functions the ESP replay tracer hooks (bpf/esptrace.c): the
// inbound replay advance (after the ICV check) and the outbound sequence
// number. Both are in BTF, with these arguments, on 6.1 and 6.18.
var espTraceHooks = []string{"xfrm_replay_advance", "xfrm_replay_overflow"}

// ESP replay-state sources, as tandem probe names them.
const (
	ESPSourceFexit   = "fexit"   // esptrace.c marks changed SAs per packet
	ESPSourceKprobe  = "kprobe"  // the same, from kprobe + kretprobe (the kernel refuses fexit)
	ESPSourceAEvents = "aevents" // XFRM_MSG_NEWAE notifications, on the kernel's threshold and timer
)

var (
	espFexitOnce  = sync.OnceValue(func() error { return probeESPTrace(ESPSourceFexit) })
	espKprobeOnce = sync.OnceValue(func() error { return probeESPTrace(ESPSourceKprobe) })
)

// HaveESPTrace reports whether the ESP replay tracer runs here from
// fexit programs: the kernel's BTF has both hooks, and the programs load
// and attach.
func HaveESPTrace() error { return espFexitOnce() }

// HaveESPKprobe reports whether the tracer's kprobe fallback runs here.
func HaveESPKprobe() error { return espKprobeOnce() }

func probeESPTrace(mode string) error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("kernel BTF (the tracer reads xfrm_state with CO-RE): %w", err)
	}
	for _, fn := range espTraceHooks {
		var f *btf.Func
		if err := spec.TypeByName(fn, &f); err != nil {
			return fmt.Errorf("kernel BTF has no %s (CONFIG_XFRM off, or the function was renamed): %w", fn, err)
		}
	}
	t, err := LoadESPTrace(ESPTraceOptions{Mode: mode})
	if err != nil {
		return err
	}
	return t.Close()
}

// ESPSource says which replay-state source this kernel gets: fexit,
// else kprobe, else aevents, with the reasons the better ones were not.
func ESPSource() (string, error) {
	ferr := HaveESPTrace()
	if ferr == nil {
		return ESPSourceFexit, nil
	}
	kerr := HaveESPKprobe()
	if kerr == nil {
		return ESPSourceKprobe, fmt.Errorf("fexit: %w", ferr)
	}
	return ESPSourceAEvents, fmt.Errorf("fexit: %w; kprobe: %w", ferr, kerr)
}

// ESPTraceOptions configure the tracer.
type ESPTraceOptions struct {
	// Mode is ESPSourceFexit or ESPSourceKprobe; empty: fexit, else kprobe.
	Mode string
	// NetNS is the inode number of the network namespace whose SAs are
	// followed (0: every namespace).
	NetNS uint32
	// Maps replaces the tracer's maps by name: esp_sa and the sync maps
	// (sync_rings, sync_epoch, sync_overflow) of the daemon or a test.
	// Without them the tracer gets maps of its own.
	Maps map[string]*ebpf.Map
}

// ESPTrace is the loaded and attached tracer.
type ESPTrace struct {
	Objs  espTraceObjs
	Mode  string // ESPSourceFexit or ESPSourceKprobe
	progs []*ebpf.Program
	links []link.Link
}

// espTraceObjs holds the maps and one mode's programs: loading only those
// keeps a kernel that refuses fexit from refusing the whole object.
type espTraceObjs struct {
	bpf.EsptraceMaps
	fexit  struct{ Advance, Overflow *ebpf.Program }
	kprobe struct{ Advance, AdvanceRet, Overflow, OverRet *ebpf.Program }
}

// Programs returns the attached programs: the inbound one first (its
// run statistics are the cost per inbound ESP packet), then the outbound one.
func (t *ESPTrace) Programs() []*ebpf.Program { return t.progs }

// LoadESPTrace loads bpf/esptrace.c and attaches its fexit programs, or
// its kprobes when the kernel refuses fexit (or Mode asks for them).
func LoadESPTrace(o ESPTraceOptions) (*ESPTrace, error) {
	if o.Mode == "" {
		t, ferr := LoadESPTrace(ESPTraceOptions{Mode: ESPSourceFexit, NetNS: o.NetNS, Maps: o.Maps})
		if ferr == nil {
			return t, nil
		}
		t, kerr := LoadESPTrace(ESPTraceOptions{Mode: ESPSourceKprobe, NetNS: o.NetNS, Maps: o.Maps})
		if kerr != nil {
			return nil, fmt.Errorf("%w; %w", ferr, kerr)
		}
		return t, nil
	}
	spec, err := bpf.LoadEsptrace()
	if err != nil {
		return nil, fmt.Errorf("read esptrace: %w", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	if o.NetNS != 0 {
		if err := spec.Variables[bpf.EsptraceVarCfgNetns].Set(o.NetNS); err != nil {
			return nil, fmt.Errorf("esptrace netns: %w", err)
		}
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range o.Maps {
		if _, ok := spec.Maps[name]; ok {
			repl[name] = m
		}
	}
	t := &ESPTrace{Mode: o.Mode}
	opts := &ebpf.CollectionOptions{MapReplacements: repl}
	var err2 error
	switch o.Mode {
	case ESPSourceFexit:
		var fo struct {
			bpf.EsptraceMaps
			Advance  *ebpf.Program `ebpf:"esptrace_advance"`
			Overflow *ebpf.Program `ebpf:"esptrace_overflow"`
		}
		err2 = spec.LoadAndAssign(&fo, opts)
		t.Objs.EsptraceMaps = fo.EsptraceMaps
		t.Objs.fexit.Advance, t.Objs.fexit.Overflow = fo.Advance, fo.Overflow
	case ESPSourceKprobe:
		var ko struct {
			bpf.EsptraceMaps
			Advance    *ebpf.Program `ebpf:"esptrace_k_advance"`
			AdvanceRet *ebpf.Program `ebpf:"esptrace_kr_advance"`
			Overflow   *ebpf.Program `ebpf:"esptrace_k_overflow"`
			OverRet    *ebpf.Program `ebpf:"esptrace_kr_overflow"`
		}
		err2 = spec.LoadAndAssign(&ko, opts)
		t.Objs.EsptraceMaps = ko.EsptraceMaps
		t.Objs.kprobe.Advance, t.Objs.kprobe.AdvanceRet = ko.Advance, ko.AdvanceRet
		t.Objs.kprobe.Overflow, t.Objs.kprobe.OverRet = ko.Overflow, ko.OverRet
	default:
		return nil, fmt.Errorf("esptrace mode %q: want %s or %s", o.Mode, ESPSourceFexit, ESPSourceKprobe)
	}
	if err2 != nil {
		return nil, fmt.Errorf("load esptrace (%s): %w", o.Mode, err2)
	}
	if o.Mode == ESPSourceFexit {
		t.progs = []*ebpf.Program{t.Objs.fexit.Advance, t.Objs.fexit.Overflow}
	} else {
		t.progs = []*ebpf.Program{t.Objs.kprobe.AdvanceRet, t.Objs.kprobe.OverRet}
	}
	if err := t.Attach(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Attach attaches the loaded programs to the kernel's replay hooks (done
// by LoadESPTrace; again after Detach). Attached already: nothing to do.
func (t *ESPTrace) Attach() error {
	if len(t.links) > 0 {
		return nil
	}
	attach := func(f func() (link.Link, error)) error {
		l, err := f()
		if err != nil {
			return err
		}
		t.links = append(t.links, l)
		return nil
	}
	var err error
	if t.Mode == ESPSourceFexit {
		for _, p := range t.progs {
			if err = attach(func() (link.Link, error) { return link.AttachTracing(link.TracingOptions{Program: p}) }); err != nil {
				break
			}
		}
	} else {
		k := &t.Objs.kprobe
		for i, fn := range espTraceHooks {
			entry, ret := []*ebpf.Program{k.Advance, k.Overflow}[i], []*ebpf.Program{k.AdvanceRet, k.OverRet}[i]
			if err = attach(func() (link.Link, error) { return link.Kprobe(fn, entry, nil) }); err != nil {
				break
			}
			if err = attach(func() (link.Link, error) { return link.Kretprobe(fn, ret, nil) }); err != nil {
				break
			}
		}
	}
	if err != nil {
		t.Detach()
		return fmt.Errorf("attach esptrace (%s): %w", t.Mode, err)
	}
	return nil
}

// Detach takes the programs off the kernel's hooks and keeps them loaded
// (Attach puts them back without verifying them again): the benchmark's
// "detached" rounds. The hooks then cost the kernel nothing.
func (t *ESPTrace) Detach() error {
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	return errors.Join(errs...)
}

// Close detaches and unloads.
func (t *ESPTrace) Close() error {
	errs := []error{t.Detach()}
	errs = append(errs, t.Objs.EsptraceMaps.Close())
	for _, p := range []*ebpf.Program{t.Objs.fexit.Advance, t.Objs.fexit.Overflow, t.Objs.kprobe.Advance,
		t.Objs.kprobe.AdvanceRet, t.Objs.kprobe.Overflow, t.Objs.kprobe.OverRet} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}

// Stats returns the tracer's counters (enum esptrace_stat), summed over CPUs.
func (t *ESPTrace) Stats() ([]uint64, error) {
	out := make([]uint64, bpf.EsptraceEsptraceStatESPTRACE_STAT_MAX)
	for i := range out {
		var per []uint64
		if err := t.Objs.EsptraceStats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read esptrace stats: %w", err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

// Pause stops (true) or resumes the tracer: the standby pauses it, as
// only the sync's applier writes esp_sa there (docs/sa.md).
func (t *ESPTrace) Pause(paused bool) error {
	var v uint32
	if paused {
		v = 1
	}
	if err := t.Objs.EsptracePaused.Put(uint32(0), v); err != nil {
		return fmt.Errorf("pause esptrace: %w", err)
	}
	return nil
}
