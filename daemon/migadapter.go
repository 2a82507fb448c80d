package daemon

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/tandem-net/tandem/migrate"
	"github.com/tandem-net/tandem/migrate/remote"
)

// remoteController is the migration controller as the remote control
// (migrate/remote) drives it: a destination host is a Location, List
// gives one endpoint's Status, and the controller's errors carry the
// remote's classes.
type remoteController struct{ c migrate.Controller }

func remoteErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, migrate.ErrNoEndpoint):
		return fmt.Errorf("%w (%w)", err, remote.ErrNoEndpoint)
	case errors.Is(err, migrate.ErrState):
		return fmt.Errorf("%w (%w)", err, remote.ErrState)
	case errors.Is(err, migrate.ErrQueueFull):
		return fmt.Errorf("%w (%w)", err, remote.ErrQueueFull)
	case errors.Is(err, migrate.ErrNoRoute):
		return fmt.Errorf("%w (%w)", err, remote.ErrNoRoute)
	case errors.Is(err, migrate.ErrStandby):
		return fmt.Errorf("%w (%w)", err, remote.ErrStandby)
	}
	return err
}

func (r remoteController) Start(ep netip.Addr, to remote.Dest) error {
	return remoteErr(r.c.Start(ep, migrate.Location{Hop: to.Addr, Encap: to.Encap}))
}
func (r remoteController) Blackout(ep netip.Addr) error { return remoteErr(r.c.Blackout(ep)) }
func (r remoteController) Switch(ep netip.Addr) error   { return remoteErr(r.c.Switch(ep)) }
func (r remoteController) Done(ep netip.Addr) error     { return remoteErr(r.c.Done(ep)) }
func (r remoteController) Abort(ep netip.Addr) error    { return remoteErr(r.c.Abort(ep)) }

func (r remoteController) Status(ep netip.Addr) (remote.Status, error) {
	eps, err := r.c.List()
	if err != nil {
		return remote.Status{}, err
	}
	for _, e := range eps {
		if e.Addr != ep {
			continue
		}
		st := remote.Status{State: remote.StateNone}
		if m := e.Migration; m != nil {
			st = remote.Status{State: m.State.String(), From: remote.Dest{Addr: m.From.Hop, Encap: m.From.Encap},
				To: remote.Dest{Addr: m.To.Hop, Encap: m.To.Encap}, Held: m.Held}
		}
		return st, nil
	}
	return remote.Status{}, fmt.Errorf("%s: %w", ep, remote.ErrNoEndpoint)
}
