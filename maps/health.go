package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
)

// Types of the backends' health verdicts (bpf/synproxy/health.h).
type (
	HealthKey = bpf.SynproxyHealthKey
	HealthVal = bpf.SynproxyHealthVal
	HealthCmd = bpf.SynproxyHealthCmd
)

// Names of what health.h pins, and its sync id.
const (
	MapSpHealth     = bpf.SynproxyMapSpHealth
	ProgSpHealthCtl = bpf.SynproxyProgSpHealthCtl
	SyncMapHealth   = uint32(bpf.SynproxySyncMapIdSYNC_MAP_HEALTH)
)

// HealthKeyOf is the key of a service's backend.
func HealthKeyOf(service, backend netip.AddrPort) HealthKey {
	return HealthKey{Vaddr: service.Addr().Unmap().As16(), Vport: netPort(service.Port()),
		Baddr: backend.Addr().Unmap().As16(), Bport: netPort(backend.Port()), Proto: 6}
}

// Verdict is one backend's published health.
type Verdict struct {
	Service, Backend netip.AddrPort
	Up               bool
	Changed          time.Time
	Version          uint64
}

// HealthMaps are the verdict map and its writer.
type HealthMaps struct {
	Map *ebpf.Map
	Ctl *ebpf.Program
}

// ErrHealthNotLoaded: no verdict map under the root (the SYN proxy is not
// loaded, or is a build from before the health checks).
var ErrHealthNotLoaded = errors.New("no backend health map loaded (tandem up --proxy-iface ... loads it)")

// OpenHealth opens the pinned verdict map and writer; ErrHealthNotLoaded
// when they are not there.
func OpenHealth(pins Pins) (*HealthMaps, error) {
	h := &HealthMaps{}
	m, err := ebpf.LoadPinnedMap(pins.Map(MapSpHealth), nil)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%s: %w", MapSpHealth, ErrHealthNotLoaded)
		}
		return nil, fmt.Errorf("open %s: %w", MapSpHealth, err)
	}
	h.Map = m
	p, err := ebpf.LoadPinnedProgram(pins.Prog(ProgSpHealthCtl), nil)
	if err != nil {
		m.Close()
		if errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%s: %w", ProgSpHealthCtl, ErrHealthNotLoaded)
		}
		return nil, fmt.Errorf("open %s: %w", ProgSpHealthCtl, err)
	}
	h.Ctl = p
	return h, nil
}

// Close closes what h holds.
func (h *HealthMaps) Close() {
	if h.Map != nil {
		h.Map.Close()
	}
	if h.Ctl != nil {
		h.Ctl.Close()
	}
}

func (h *HealthMaps) run(cmd *HealthCmd) (bool, error) {
	buf := make([]byte, unsafe.Sizeof(*cmd))
	copy(buf, unsafe.Slice((*byte)(unsafe.Pointer(cmd)), len(buf)))
	if _, err := h.Ctl.Run(&ebpf.RunOptions{Context: buf, ContextOut: buf}); err != nil {
		return false, fmt.Errorf("run %s: %w", ProgSpHealthCtl, err)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(cmd)), len(buf)), buf)
	if cmd.Ret < 0 {
		return false, fmt.Errorf("%s op %d: %w", ProgSpHealthCtl, cmd.Op, syscall.Errno(-cmd.Ret))
	}
	return cmd.Ret == 1, nil
}

// Set publishes a backend's verdict (replicated by the sync); it reports
// whether the map changed (an equal verdict is not written again).
func (h *HealthMaps) Set(service, backend netip.AddrPort, up bool, changed time.Time) (bool, error) {
	cmd := &HealthCmd{Key: HealthKeyOf(service, backend), Op: uint32(bpf.SynproxyHealthOpHEALTH_OP_SET), ChangedNs: uint64(changed.UnixNano())}
	if up {
		cmd.Up = 1
	}
	return h.run(cmd)
}

// Del removes a backend's verdict; not there is no error.
func (h *HealthMaps) Del(service, backend netip.AddrPort) error {
	_, err := h.run(&HealthCmd{Key: HealthKeyOf(service, backend), Op: uint32(bpf.SynproxyHealthOpHEALTH_OP_DEL)})
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

// List reads every published verdict.
func (h *HealthMaps) List() ([]Verdict, error) {
	var (
		k   HealthKey
		v   HealthVal
		out []Verdict
	)
	it := h.Map.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Verdict{
			Service: netip.AddrPortFrom(addrOf(k.Vaddr), HostPort(k.Vport)),
			Backend: netip.AddrPortFrom(addrOf(k.Baddr), HostPort(k.Bport)),
			Up:      v.Up != 0, Changed: time.Unix(0, int64(v.ChangedNs)), Version: v.Sync.Version,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", MapSpHealth, err)
	}
	return out, nil
}
