package migrate

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/maps"
)

// The stage forwards with bpf_fib_lookup, which only reads this host's
// neighbour table: a hop (a location, a move's source or destination, the
// router towards a routed host) the kernel has no entry for is counted
// no_route and dropped, and nothing in XDP makes the kernel look it up.
// So an endpoint set to a host this gateway never talked to, or one whose
// entry the kernel's garbage collection took, was unreachable for good.
// The controller has the kernel resolve hops: each one as it is set, and
// all of them whenever the stage's no_route count moves; only those whose
// next hop has no valid neighbour entry (a datagram to each host at every
// change would be noise on the segments).

// ResolveInterval is how often the controller looks at the stage's
// no_route count.
var ResolveInterval = 200 * time.Millisecond

// maxResolve bounds the hops one round pokes.
const maxResolve = 4096

// resolver sends the datagrams that make the kernel resolve a hop. Its
// sockets are made in the controller's network namespace, so they send
// from there whichever thread calls.
type resolver struct {
	fd4, fd6 int
	nl       *rtnetlink.Conn // routes and neighbours; nil: every hop is poked
	noRoute  uint64          // the stage's no_route count at the last round
	started  bool
}

func newResolver() resolver {
	r := resolver{fd4: -1, fd6: -1}
	if c, err := rtnetlink.Dial(nil); err == nil {
		r.nl = c
	}
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0); err == nil {
		r.fd4 = fd
	}
	if fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0); err == nil {
		r.fd6 = fd
	}
	return r
}

func (r *resolver) close() {
	for _, fd := range []int{r.fd4, r.fd6} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if r.nl != nil {
		r.nl.Close()
	}
}

// nudValid are the neighbour states bpf_fib_lookup forwards with.
const nudValid = unix.NUD_PERMANENT | unix.NUD_NOARP | unix.NUD_REACHABLE | unix.NUD_PROBE | unix.NUD_STALE | unix.NUD_DELAY

type neighKey struct {
	addr    netip.Addr
	ifindex uint32
}

// unresolved is, of hops, those whose next hop (the hop, or the router
// the route to it names) has no valid neighbour entry on the route's
// interface, or that cannot be told.
func (r *resolver) unresolved(hops []netip.Addr) []netip.Addr {
	if r.nl == nil || len(hops) == 0 {
		return hops
	}
	neighs, err := r.nl.Neigh.List()
	if err != nil {
		return hops
	}
	valid := map[neighKey]bool{}
	for _, n := range neighs {
		if n.State&nudValid == 0 || n.Attributes == nil {
			continue
		}
		if a, ok := netip.AddrFromSlice(n.Attributes.Address); ok {
			valid[neighKey{a.Unmap(), n.Index}] = true
		}
	}
	var out []netip.Addr
	for _, h := range hops {
		if k, ok := r.nextHop(h); !ok || !valid[k] {
			out = append(out, h)
		}
	}
	return out
}

// nextHop is where this host's routes send a packet for h.
func (r *resolver) nextHop(h netip.Addr) (neighKey, bool) {
	fam, bits := uint8(unix.AF_INET), uint8(32)
	if !h.Is4() {
		fam, bits = unix.AF_INET6, 128
	}
	rts, err := r.nl.Route.Get(&rtnetlink.RouteMessage{Family: fam, DstLength: bits, Attributes: rtnetlink.RouteAttributes{Dst: h.AsSlice()}})
	if err != nil || len(rts) == 0 || rts[0].Attributes.OutIface == 0 {
		return neighKey{}, false
	}
	k := neighKey{h, rts[0].Attributes.OutIface}
	if g, ok := netip.AddrFromSlice(rts[0].Attributes.Gateway); ok {
		k.addr = g.Unmap()
	}
	return k, true
}

// ErrNoRoute: this gateway has no route to the hop, or the hop is one of
// its own addresses: the stage could not forward there.
var ErrNoRoute = errors.New("no route from this gateway")

// routable says why the stage could not forward to loc from this host's
// routes (nil when it could, or when that cannot be told). A segment hop
// (no encapsulation) must be on a segment of this host: with a router on
// the way, the stage would hand the endpoint's packets to the router,
// which routes them by the endpoint's address, not to the host.
func (r *resolver) routable(loc Location) error {
	hop := loc.Hop
	if r.nl == nil || !hop.IsValid() {
		return nil
	}
	h := hop.Unmap()
	fam, bits := uint8(unix.AF_INET), uint8(32)
	if !h.Is4() {
		fam, bits = unix.AF_INET6, 128
	}
	rts, err := r.nl.Route.Get(&rtnetlink.RouteMessage{Family: fam, DstLength: bits, Attributes: rtnetlink.RouteAttributes{Dst: h.AsSlice()}})
	switch {
	case errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w (add a route, or give a host on one of its segments)", h, ErrNoRoute)
	case err != nil || len(rts) == 0:
		return nil
	}
	switch rts[0].Type {
	case unix.RTN_UNICAST:
		if g := rts[0].Attributes.Gateway; loc.Encap == "" && len(g) > 0 && !g.IsUnspecified() {
			return fmt.Errorf("%s is not on a segment of this gateway (its route goes via %s): %w; for a routed host give ipip:%s", h, g, ErrNoRoute, h)
		}
		return nil
	case unix.RTN_LOCAL:
		return fmt.Errorf("%s is this gateway's own address: %w", h, ErrNoRoute)
	}
	return fmt.Errorf("%s: %w (its route is of type %d: unreachable, blackhole or prohibit)", h, ErrNoRoute, rts[0].Type)
}

// ensure pokes hop unless its next hop is resolved already.
func (r *resolver) ensure(hop netip.Addr) {
	if !hop.IsValid() {
		return
	}
	for _, h := range r.unresolved([]netip.Addr{hop.Unmap()}) {
		r.poke(h)
	}
}

// poke sends an empty UDP datagram to hop's discard port: on its way out
// the kernel resolves the next hop's neighbour (an ARP or neighbour
// solicitation), which is all it is for. Errors (no route yet, a full
// queue) are the next round's to retry.
func (r *resolver) poke(hop netip.Addr) {
	switch {
	case !hop.IsValid():
	case hop.Is4() || hop.Is4In6():
		if r.fd4 >= 0 {
			unix.Sendto(r.fd4, nil, 0, &unix.SockaddrInet4{Port: 9, Addr: hop.Unmap().As4()})
		}
	default:
		if r.fd6 >= 0 {
			unix.Sendto(r.fd6, nil, 0, &unix.SockaddrInet6{Port: 9, Addr: hop.As16()})
		}
	}
}

// hops is every hop the stage may forward to: the endpoints' locations,
// the moves' sources, destinations and queued locations.
func (l *Local) hops() []netip.Addr {
	var list []netip.Addr
	for h := range l.hopSet() {
		list = append(list, h)
	}
	return list
}

func (l *Local) hopSet() map[netip.Addr]struct{} {
	out := map[netip.Addr]struct{}{}
	add := func(r maps.MigLoc) {
		if a := maps.HopOf(r); a.IsValid() && len(out) < maxResolve {
			out[a] = struct{}{}
		}
	}
	if eps, err := l.m.EndpointList(); err == nil {
		for _, loc := range eps {
			add(loc)
		}
	}
	if migs, err := l.m.Migrations(); err == nil {
		for _, v := range migs {
			add(v.From)
			add(v.To)
			for i := 0; i < int(v.Nqueued) && i < maps.MigQueueMax; i++ {
				add(v.Queued[i])
			}
		}
	}
	return out
}

// resolveLoop pokes every hop whenever the stage's no_route count moved
// (and once at the start: an earlier daemon's endpoints), until Close.
func (l *Local) resolveLoop() {
	defer l.stopped.Done()
	t := time.NewTicker(ResolveInterval)
	defer t.Stop()
	for {
		st, err := l.m.MigStats()
		if err == nil && (!l.res.started || st["no_route"] != l.res.noRoute) {
			l.res.started, l.res.noRoute = true, st["no_route"]
			// Under mu: the setters use the netlink socket too.
			l.mu.Lock()
			for _, h := range l.res.unresolved(l.hops()) {
				l.res.poke(h)
			}
			l.mu.Unlock()
		}
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
	}
}
