package syncer

import "fmt"

// Resync brings the standby at the other end of s up to date in the
// cheapest safe mode, chosen from the primary's metadata, its journal and
// what the standby said in its hello, and returns the mode and why. The
// caller then streams live ticks.
func Resync(meta Meta, j *Journal, e *Engine, s *Sender) (Mode, string, error) {
	return ResyncProgress(meta, j, e, s, nil)
}

// ResyncProgress is Resync calling progress with the mode, why, and the
// deltas sent so far: once when the mode is chosen and then every 65536.
func ResyncProgress(meta Meta, j *Journal, e *Engine, s *Sender, progress func(m Mode, why string, sent int)) (Mode, string, error) {
	st := Standby{Node: s.Peer.Node, LastApplied: s.Peer.LastApplied, PeerGeneration: s.Peer.PeerGeneration, MapsEmpty: s.Peer.Flags&HelloMapsEmpty != 0}
	meta.LastSent = e.Seq()
	mode, why := ChooseMode(meta, j.Oldest(), st)
	sent := 0
	if progress == nil {
		progress = func(Mode, string, int) {}
	}
	progress(mode, why, 0)
	emit := func(d Delta) error {
		j.Add(d)
		if sent++; sent%65536 == 0 {
			progress(mode, why, sent)
		}
		return s.Send(d)
	}
	switch mode {
	case ModeAligned:
		return mode, why, nil
	case ModeJournal:
		ds, ok := j.From(st.LastApplied + 1)
		if !ok {
			return mode, why, fmt.Errorf("journal no longer holds %d", st.LastApplied+1)
		}
		for _, d := range ds {
			if err := s.Send(d); err != nil {
				return mode, why, err
			}
			if sent++; sent%65536 == 0 {
				progress(mode, why, sent)
			}
		}
	case ModeIncremental, ModeFull:
		if err := e.Marker(OpResync, meta.Generation, emit); err != nil {
			return mode, why, err
		}
		var err error
		if mode == ModeFull {
			err = e.Full(emit)
		} else {
			_, err = e.Incremental(st.LastApplied, emit)
		}
		if err != nil {
			return mode, why, err
		}
		if err := e.Marker(OpResyncDone, meta.Generation, emit); err != nil {
			return mode, why, err
		}
	}
	return mode, why, s.Flush()
}
