package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
)

// The ESP pre-filter's SA replay state (bpf/esp.c, esp_sa; docs/sa.md).
type (
	SAKey = bpf.EspSaKey
	SAVal = bpf.EspSaVal
)

const (
	// SAWindowMax is the largest replay window the XDP stage judges; an
	// SA with a larger one is not put (the kernel alone checks it).
	SAWindowMax = 4096
	saBmpWords  = SAWindowMax / 32

	ipprotoESP = 50
)

// SAState is one inbound SA's replay state as the kernel verified it, and
// its outbound sequence: what XFRM reports in XFRMA_REPLAY_ESN_VAL
// (struct xfrm_replay_state_esn: seq, seq_hi, oseq, oseq_hi,
// replay_window, bmp) or, for an SA without one, XFRMA_REPLAY_VAL
// (FromLegacy). Bitmap is the kernel's bmp as it is: a ring of bits in
// which sequence number s has bit (s-1) % Window (bit b of word b/32).
type SAState struct {
	Dst   netip.Addr // the SA's destination (this host's address)
	SPI   uint32     // host order
	Encap bool       // ESP in UDP 4500 (RFC 3948), else ESP over IP
	ESN   bool       // extended sequence numbers (XFRM_STATE_ESN)

	Seq, SeqHi   uint32 // highest authenticated inbound sequence number
	Window       uint32 // replay window, packets
	Bitmap       []uint32
	OSeq, OSeqHi uint32 // outbound sequence number (last sent)

	// Counted by the XDP stage (read only).
	DropReplay, DropStale, Passed uint64
	// Version is the entry's sync version (read only).
	Version uint64
}

// Top is the highest authenticated inbound sequence number, 64 bits.
func (s SAState) Top() uint64 { return uint64(s.SeqHi)<<32 | uint64(s.Seq) }

// OTop is the outbound sequence number, 64 bits.
func (s SAState) OTop() uint64 { return uint64(s.OSeqHi)<<32 | uint64(s.OSeq) }

// FromLegacy fills the inbound window from a kernel SA without
// XFRMA_REPLAY_ESN_VAL (struct xfrm_replay_state: seq, oseq, a 32-bit
// bitmap whose bit d says top-d arrived; window at most 32): the same
// bits, placed in the ring layout.
func (s *SAState) FromLegacy(seq, oseq, bitmap, window uint32) error {
	if window > 32 {
		return fmt.Errorf("legacy replay window %d: at most 32 (larger windows come as XFRMA_REPLAY_ESN_VAL)", window)
	}
	s.Seq, s.SeqHi, s.OSeq, s.OSeqHi, s.Window, s.ESN = seq, 0, oseq, 0, window, false
	s.Bitmap = make([]uint32, 1)
	for d := uint32(0); d < window && d < seq; d++ {
		if bitmap&(1<<d) != 0 {
			s.SetBit(seq - d)
		}
	}
	return nil
}

// ringBit is the ring position of the sequence number top-diff, as the
// kernel computes it (xfrm_replay_check_bmp).
func ringBit(top, window, diff uint32) uint32 {
	pos := (top - 1) % window
	if pos >= diff {
		return pos - diff
	}
	return window - (diff - pos)
}

// SetBit records that low-32-bit sequence number seq (in the window
// below or at Seq) arrived, in the kernel's layout. For tests and for
// converting other representations.
func (s *SAState) SetBit(seq uint32) {
	b := ringBit(s.Seq, s.Window, s.Seq-seq)
	for uint32(len(s.Bitmap)) <= b/32 {
		s.Bitmap = append(s.Bitmap, 0)
	}
	s.Bitmap[b/32] |= 1 << (b % 32)
}

// Bit reports whether the bit of seq = Seq-diff is set.
func (s SAState) Bit(diff uint32) bool {
	if s.Window == 0 || diff >= s.Window {
		return false
	}
	b := ringBit(s.Seq, s.Window, diff)
	return int(b/32) < len(s.Bitmap) && s.Bitmap[b/32]&(1<<(b%32)) != 0
}

// Validate checks what the stage needs: an address, a window it judges,
// a bitmap that fits it.
func (s SAState) Validate() error {
	if !s.Dst.IsValid() {
		return errors.New("SA without a destination address")
	}
	if s.Window > SAWindowMax {
		return fmt.Errorf("SA %s spi 0x%08x: replay window %d, the XDP filter judges at most %d (leave it to the kernel)", s.Dst, s.SPI, s.Window, SAWindowMax)
	}
	if want := int(s.Window+31) / 32; len(s.Bitmap) > saBmpWords || len(s.Bitmap) < want && len(s.Bitmap) != 0 {
		return fmt.Errorf("SA %s spi 0x%08x: %d bitmap words for a window of %d (want %d)", s.Dst, s.SPI, len(s.Bitmap), s.Window, want)
	}
	return nil
}

// Key is the SA's esp_sa key.
func (s SAState) Key() SAKey {
	k := SAKey{Daddr: s.Dst.As16(), Spi: htonl(s.SPI), Proto: ipprotoESP}
	if s.Encap {
		k.Encap = uint8(bpf.EspSaEncapSA_ENCAP_UDP)
	}
	return k
}

// Val is the SA's esp_sa value (sync header and counters zero).
func (s SAState) Val() SAVal {
	v := SAVal{Seq: s.Seq, SeqHi: s.SeqHi, Window: s.Window, Oseq: s.OSeq, OseqHi: s.OSeqHi}
	if s.ESN {
		v.Flags = uint32(bpf.EspSaFlagsSA_F_ESN)
	}
	copy(v.Bmp[:], s.Bitmap)
	return v
}

// SAStateOf converts an esp_sa entry back.
func SAStateOf(k SAKey, v SAVal) SAState {
	s := SAState{
		Dst: addrOf(k.Daddr), SPI: htonl(k.Spi), Encap: k.Encap == uint8(bpf.EspSaEncapSA_ENCAP_UDP),
		ESN: v.Flags&uint32(bpf.EspSaFlagsSA_F_ESN) != 0, Seq: v.Seq, SeqHi: v.SeqHi, Window: v.Window,
		OSeq: v.Oseq, OSeqHi: v.OseqHi, DropReplay: v.DropReplay, DropStale: v.DropStale, Passed: v.Passed,
		Version: v.Sync.Version,
	}
	n := (int(v.Window) + 31) / 32
	s.Bitmap = append([]uint32(nil), v.Bmp[:min(n, len(v.Bmp))]...)
	return s
}

func htonl(v uint32) uint32 { return v>>24 | v>>8&0xff00 | v<<8&0xff0000 | v<<24 }

// SAMaps are the ESP feature's maps and its write programs.
type SAMaps struct {
	SA    *ebpf.Map     // esp_sa
	Args  *ebpf.Map     // esp_sa_args
	Stats *ebpf.Map     // esp_stats
	Put   *ebpf.Program // esp_sa_put
	Del   *ebpf.Program // esp_sa_del
}

// SAMapsOf takes the maps and programs of a loaded esp object.
func SAMapsOf(o *bpf.EspObjects) *SAMaps {
	return &SAMaps{SA: o.EspSa, Args: o.EspSaArgs, Stats: o.EspStats, Put: o.EspSaPut, Del: o.EspSaDel}
}

// ErrNoESP: the ESP feature is not loaded under the root.
var ErrNoESP = errors.New("the ESP filter is not loaded (tandem up --esp-iface IFACE)")

// OpenSAMaps opens the pinned maps and programs under pins.
func OpenSAMaps(pins Pins) (*SAMaps, error) {
	m := &SAMaps{}
	for _, f := range []struct {
		name string
		dst  **ebpf.Map
	}{{bpf.EspMapEspSa, &m.SA}, {bpf.EspMapEspSaArgs, &m.Args}, {bpf.EspMapEspStats, &m.Stats}} {
		mp, err := ebpf.LoadPinnedMap(pins.Map(f.name), nil)
		if errors.Is(err, os.ErrNotExist) {
			m.Close()
			return nil, ErrNoESP
		}
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open %s: %w", pins.Map(f.name), err)
		}
		*f.dst = mp
	}
	for _, f := range []struct {
		name string
		dst  **ebpf.Program
	}{{bpf.EspProgEspSaPut, &m.Put}, {bpf.EspProgEspSaDel, &m.Del}} {
		p, err := ebpf.LoadPinnedProgram(pins.Prog(f.name), nil)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open %s: %w (tandem up loads it)", pins.Prog(f.name), err)
		}
		*f.dst = p
	}
	return m, nil
}

// Close closes what OpenSAMaps opened.
func (m *SAMaps) Close() {
	for _, c := range []interface{ Close() error }{m.SA, m.Args, m.Stats, m.Put, m.Del} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
}

func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *ebpf.Map:
		return v == nil
	case *ebpf.Program:
		return v == nil
	}
	return false
}

// SAPutResult says what PutSA did.
type SAPutResult = bpf.EspSaPutResult

const (
	SAPutNew       = bpf.EspSaPutResultSA_PUT_NEW
	SAPutAdvanced  = bpf.EspSaPutResultSA_PUT_ADVANCED
	SAPutUnchanged = bpf.EspSaPutResultSA_PUT_UNCHANGED
	SAPutReplaced  = bpf.EspSaPutResultSA_PUT_REPLACED
)

// PutSA writes a kernel-verified snapshot. It goes through esp_sa_put,
// which never moves the SA backwards (an older snapshot changes nothing;
// the same top adds bits; the outbound sequence only rises) and marks
// what changed for the state sync: one path for every write, so the
// standby gets user-space writes as it gets the programs'. Callers are
// serialised (one args slot): the daemon's SA follower is the one writer.
func (m *SAMaps) PutSA(s SAState) (SAPutResult, error) { return m.put(s, false) }

func (m *SAMaps) put(s SAState, replace bool) (SAPutResult, error) {
	if err := s.Validate(); err != nil {
		return 0, err
	}
	a := bpf.EspSaPut{Key: s.Key(), Val: s.Val()}
	if replace {
		a.Val.Flags |= uint32(bpf.EspSaFlagsSA_F_REPLACE)
	}
	if err := m.Args.Put(uint32(0), &a); err != nil {
		return 0, fmt.Errorf("put SA %s spi 0x%08x: %w", s.Dst, s.SPI, err)
	}
	ret, err := m.Put.Run(&ebpf.RunOptions{})
	if err != nil {
		return 0, fmt.Errorf("put SA %s spi 0x%08x: run esp_sa_put: %w", s.Dst, s.SPI, err)
	}
	switch r := bpf.EspSaPutResult(ret); r {
	case SAPutNew, SAPutAdvanced, SAPutUnchanged, SAPutReplaced:
		return r, nil
	case bpf.EspSaPutResultSA_PUT_EFAIL:
		return 0, fmt.Errorf("put SA %s spi 0x%08x: esp_sa is full (%d SAs)", s.Dst, s.SPI, m.SA.MaxEntries())
	default:
		return 0, fmt.Errorf("put SA %s spi 0x%08x: esp_sa_put refused it (%d)", s.Dst, s.SPI, int32(ret))
	}
}

// ReplaceSA writes the snapshot of a new kernel SA (XFRM_MSG_NEWSA, or
// one found by a dump that esp_sa holds under the same key with a higher
// top: deleted and added again with the same SPI while nobody watched)
// whole, whatever the entry held: PutSA would keep the old SA's higher
// window, and the stage would drop the new SA's first packets. Marked for
// the sync like PutSA.
func (m *SAMaps) ReplaceSA(s SAState) error {
	_, err := m.put(s, true)
	return err
}

// DeleteSA removes an SA (deleted or rekeyed away in the kernel) and
// records the tombstone for the sync. Deleting an SA that is not there
// is not an error.
func (m *SAMaps) DeleteSA(dst netip.Addr, spi uint32, encap bool) error {
	a := bpf.EspSaPut{Key: SAState{Dst: dst, SPI: spi, Encap: encap}.Key()}
	if err := m.Args.Put(uint32(0), &a); err != nil {
		return fmt.Errorf("delete SA %s spi 0x%08x: %w", dst, spi, err)
	}
	if _, err := m.Del.Run(&ebpf.RunOptions{}); err != nil {
		return fmt.Errorf("delete SA %s spi 0x%08x: run esp_sa_del: %w", dst, spi, err)
	}
	return nil
}

// GetSA reads one SA; ok false when esp_sa has none.
func (m *SAMaps) GetSA(dst netip.Addr, spi uint32, encap bool) (SAState, bool, error) {
	k := SAState{Dst: dst, SPI: spi, Encap: encap}.Key()
	var v SAVal
	if err := m.SA.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return SAState{}, false, nil
		}
		return SAState{}, false, fmt.Errorf("read SA %s spi 0x%08x: %w", dst, spi, err)
	}
	return SAStateOf(k, v), true, nil
}

// ListSAs reads every SA, by destination then SPI.
func (m *SAMaps) ListSAs() ([]SAState, error) {
	var (
		out []SAState
		k   SAKey
		v   SAVal
	)
	it := m.SA.Iterate()
	for it.Next(&k, &v) {
		out = append(out, SAStateOf(k, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read esp_sa: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Dst.Compare(out[j].Dst); c != 0 {
			return c < 0
		}
		return out[i].SPI < out[j].SPI
	})
	return out, nil
}

// ESPStats sums the stage's global counters over CPUs, by name.
func (m *SAMaps) ESPStats() (map[string]uint64, error) {
	names := map[bpf.EspEspStat]string{
		bpf.EspEspStatESP_STAT_NO_SA: "no_sa", bpf.EspEspStatESP_STAT_PASS: "passed",
		bpf.EspEspStatESP_STAT_REPLAY: "drop_replay", bpf.EspEspStatESP_STAT_STALE: "drop_stale",
		bpf.EspEspStatESP_STAT_UNJUDGED: "unjudged", bpf.EspEspStatESP_STAT_IKE: "ike",
		bpf.EspEspStatESP_STAT_KEEPALIVE: "keepalive", bpf.EspEspStatESP_STAT_SHORT: "short",
	}
	out := map[string]uint64{}
	for id, name := range names {
		var per []uint64
		if err := m.Stats.Lookup(uint32(id), &per); err != nil {
			return nil, fmt.Errorf("read esp_stats: %w", err)
		}
		for _, n := range per {
			out[name] += n
		}
	}
	return out, nil
}
