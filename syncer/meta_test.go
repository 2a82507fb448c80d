package syncer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMetaSaveLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "meta.json")
	m, err := LoadMeta(path)
	if err != nil || m.Node == ([16]byte{}) {
		t.Fatalf("missing file: %+v %v", m, err)
	}
	m.Generation, m.LastSent, m.LastApplied = 3, 100, 90
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadMeta(path)
	if err != nil || got != m {
		t.Fatalf("got %+v %v, want %+v", got, err, m)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

// TestMetaCorrupt: a corrupt file is reported, never trusted, never fatal:
// the host starts as unknown, which forces a full resync.
func TestMetaCorrupt(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":    "\x00\x01not json",
		"truncated":  `{"node": [1,2,3`,
		"no node":    `{"generation": 5, "last_sent": 9}`,
		"wrong type": `{"node": "abc"}`,
	} {
		path := filepath.Join(t.TempDir(), "meta.json")
		os.WriteFile(path, []byte(content), 0o644)
		m, err := LoadMeta(path)
		if err == nil || !strings.Contains(err.Error(), "unknown host") {
			t.Errorf("%s: error %v", name, err)
		}
		if m.Node == ([16]byte{}) || m.Generation != 0 || m.LastSent != 0 || m.LastApplied != 0 {
			t.Errorf("%s: trusted corrupt state: %+v", name, m)
		}
		mode, _ := ChooseMode(Meta{Generation: 4, LastSent: 50}, 10, Standby{LastApplied: m.LastApplied, PeerGeneration: m.PeerGeneration})
		if mode != ModeFull {
			t.Errorf("%s: a standby with corrupt metadata gets %s, want full", name, mode)
		}
	}
}

func TestChooseMode(t *testing.T) {
	p := Meta{Generation: 7, LastSent: 1000}
	cases := []struct {
		name        string
		journalFrom uint64
		s           Standby
		want        Mode
	}{
		{"aligned", 900, Standby{LastApplied: 1000, PeerGeneration: 7}, ModeAligned},
		{"restarted mid-stream", 900, Standby{LastApplied: 950, PeerGeneration: 7}, ModeJournal},
		{"just at the journal's start", 900, Standby{LastApplied: 899, PeerGeneration: 7}, ModeJournal},
		{"down past the journal", 900, Standby{LastApplied: 500, PeerGeneration: 7}, ModeIncremental},
		{"no journal at all", 0, Standby{LastApplied: 500, PeerGeneration: 7}, ModeIncremental},
		{"maps wiped", 900, Standby{LastApplied: 950, PeerGeneration: 7, MapsEmpty: true}, ModeFull},
		{"primary's generation changed", 900, Standby{LastApplied: 1000, PeerGeneration: 6}, ModeFull},
		{"unknown peer", 900, Standby{}, ModeFull},
		{"standby ahead of the primary", 900, Standby{LastApplied: 2000, PeerGeneration: 7}, ModeFull},
	}
	for _, c := range cases {
		got, why := ChooseMode(p, c.journalFrom, c.s)
		if got != c.want || why == "" {
			t.Errorf("%s: %s (%s), want %s", c.name, got, why, c.want)
		}
	}
}
