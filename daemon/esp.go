package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/xfrm"
)

// espd keeps the IPsec SAs' replay state (docs/sa.md, "The daemon"): it
// follows the kernel's SAs through XFRM netlink (those the SA filter
// selects) into esp_sa, runs the replay tracer that copies changed SAs
// and marks them dirty for the sync (or, without one, follows the
// kernel's aevents), and on takeover installs the replicated state into
// this host's kernel SAs before the VIPs are served.
//
// Roles. The owner (active: no sync, the sync's primary, or the host the
// election made owner) writes esp_sa: the follower puts every selected
// SA and the tracer copies each change. A standby never writes esp_sa:
// the sync's applier alone does, and a local write would bump an entry's
// version past the owner's and make the applier skip the owner's next
// change. So on the standby the tracer is paused and the follower only
// keeps track of which SAs this host's kernel has (for the missing-SA
// report and the takeover's marks).
type espd struct {
	log     *slog.Logger
	sam     *maps.SAMaps
	trace   *loader.ESPTrace // nil: the aevents source
	source  string
	why     string // why the better sources were not used
	filter  *xfrm.Filter
	fstr    string
	sync    time.Duration // the drain period, for the margin
	detect  time.Duration // the failover detection time, for the margin
	safety  float64
	state   string // the status file
	stopped bool

	mu      sync.Mutex // esp_sa writes (one argument slot) and everything below
	active  bool
	claimed bool                   // the takeover's resume ran since this host was last a standby
	known   map[xfrm.SAID]xfrm.SA  // this host's selected kernel SAs, by id without mark
	rates   map[maps.SAKey]espRate // standby: the owner's outbound rates, from the replicated oseq
	missing []ESPMissing           // synced SAs this host's kernel lacks
	synced  int                    // standby: SAs in esp_sa at the last sample
	listed  bool                   // the follower's dump is in known
	last    *ESPTakeover

	stop context.CancelFunc
	done chan struct{}
}

// espRate is one SA's outbound rate as the standby sees it replicated.
type espRate struct {
	otop uint64
	at   time.Time
	rate float64 // packets/s: the highest recent rate, halved each sample that does not reach it
}

// ESPStatus is what the daemon writes to esp-status.json in its state
// directory; tandem sa list and tandem status show it.
type ESPStatus struct {
	PID       int    `json:"pid"`
	Source    string `json:"source"`               // fexit, kprobe or aevents
	SourceWhy string `json:"source_why,omitempty"` // why not a better one
	Filter    string `json:"filter"`
	// Active: this host writes esp_sa (the owner); else the standby,
	// where only the sync's applier writes it and the tracer is paused.
	Active  bool         `json:"active"`
	Paused  bool         `json:"tracer_paused"`
	Kernel  int          `json:"kernel_sas"` // the selected SAs of this host's kernel
	Synced  int          `json:"synced_sas"` // SAs in esp_sa
	Missing []ESPMissing `json:"missing"`
	// LastTakeover is the last install of replicated state.
	LastTakeover *ESPTakeover `json:"last_takeover,omitempty"`
	Updated      time.Time    `json:"updated"`
}

// ESPMissing is a synced SA this host's kernel does not have: the
// standby cannot resume it (the IKE daemon must install it on both hosts).
type ESPMissing struct {
	Dst string `json:"dst"`
	SPI string `json:"spi"`
}

// ESPTakeover is what one takeover installed.
type ESPTakeover struct {
	At      time.Time     `json:"at"`
	SAs     int           `json:"sas"`
	Resumed int           `json:"resumed"`
	Missing int           `json:"missing"`
	Failed  int           `json:"failed"`
	Took    time.Duration `json:"took_ns"`
}

// ESPStatusFile is where the daemon writes its ESPStatus.
func ESPStatusFile(stateDir string) string { return filepath.Join(stateDir, "esp-status.json") }

// ReadESPStatus reads the daemon's ESP status; os.ErrNotExist when no
// daemon ran the ESP feature there.
func ReadESPStatus(stateDir string) (*ESPStatus, error) {
	b, err := os.ReadFile(ESPStatusFile(stateDir))
	if err != nil {
		return nil, err
	}
	var st ESPStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", ESPStatusFile(stateDir), err)
	}
	return &st, nil
}

// espActive is whether this host owns the SA state: no sync, the
// primary, or the host the election made the owner (electedPrimary).
// auto and standby are standbys until the election says otherwise.
func espActive(c Config, electedPrimary bool) bool {
	return c.Sync.Role == "" || c.Sync.Role == SyncPrimary || electedPrimary
}

// espKey is what, changed by a reload, restarts the ESP side.
func espKey(c Config) string {
	return fmt.Sprintf("%+v %s %s %s %s %d", c.Datapath.ESP, c.Datapath.Pins.Root, c.StateDir, c.Sync.Interval, c.Elect.Interval, c.Elect.Dead)
}

// newEspd starts the ESP side when the datapath has the ESP feature;
// nil (and no error) when it does not.
func newEspd(c Config, active bool, log *slog.Logger) (*espd, error) {
	o := c.Datapath
	if len(o.ESP.Ifaces) == 0 {
		return nil, nil
	}
	sam, err := maps.OpenSAMaps(o.Pins)
	if errors.Is(err, maps.ErrNoESP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("esp: %w", err)
	}
	filter, err := xfrm.ParseFilter(o.ESP.SAFilter)
	if err != nil {
		sam.Close()
		return nil, fmt.Errorf("esp: %w", err)
	}
	e := &espd{log: log.With("part", "esp"), sam: sam, filter: filter, fstr: o.ESP.SAFilter, sync: c.Sync.Interval,
		detect: time.Duration(c.Elect.Dead) * c.Elect.Interval, safety: o.ESP.Safety(), state: ESPStatusFile(c.StateDir),
		active: active, known: map[xfrm.SAID]xfrm.SA{}, rates: map[maps.SAKey]espRate{}, done: make(chan struct{})}
	if e.fstr == "" {
		e.fstr = "all"
	}
	if len(c.Elect.Addrs) == 0 {
		e.detect = 0
	}
	e.source = "loading"
	ctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	go e.run(ctx, o)
	return e, nil
}

// startSource loads the replay tracer on esp_sa and the sync's rings:
// fexit, else kprobes, else none (the aevents source), as the options
// ask, and pauses it on the standby. It says which in the log and the
// status. It runs on the ESP side's goroutine, not in the daemon's
// start: the verifier takes its time over the tracer's bitmap copy
// (seconds under emulation), and the datapath serves meanwhile.
func (e *espd) startSource(o loader.Options) {
	start := time.Now()
	t, source, why, err := e.loadTracer(o)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.trace, e.source, e.why = t, source, why
	switch {
	case err != nil:
		e.log.Error("esp: the replay tracer asked for does not run; replay state from XFRM aevents (NEWAE on the kernel's threshold and timer)", "err", err)
	case t == nil && why == "--esp-source aevents":
		e.log.Info("esp: replay state from XFRM aevents (NEWAE on the kernel's threshold and timer)", "why", why)
	case t == nil:
		e.log.Warn("esp: the replay tracer does not run on this kernel; replay state from XFRM aevents (NEWAE on the kernel's threshold and timer: coarser)", "why", why)
	default:
		e.log.Info("esp: replay tracer attached: changed SAs are copied into esp_sa and marked for the sync", "source", source,
			"paused", !e.active, "took", time.Since(start).Round(time.Millisecond))
	}
	if perr := e.pause(!e.active); perr != nil {
		e.log.Error("esp: tracer", "err", perr)
	}
	e.writeStatusLocked(time.Now())
}

func (e *espd) loadTracer(o loader.Options) (t *loader.ESPTrace, source, why string, err error) {
	want := o.ESP.Source
	if want == loader.ESPSourceAEvents {
		return nil, loader.ESPSourceAEvents, "--esp-source aevents", nil
	}
	fail := func(err error) (*loader.ESPTrace, string, string, error) {
		if want != "" && want != "auto" {
			return nil, loader.ESPSourceAEvents, err.Error(), fmt.Errorf("--esp-source %s: %w (auto falls back by itself)", want, err)
		}
		return nil, loader.ESPSourceAEvents, err.Error(), nil
	}
	ino, err := netnsInode()
	if err != nil {
		return fail(err)
	}
	ms := map[string]*ebpf.Map{bpf.EspMapEspSa: e.sam.SA}
	sm, err := maps.OpenSyncMaps(o.Pins)
	if err != nil {
		return fail(fmt.Errorf("the tracer marks esp_sa for the sync: %w", err))
	}
	defer sm.Close()
	ms[bpf.SyncMapSyncRings], ms[bpf.SyncMapSyncEpoch], ms[bpf.SyncMapSyncOverflow] = sm.Rings, sm.Epoch, sm.Overflow
	mode := want
	if mode == "auto" {
		mode = ""
	}
	t, err = loader.LoadESPTrace(loader.ESPTraceOptions{Mode: mode, NetNS: ino, Maps: ms})
	if err != nil {
		return fail(err)
	}
	if t.Mode == loader.ESPSourceKprobe && want != loader.ESPSourceKprobe {
		why = "the kernel refuses fexit"
	}
	return t, t.Mode, why, nil
}

// netnsInode is the inode number of the daemon's network namespace: the
// tracer follows only its SAs.
func netnsInode() (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("network namespace: %w", err)
	}
	return uint32(st.Ino), nil
}

func (e *espd) pause(paused bool) error {
	if e.trace == nil {
		return nil
	}
	return e.trace.Pause(paused)
}

func (e *espd) closeSource() {
	if e.trace != nil {
		e.trace.Close()
		e.trace = nil
	}
	e.sam.Close()
}

// run follows the kernel's SAs until ctx ends (restarting the follower
// after an error) and, every 2 s, samples the standby's replicated
// outbound rates and rewrites the status.
func (e *espd) run(ctx context.Context, o loader.Options) {
	var wg sync.WaitGroup
	defer close(e.done)
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			e.sample(time.Now())
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	e.startSource(o)
	if ctx.Err() != nil {
		return
	}
	e.mu.Lock()
	aevents := e.source == loader.ESPSourceAEvents
	e.mu.Unlock()
	for ctx.Err() == nil {
		e.mu.Lock()
		e.known, e.listed = map[xfrm.SAID]xfrm.SA{}, false
		e.mu.Unlock()
		listed := func() {
			e.mu.Lock()
			e.listed = true
			e.mu.Unlock()
		}
		err := xfrm.Follow(ctx, 0, e.filter, aevents, xfrm.Handler{Put: e.put, New: e.replace, Replay: e.replay, Delete: e.delete, Listed: listed})
		if err == nil || ctx.Err() != nil {
			return
		}
		e.log.Warn("esp: following the kernel's SAs; again in 1 s", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// stateOf is an xfrm SA's esp_sa snapshot.
func stateOf(sa xfrm.SA) (maps.SAState, error) {
	s := maps.SAState{Dst: sa.Dst, SPI: sa.SPI, Encap: sa.Encap, ESN: sa.ESN}
	r := sa.Replay
	if r.Legacy {
		var bm uint32
		if len(r.Bitmap) > 0 {
			bm = r.Bitmap[0]
		}
		if err := s.FromLegacy(r.Seq, r.OSeq, bm, r.Window); err != nil {
			return s, err
		}
		return s, s.Validate()
	}
	s.Seq, s.SeqHi, s.OSeq, s.OSeqHi, s.Window = r.Seq, r.SeqHi, r.OSeq, r.OSeqHi, r.Window
	s.Bitmap = slices.Clone(r.Bitmap)
	return s, s.Validate()
}

func idKey(id xfrm.SAID) xfrm.SAID { return xfrm.SAID{Dst: id.Dst, SPI: id.SPI, Proto: id.Proto} }

// put: the dump, UPDSA, or (aevents) NEWAE with the replay state only.
func (e *espd) put(sa xfrm.SA) { e.write(sa, false) }

// replace: NEWSA, a new kernel SA.
func (e *espd) replace(sa xfrm.SA) { e.write(sa, true) }

func (e *espd) write(sa xfrm.SA, replace bool) {
	if sa.Proto != 50 {
		return // esp_sa holds ESP SAs only (proto=any in the filter)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := idKey(sa.SAID)
	if sa.Replay.Legacy && sa.Replay.Window == 0 {
		sa.Replay.Window = e.known[k].Replay.Window
	}
	e.known[k] = sa
	if !e.active {
		return // the standby: the applier writes esp_sa
	}
	e.putLocked(sa, replace)
}

// replay: a NEWAE (the aevents source) of a followed SA: its new replay
// state; the SA's flags and transport are the ones followed.
func (e *espd) replay(id xfrm.SAID, r xfrm.Replay) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := idKey(id)
	sa, ok := e.known[k]
	if !ok {
		return
	}
	if r.Legacy && r.Window == 0 {
		r.Window = sa.Replay.Window
	}
	sa.Replay = r
	e.known[k] = sa
	if e.active {
		e.putLocked(sa, false)
	}
}

func (e *espd) putLocked(sa xfrm.SA, replace bool) {
	s, err := stateOf(sa)
	if err != nil {
		e.log.Warn("esp: SA not synced", "sa", sa.SAID.String(), "err", err)
		return
	}
	if replace {
		err = e.sam.ReplaceSA(s)
	} else {
		_, err = e.sam.PutSA(s)
	}
	if err != nil {
		e.log.Warn("esp: put SA", "err", err)
		return
	}
}

// delete: DELSA or a hard expire.
func (e *espd) delete(id xfrm.SAID) {
	if id.Proto != 50 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := idKey(id)
	prev, ok := e.known[k]
	delete(e.known, k)
	if !e.active {
		return // the owner's delete replicates
	}
	if err := e.sam.DeleteSA(id.Dst, id.SPI, ok && prev.Encap); err != nil {
		e.log.Warn("esp: delete SA", "err", err)
	}
}

// claim installs the replicated state into this host's kernel SAs: the
// election calls it at the start of a takeover, before the VIPs are
// served. Nothing when this host already owns the state.
func (e *espd) claim() {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.active || e.claimed {
		return
	}
	e.claimLocked()
}

// claimLocked resumes every SA in esp_sa (xfrm.Conn.Resume: inbound at
// the synced window, outbound at the synced sequence plus the margin),
// naming each one this host's kernel lacks.
func (e *espd) claimLocked() {
	start := time.Now()
	e.claimed = true
	tk := &ESPTakeover{At: start}
	defer func() {
		tk.Took = time.Since(start)
		e.last = tk
		e.writeStatusLocked(time.Now())
	}()
	sas, err := e.sam.ListSAs()
	if err != nil {
		e.log.Error("esp takeover: read the replicated SAs; the kernel's SAs keep their own state", "err", err)
		return
	}
	conn, err := xfrm.Dial(0)
	if err != nil {
		e.log.Error("esp takeover: the kernel's SAs keep their own state", "err", err)
		return
	}
	defer conn.Close()
	tk.SAs = len(sas)
	e.missing = nil
	for _, s := range sas {
		id := xfrm.SAID{Dst: s.Dst, SPI: s.SPI, Proto: 50}
		legacy := false
		if k, ok := e.known[id]; ok {
			id.Mark, legacy = k.Mark, k.Replay.Legacy
		}
		margin := xfrm.Margin(e.rates[s.Key()].rate, e.sync, e.detect, e.safety)
		next, err := conn.Resume(id, replayOf(s, legacy), margin, s.ESN)
		switch {
		case errors.Is(err, xfrm.ErrNoSA):
			tk.Missing++
			e.missing = append(e.missing, ESPMissing{Dst: s.Dst.String(), SPI: fmt.Sprintf("0x%08x", s.SPI)})
			e.log.Warn("esp takeover: a synced SA is missing on this host: its traffic cannot be resumed (install it here too, with the same SPI and keys, as an HA IKE daemon does)",
				"dst", s.Dst.String(), "spi", fmt.Sprintf("0x%08x", s.SPI))
		case err != nil:
			tk.Failed++
			e.log.Error("esp takeover: resume SA (what could be resumed was installed)", "dst", s.Dst.String(), "spi", fmt.Sprintf("0x%08x", s.SPI), "err", err)
		default:
			tk.Resumed++
			e.log.Debug("esp takeover: resumed", "dst", s.Dst.String(), "spi", fmt.Sprintf("0x%08x", s.SPI),
				"top", next.Top(), "oseq", next.OTop(), "synced_oseq", s.OTop(), "margin", margin, "rate", e.rates[s.Key()].rate)
		}
	}
	e.log.Info("esp takeover: installed the replicated replay state into the kernel's SAs", "sas", tk.SAs, "resumed", tk.Resumed,
		"missing", tk.Missing, "failed", tk.Failed, "took", time.Since(start).Round(time.Microsecond))
}

// replayOf is the synced state as XFRM takes it: the ring bitmap, or
// for a legacy SA the 32-bit bitmap whose bit d says top-d arrived.
func replayOf(s maps.SAState, legacy bool) xfrm.Replay {
	r := xfrm.Replay{Seq: s.Seq, SeqHi: s.SeqHi, OSeq: s.OSeq, OSeqHi: s.OSeqHi, Window: s.Window, Bitmap: slices.Clone(s.Bitmap), Legacy: legacy}
	if legacy {
		var bm uint32
		for d := uint32(0); d < s.Window && d < 32; d++ {
			if s.Bit(d) {
				bm |= 1 << d
			}
		}
		r.Bitmap = []uint32{bm}
	}
	return r
}

// setActive follows the role the election (or the sync role) gives this
// host. Becoming the owner: the replicated state is installed (unless
// the takeover did it already), the tracer resumes, and every selected
// kernel SA is put again (never backwards: the kernel now holds at
// least the synced state). Becoming the standby: the tracer pauses.
func (e *espd) setActive(active bool) {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.active == active {
		return
	}
	if active && !e.claimed {
		e.claimLocked()
	}
	e.active, e.claimed = active, false
	if err := e.pause(!active); err != nil {
		e.log.Error("esp: tracer", "err", err)
	}
	e.log.Info("esp: role", "owner", active, "tracer_paused", e.trace != nil && !active)
	if !active {
		return
	}
	conn, err := xfrm.Dial(0)
	if err != nil {
		e.log.Error("esp: re-read the kernel's SAs", "err", err)
		return
	}
	defer conn.Close()
	sas, err := conn.List(e.filter)
	if err != nil {
		e.log.Error("esp: re-read the kernel's SAs", "err", err)
		return
	}
	for _, sa := range sas {
		if sa.Proto != 50 {
			continue
		}
		e.known[idKey(sa.SAID)] = sa
		e.putLocked(sa, false)
	}
	e.writeStatusLocked(time.Now())
}

// sample: on the standby, the owner's outbound rates from the replicated
// oseq (for the takeover's margin) and the synced SAs this kernel lacks,
// from one read of esp_sa (a standby-only cost: 10,000 SAs are 10,000
// lookups every 2 s); then the status file.
func (e *espd) sample(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.active {
		sas, err := e.sam.ListSAs()
		if err != nil {
			e.log.Warn("esp: read esp_sa", "err", err)
		}
		seen := map[maps.SAKey]bool{}
		var missing []ESPMissing
		for _, s := range sas {
			k := s.Key()
			seen[k] = true
			r, ok := e.rates[k]
			if ok && now.After(r.at) && s.OTop() >= r.otop {
				rate := float64(s.OTop()-r.otop) / now.Sub(r.at).Seconds()
				r.rate = max(rate, r.rate/2)
			}
			r.otop, r.at = s.OTop(), now
			e.rates[k] = r
			if _, ok := e.known[xfrm.SAID{Dst: s.Dst, SPI: s.SPI, Proto: 50}]; !ok && e.listed {
				missing = append(missing, ESPMissing{Dst: s.Dst.String(), SPI: fmt.Sprintf("0x%08x", s.SPI)})
			}
		}
		for k := range e.rates {
			if !seen[k] {
				delete(e.rates, k)
			}
		}
		if len(missing) != len(e.missing) {
			if len(missing) > 0 {
				e.log.Warn("esp: synced SAs missing on this standby: a takeover cannot resume them (tandem sa list names them)", "count", len(missing))
			}
		}
		e.missing, e.synced = missing, len(sas)
	}
	e.writeStatusLocked(now)
}

func (e *espd) writeStatusLocked(now time.Time) {
	if e.stopped {
		return
	}
	st := ESPStatus{PID: os.Getpid(), Source: e.source, SourceWhy: e.why, Filter: e.fstr, Active: e.active,
		Paused: e.trace != nil && !e.active, Kernel: len(e.known), Missing: e.missing, LastTakeover: e.last, Updated: now}
	if st.Missing == nil {
		st.Missing = []ESPMissing{}
	}
	st.Synced = e.synced
	if e.active {
		st.Synced = len(e.known) // the owner puts every selected SA
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return
	}
	tmp := e.state + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		e.log.Warn("esp: status", "err", err)
		return
	}
	os.Rename(tmp, e.state)
}

func (e *espd) close() {
	if e == nil {
		return
	}
	e.stop()
	<-e.done
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
	e.closeSource()
}
