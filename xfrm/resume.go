package xfrm

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// MinMargin is the smallest outbound margin Margin returns: even an SA
// that looked idle may have sent a few packets after the last sync.
const MinMargin = 64

// Margin is how far above the old owner's last synced outbound sequence
// number the new owner starts an SA (docs/sa.md, "Kernel side"):
//
//	margin = ceil(rate × (syncInterval + detection) × safety), at least MinMargin
//
// rate is the SA's measured outbound packet rate (packets/s), syncInterval
// the drain period (how old the synced value can be when the owner
// dies), detection the failover detection time (how long the dead owner
// may have kept sending before the standby took over), safety a factor
// ≥ 1 for bursts above the measured rate.
func Margin(rate float64, syncInterval, detection time.Duration, safety float64) uint64 {
	if safety < 1 {
		safety = 1
	}
	if rate < 0 || math.IsNaN(rate) {
		rate = 0
	}
	m := math.Ceil(rate * (syncInterval + detection).Seconds() * safety)
	if m > math.MaxUint32 {
		m = math.MaxUint32
	}
	return max(uint64(m), MinMargin)
}

// ErrSeqExhausted: the outbound sequence number with its margin passes
// what the SA can send (2^32-1 without ESN): it must be rekeyed.
var ErrSeqExhausted = errors.New("outbound sequence numbers exhausted")

// ErrWindowMismatch: the two hosts' SAs have different replay windows,
// so one's bitmap means nothing to the other.
var ErrWindowMismatch = errors.New("replay windows differ")

// Resume computes the replay state the new owner installs into its
// kernel SA: cur is what its kernel holds now, synced what the old
// owner last replicated, esn whether the SA has extended sequence numbers.
//
// Nothing moves backwards. Inbound, the further ahead of the two wins
// (the same top merges both bitmaps), so replays of what the old owner
// accepted are refused. Outbound, the SA continues at synced + margin
// unless its own counter is already past that.
//
// The two directions are independent, and an error in one (windows that
// differ: ErrWindowMismatch; numbers that run out: ErrSeqExhausted) comes
// with the state to install all the same: the other direction resumed,
// and, run out, the outbound counter at its last number, so the kernel
// refuses to send (it must be rekeyed) rather than send again numbers
// (with seqiv, GCM nonces) the old owner used under the same key.
func Resume(cur, synced Replay, margin uint64, esn bool) (Replay, error) {
	out := cur
	out.Bitmap = append([]uint32(nil), cur.Bitmap...)
	var errs []error
	switch {
	case synced.Window != cur.Window && synced.Top() > 0:
		errs = append(errs, fmt.Errorf("%w: synced %d, kernel %d: inbound left as the kernel has it", ErrWindowMismatch, synced.Window, cur.Window))
	case synced.Top() > cur.Top():
		out.Seq, out.SeqHi = synced.Seq, synced.SeqHi
		for i := range out.Bitmap {
			out.Bitmap[i] = 0
			if i < len(synced.Bitmap) {
				out.Bitmap[i] = synced.Bitmap[i]
			}
		}
	case synced.Top() == cur.Top():
		for i := range out.Bitmap {
			if i < len(synced.Bitmap) {
				out.Bitmap[i] |= synced.Bitmap[i]
			}
		}
	}
	if synced.OTop() > 0 {
		want := synced.OTop() + margin
		limit := uint64(math.MaxUint32)
		if esn {
			limit = math.MaxUint64
		}
		if want < synced.OTop() || want > limit {
			errs = append(errs, fmt.Errorf("%w: last sent %d, margin %d: outbound stopped at %d: rekey the SA", ErrSeqExhausted, synced.OTop(), margin, limit))
			want = limit
		}
		if want > cur.OTop() {
			out.OSeq, out.OSeqHi = uint32(want), uint32(want>>32)
		}
	}
	return out, errors.Join(errs...)
}

// Resume installs synced into the kernel SA id (GETAE, Resume, NEWAE).
// An SA the kernel lacks returns an error wrapping ErrNoSA: the standby
// names it rather than serving without it.
func (c *Conn) Resume(id SAID, synced Replay, margin uint64, esn bool) (Replay, error) {
	ae, err := c.GetAE(id)
	if err != nil {
		return Replay{}, fmt.Errorf("resume %s: %w", id, err)
	}
	if !ae.HasReplay {
		return Replay{}, fmt.Errorf("resume %s: the kernel reported no replay state", id)
	}
	if ae.Replay.Legacy && ae.Replay.Window == 0 {
		ae.Replay.Window = synced.Window // XFRMA_REPLAY_VAL carries no window
	}
	// Resume's errors come with a state to install (see Resume).
	next, rerr := Resume(ae.Replay, synced, margin, esn)
	if err := c.SetReplay(id, next); err != nil {
		return Replay{}, fmt.Errorf("resume %s: %w", id, errors.Join(err, rerr))
	}
	if rerr != nil {
		return next, fmt.Errorf("resume %s: %w", id, rerr)
	}
	return next, nil
}
