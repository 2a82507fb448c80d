package xfrm

import (
	"context"
	"fmt"
)

// Handler receives what a Follower sees of the selected SAs.
type Handler struct {
	// Put: an SA appeared (the initial dump, NEWSA: a rekey's new SPI),
	// changed (UPDSA) or reported new replay state (a NEWAE aevent: the
	// SA's other fields are then zero but for its id).
	Put func(SA)
	// New, when set, receives NEWSA notifications instead of Put: a new
	// kernel SA (a rekey's new SPI, or an SA deleted and added again
	// under the same SPI), whose state replaces whatever was kept for
	// its key rather than merging with it.
	New func(SA)
	// Replay, when set, receives the replay state of NEWAE notifications
	// (aevents) instead of Put.
	Replay func(SAID, Replay)
	// Listed, when set, is called once every SA of the initial dump has
	// been handed to Put.
	Listed func()
	// Delete: an SA went away (DELSA, a hard EXPIRE: a rekey's old SPI).
	Delete func(SAID)
}

// Follow lists the SAs of namespace netns that f selects, hands each to
// h.Put, then follows their notifications until ctx ends. It subscribes
// before it lists, so nothing that happens in between is missed (an SA
// may be handed over twice; the receiver keeps the newer state).
// aevents also follows XFRM_MSG_NEWAE: the replay-state source of a
// kernel without the tracer's hooks.
func Follow(ctx context.Context, netns int, f *Filter, aevents bool, h Handler) error {
	w, err := Watch(netns, aevents)
	if err != nil {
		return err
	}
	defer w.Close()
	c, err := Dial(netns)
	if err != nil {
		return err
	}
	sas, err := c.List(f)
	c.Close()
	if err != nil {
		return err
	}
	selected := map[SAID]bool{}
	for _, sa := range sas {
		selected[sa.key()] = true
		h.Put(sa)
	}
	if h.Listed != nil {
		h.Listed()
	}
	stop := context.AfterFunc(ctx, func() { w.Close() })
	defer stop()
	for {
		evs, err := w.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("follow xfrm SAs: %w", err)
		}
		for _, ev := range evs {
			switch ev.Type {
			case MsgNewSA, MsgUpdSA:
				if f.Match(ev.SA) {
					selected[ev.SA.key()] = true
					if ev.Type == MsgNewSA && h.New != nil {
						h.New(ev.SA)
					} else {
						h.Put(ev.SA)
					}
				}
			case MsgDelSA, MsgExpire:
				// A soft expire only warns the IKE daemon to rekey.
				if ev.Type == MsgExpire && !ev.Hard {
					continue
				}
				if selected[ev.SA.key()] {
					delete(selected, ev.SA.key())
					h.Delete(ev.SA.SAID)
				}
			case MsgNewAE:
				if ev.AE.HasReplay && selected[ev.AE.key()] {
					if h.Replay != nil {
						h.Replay(ev.AE.SAID, ev.AE.Replay)
						continue
					}
					sa := SA{SAID: ev.AE.SAID, Src: ev.AE.Src, ReqID: ev.AE.ReqID, Replay: ev.AE.Replay}
					h.Put(sa)
				}
			}
		}
	}
}

// key is the SA's identity without its mark (notifications and dumps
// agree on destination, SPI and protocol).
func (id SAID) key() SAID { return SAID{Dst: id.Dst, SPI: id.SPI, Proto: id.Proto} }
