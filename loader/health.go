package loader

import (
	"github.com/tandem-net/tandem/maps"
)

// The backends' health verdicts (bpf/synproxy/health.h, in the SYN proxy's
// object) are replicated by the state sync: the standby uses the owner's
// verdicts while it does not own the VIPs (docs/synproxy.md, "Health
// checks"). Registered here rather than in the synproxy feature's Synced
// list to keep the health checks' changes in files of their own.
func init() {
	maps.RegisterSynced(maps.SyncedMap{ID: maps.SyncMapHealth, Name: maps.MapSpHealth})
}
