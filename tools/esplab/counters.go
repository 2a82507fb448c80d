package esplab

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/xfrm"
)

// XfrmStat reads h's /proc/net/xfrm_stat (CONFIG_XFRM_STATISTICS): the
// namespace's XFRM drop counters by name, e.g. XfrmInStateSeqError (a
// replay or a number below the window), XfrmInStateProtoError (a bad ICV),
// XfrmInNoStates (no SA for the SPI). A kernel without the statistics
// has no such file: the error says so.
func XfrmStat(h *lab.Host) (map[string]uint64, error) {
	var out []byte
	if err := h.Do(func() (err error) {
		// thread-self: /proc/self/net is the main thread's namespace.
		out, err = os.ReadFile("/proc/thread-self/net/xfrm_stat")
		return err
	}); err != nil {
		return nil, fmt.Errorf("esplab: %s: xfrm_stat (needs CONFIG_XFRM_STATISTICS): %w", h.Name, err)
	}
	return parseXfrmStat(string(out))
}

func parseXfrmStat(s string) (map[string]uint64, error) {
	m := map[string]uint64{}
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("esplab: xfrm_stat line %q: %w", line, err)
		}
		m[f[0]] = v
	}
	return m, nil
}

// SA reads one SA of h with its replay state and the kernel's per-SA
// drop counters (xfrm.Stats: Replay, ReplayWindow, IntegrityFailed, as
// `ip -s xfrm state` prints them), over XFRM netlink.
func SA(h *lab.Host, id xfrm.SAID) (xfrm.SA, error) {
	sas, err := SAs(h)
	if err != nil {
		return xfrm.SA{}, err
	}
	for _, sa := range sas {
		if sa.Dst == id.Dst && sa.SPI == id.SPI && sa.Proto == id.Proto {
			return sa, nil
		}
	}
	return xfrm.SA{}, fmt.Errorf("esplab: %s has no SA %v: %w", h.Name, id, xfrm.ErrNoSA)
}

// SAs lists every SA of h (a full dump).
func SAs(h *lab.Host) ([]xfrm.SA, error) {
	fd, _, err := NetNS(h)
	if err != nil {
		return nil, err
	}
	defer closeFD(fd)
	c, err := xfrm.Dial(fd)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.List(nil)
}

// Counters is a snapshot of what the kernel of one host counted for one
// SA and for its namespace; Sub gives what moved between two.
type Counters struct {
	Top       uint64 // the SA's inbound window top
	OTop      uint64 // its outbound sequence number
	Replay    uint32 // per SA: replays and numbers below the window
	Window    uint32 // per SA: replay_window errors
	Integrity uint32 // per SA: bad ICVs
	SeqError  uint64 // namespace: XfrmInStateSeqError
	Proto     uint64 // namespace: XfrmInStateProtoError
	NoStates  uint64 // namespace: XfrmInNoStates
}

// Read takes a Counters snapshot of SA id on h.
func Read(h *lab.Host, id xfrm.SAID) (Counters, error) {
	sa, err := SA(h, id)
	if err != nil {
		return Counters{}, err
	}
	c := Counters{Top: sa.Replay.Top(), OTop: sa.Replay.OTop(), Replay: sa.Stats.Replay, Window: sa.Stats.ReplayWindow, Integrity: sa.Stats.IntegrityFailed}
	if st, err := XfrmStat(h); err == nil {
		c.SeqError, c.Proto, c.NoStates = st["XfrmInStateSeqError"], st["XfrmInStateProtoError"], st["XfrmInNoStates"]
	}
	return c, nil
}

// Sub is what moved from b to c (tops as they are in c).
func (c Counters) Sub(b Counters) Counters {
	return Counters{Top: c.Top, OTop: c.OTop, Replay: c.Replay - b.Replay, Window: c.Window - b.Window,
		Integrity: c.Integrity - b.Integrity, SeqError: c.SeqError - b.SeqError, Proto: c.Proto - b.Proto, NoStates: c.NoStates - b.NoStates}
}
