package bpf_test

import (
	"testing"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/fixture"
)

// TestMigrateStandbyHold: on the standby (mig_role 1) the stage holds a
// blackout's packet as the owner does (dropped, into the ring) but counts
// it in the local mig_standby, not in the replicated record the owner's
// changes overwrite; MIG_OP_ADOPT moves the count into the record (and
// sets the flush bit); on the owner the record's tickets move as before.
func TestMigrateStandbyHold(t *testing.T) {
	f := newMigFixture(t)
	blackout := uint32(bpf.MigrateMigStateIdMIG_BLACKOUT)
	switched := uint32(bpf.MigrateMigStateIdMIG_SWITCHED)
	for _, tc := range []struct {
		name        string
		standby     bool
		state       uint32
		hold        bool
		tickets     uint64 // in the record after one packet
		standbyHeld uint64 // in mig_standby after one packet
	}{
		{"owner, blackout", false, blackout, true, 1, 0},
		{"standby, blackout", true, blackout, true, 0, 1},
		{"standby, switched while the owner flushes", true, switched, true, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := f.gw.Do(func() error {
				if err := f.mm.SetRole(tc.standby); err != nil {
					return err
				}
				defer f.mm.SetRole(false)
				if err := f.mm.SetEndpoint(migEP4, hopS4); err != nil {
					return err
				}
				_ = f.mm.DelMigration(migEP4)
				_ = f.objs.MigStandby.Delete(maps.MigKeyOf(migEP4))
				v := &maps.MigVal{State: tc.state, From: maps.MigLocOf(hopS4), To: maps.MigLocOf(hopD4)}
				if err := f.mm.PutMigration(migEP4, v, tc.hold); err != nil {
					return err
				}
				verdict, _, err := fixture.Run(f.objs.XdpMigrate, udp4to(t, migEP4))
				if err != nil {
					return err
				}
				m, err := f.mm.Migration(migEP4)
				if err != nil {
					return err
				}
				var sv bpf.MigrateMigStandbyVal
				_ = f.objs.MigStandby.Lookup(maps.MigKeyOf(migEP4), &sv)
				if verdict != "XDP_DROP" || m.Hold&^maps.MigFlushing != tc.tickets || sv.Tickets != tc.standbyHeld {
					t.Errorf("verdict %s, record tickets %d, standby's %d; want XDP_DROP, %d, %d", verdict, m.Hold&^maps.MigFlushing, sv.Tickets, tc.tickets, tc.standbyHeld)
				}
				n, err := f.mm.AdoptStandby(migEP4)
				if err != nil {
					return err
				}
				if m, err = f.mm.Migration(migEP4); err != nil {
					return err
				}
				if n != tc.standbyHeld || m.Hold&^maps.MigFlushing != tc.tickets+tc.standbyHeld || m.Hold&maps.MigFlushing == 0 {
					t.Errorf("adopted %d, record %#x; want %d adopted, %d tickets with the flush bit", n, m.Hold, tc.standbyHeld, tc.tickets+tc.standbyHeld)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
