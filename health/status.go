package health

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// Sources of the verdict a host uses for a backend.
const (
	SourceOwn   = "own"   // this host's checks: it owns the services (or runs alone)
	SourceOwner = "owner" // the owner's verdict, replicated by the state sync
)

// BackendStatus is one backend's line of the daemon's health status.
type BackendStatus struct {
	Service   netip.AddrPort `json:"service"`
	Backend   netip.AddrPort `json:"backend"`
	Check     string         `json:"check"`
	Up        bool           `json:"up"`     // the verdict in use
	Source    string         `json:"source"` // SourceOwn or SourceOwner
	OwnUp     bool           `json:"own_up"` // this host's checks' verdict
	Checked   time.Time      `json:"last_check,omitzero"`
	LastError string         `json:"last_error,omitempty"`
	Changed   time.Time      `json:"changed,omitzero"` // when this host's verdict last changed
	Checks    uint64         `json:"checks"`
	Failed    uint64         `json:"failed"`
}

// StatusFile is what the daemon writes for tandem service list.
type StatusFile struct {
	Updated  time.Time       `json:"updated"`
	Owner    bool            `json:"owner"`
	Backends []BackendStatus `json:"backends"`
}

// StatusPath is the health status file in a state directory.
func StatusPath(dir string) string { return filepath.Join(dir, "health-status.json") }

// WriteStatus writes s into dir, renamed into place (not fsynced: it is
// rewritten every second).
func WriteStatus(dir string, s *StatusFile) error {
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := StatusPath(dir) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write health status: %w", err)
	}
	if err := os.Rename(tmp, StatusPath(dir)); err != nil {
		return fmt.Errorf("write health status: %w", err)
	}
	return nil
}

// ReadStatus reads dir's health status; nil and no error when there is
// none (no daemon runs checks there).
func ReadStatus(dir string) (*StatusFile, error) {
	data, err := os.ReadFile(StatusPath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read health status: %w", err)
	}
	var s StatusFile
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("health status %s: %w", StatusPath(dir), err)
	}
	return &s, nil
}
