package syncer

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Meta is the small state a host keeps across restarts to pick the
// cheapest safe resync: who it is, the generation it serves (a new one
// every time a host becomes primary), and where its streams stand.
type Meta struct {
	Node        [16]byte `json:"node"`
	Generation  uint64   `json:"generation"`
	LastSent    uint64   `json:"last_sent"`
	LastApplied uint64   `json:"last_applied"`
	// PeerGeneration is the generation the applied deltas belong to.
	PeerGeneration uint64 `json:"peer_generation"`
}

// LoadMeta reads path. A missing, unreadable or corrupt file gives a fresh
// Meta (a new node id, nothing sent or applied) and the reason, so the
// peer falls back to a full resync instead of trusting garbage.
func LoadMeta(path string) (Meta, error) {
	var m Meta
	data, err := os.ReadFile(path)
	if err == nil {
		if jerr := json.Unmarshal(data, &m); jerr == nil && m.Node != ([16]byte{}) {
			return m, nil
		} else if jerr != nil {
			err = fmt.Errorf("metadata %s is corrupt (%v): starting as an unknown host", path, jerr)
		} else {
			err = fmt.Errorf("metadata %s has no node id: starting as an unknown host", path)
		}
	} else if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	fresh := Meta{}
	if _, rerr := rand.Read(fresh.Node[:]); rerr != nil {
		return fresh, rerr
	}
	return fresh, err
}

// Save writes m atomically: a temporary file, fsynced, renamed over path.
func (m Meta) Save(path string) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, data, true)
}

// writeAtomic replaces path with data so that a reader (or a crash) sees
// the old file or the new one, never a mix; durable asks for an fsync.
func writeAtomic(path string, data []byte, durable bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// Mode is a resync mode.
type Mode string

const (
	ModeAligned     Mode = "aligned"     // nothing to send
	ModeJournal     Mode = "journal"     // replay the journal from the standby's sequence
	ModeIncremental Mode = "incremental" // the entries changed since the standby's checkpoint
	ModeFull        Mode = "full"        // every map, then streaming
)

// Standby is what the primary knows of the standby at connect time.
type Standby struct {
	Node           [16]byte
	LastApplied    uint64
	PeerGeneration uint64 // the generation its applied state came from
	MapsEmpty      bool   // it lost its maps (rebooted, wiped)
}

// ChooseMode picks the cheapest mode that is safe, and says why.
// journalFrom is the oldest sequence the primary's journal still holds.
func ChooseMode(primary Meta, journalFrom uint64, s Standby) (Mode, string) {
	switch {
	case s.PeerGeneration != primary.Generation:
		return ModeFull, fmt.Sprintf("the standby's state is from generation %d, this primary serves %d", s.PeerGeneration, primary.Generation)
	case s.MapsEmpty && primary.LastSent > 0:
		return ModeFull, "the standby lost its maps"
	case s.LastApplied > primary.LastSent:
		return ModeFull, fmt.Sprintf("the standby applied %d, beyond the %d this primary sent: unknown history", s.LastApplied, primary.LastSent)
	case s.LastApplied == primary.LastSent:
		return ModeAligned, "the standby applied everything"
	case journalFrom != 0 && s.LastApplied+1 >= journalFrom:
		return ModeJournal, fmt.Sprintf("the gap %d..%d is in the journal", s.LastApplied+1, primary.LastSent)
	}
	return ModeIncremental, fmt.Sprintf("the gap from %d is older than the journal (from %d)", s.LastApplied+1, journalFrom)
}
