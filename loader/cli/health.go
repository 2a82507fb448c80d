package cli

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/maps"
)

// addHealth fills each service's backends' health: from the daemon's
// status file in stateDir (its checks and the verdict it uses), else from
// the published verdicts in sp_health (no check details: no daemon runs
// checks here, or it has not written its status yet).
// It returns when the daemon wrote its status (zero: none read).
func addHealth(svcs []ServiceStatus, stateDir string, pins maps.Pins) (time.Time, error) {
	byKey := map[health.Key]health.BackendStatus{}
	st, err := health.ReadStatus(stateDir)
	if err != nil {
		return time.Time{}, err
	}
	var updated time.Time
	if st != nil {
		updated = st.Updated
		for _, b := range st.Backends {
			byKey[health.Key{Service: b.Service, Backend: b.Backend}] = b
		}
	} else {
		hm, err := maps.OpenHealth(pins)
		if errors.Is(err, maps.ErrHealthNotLoaded) {
			return updated, nil
		}
		if err != nil {
			return updated, err
		}
		defer hm.Close()
		vs, err := hm.List()
		if err != nil {
			return updated, err
		}
		for _, v := range vs {
			byKey[health.Key{Service: v.Service, Backend: v.Backend}] = health.BackendStatus{Service: v.Service, Backend: v.Backend,
				Up: v.Up, OwnUp: v.Up, Source: "published", Changed: v.Changed}
		}
	}
	for i := range svcs {
		for _, b := range svcs[i].Backends {
			if h, ok := byKey[health.Key{Service: unmap(svcs[i].VIP), Backend: unmap(b)}]; ok {
				svcs[i].Health = append(svcs[i].Health, h)
			}
		}
	}
	return updated, nil
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// printHealth is service list's backend table; nothing when no service
// has health checks.
func printHealth(w io.Writer, svcs []ServiceStatus, updated, now time.Time) {
	n := 0
	for _, s := range svcs {
		n += len(s.Health)
	}
	if n == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tBACKEND\tHEALTH\tFROM\tOWN CHECKS\tLAST CHECK\tCHECKS\tFAILED\tLAST ERROR")
	for _, s := range svcs {
		for _, h := range s.Health {
			verdict, own := "up", "up"
			if !h.Up {
				verdict = "DOWN"
			}
			if !h.OwnUp {
				own = "down"
			}
			last := "-"
			if !h.Checked.IsZero() {
				last = fmt.Sprintf("%s ago", now.Sub(h.Checked).Round(time.Millisecond))
			}
			if h.Check == "" {
				own = "-"
			}
			errS := h.LastError
			if errS == "" {
				errS = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", s.VIP, h.Backend, verdict, h.Source, own, last, h.Checks, h.Failed, errS)
		}
	}
	tw.Flush()
	// The daemon rewrites its status every second.
	if !updated.IsZero() && now.Sub(updated) > 10*time.Second {
		fmt.Fprintf(w, "note: the daemon's health status is %s old: is the daemon running (tandem status)?\n", now.Sub(updated).Round(time.Second))
	}
}
