// Package migrate moves an endpoint (an address served through the
// gateway, e.g. a virtual machine) from one host to another without
// losing a packet: the state machine of issue 13 and the API the daemon,
// the CLI and the migration drivers (the remote control, `tandem migrate
// follow --qmp`) call. docs/migration.md describes the method.
//
// An endpoint has a location: the host that serves it, a next hop on a
// backend segment that the gateway forwards the endpoint's packets to
// (the datapath resolves its interface and MAC from this host's FIB and
// neighbour table, so the replicated record means the same on both
// gateways of the pair). A migration moves it:
//
//	Start(ep, to)  none      -> migrating  packets go to the source
//	Blackout(ep)   migrating -> blackout   packets are held
//	Switch(ep)     blackout  -> switched   held packets are flushed to the
//	                                       destination in order, then new ones follow
//	Done(ep)       switched  -> (none)     the endpoint's location is the
//	                                       destination; queued updates applied in order
//	Abort(ep)      any       -> (none)     back to the source; held packets
//	                                       flushed to it; queued updates dropped
//
// Every state is in replicated maps (mig_endpoints, mig_state), so the
// peer gateway continues a migration after a failover.
package migrate

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/tandem-net/tandem/maps"
)

// Location is where an endpoint is served from.
type Location struct {
	// Hop is the host serving the endpoint: without Encap, a next hop on
	// a segment directly attached to the gateway (its interface and MAC
	// come from the gateway's neighbour table); with Encap, a host
	// reached through routers.
	Hop netip.Addr
	// Encap is how a routed Hop is reached: EncapIPIP (IP-in-IP to Hop,
	// which decapsulates it). Empty: a segment hop.
	Encap string `json:",omitempty"`
}

// EncapIPIP: the packet goes to the host in an outer IP header
// (IP-in-IP, protocol 4 or 41), sent the way this host routes to it.
const EncapIPIP = "ipip"

func (l Location) String() string {
	if !l.Hop.IsValid() {
		return "-"
	}
	if l.Encap != "" {
		return l.Encap + ":" + l.Hop.String()
	}
	return "via " + l.Hop.String()
}

// ParseLocation reads a location as the CLI and the control protocol
// write it: HOST (a next hop on an attached segment) or ipip:HOST (a
// routed host, IP-in-IP).
func ParseLocation(s string) (Location, error) {
	var l Location
	if enc, host, ok := strings.Cut(s, ":"); ok && enc == EncapIPIP {
		l.Encap, s = EncapIPIP, host
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Location{}, errors.New("want HOST or ipip:HOST, HOST an IPv4 or IPv6 address")
	}
	l.Hop = a.Unmap()
	return l, l.Validate()
}

// Validate says what is wrong with l, if anything.
func (l Location) Validate() error {
	switch {
	case l.Encap != "" && l.Encap != EncapIPIP:
		return fmt.Errorf("location encapsulation %q: want %q (or none: a segment hop)", l.Encap, EncapIPIP)
	case !l.Hop.IsValid():
		return errors.New("no location: want HOST or ipip:HOST")
	case l.Hop.IsUnspecified() || l.Hop.IsMulticast() || l.Hop.IsLoopback() || (l.Hop.Is4() && l.Hop == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
		return fmt.Errorf("location %s: want a host's unicast address", l.Hop)
	}
	return nil
}

// ValidateEndpoint says what is wrong with ep as an endpoint's address:
// the stage takes every packet for it on its interfaces, so never an
// unspecified, multicast, loopback or broadcast address (a routing
// protocol's hellos, say).
func ValidateEndpoint(ep netip.Addr) error {
	switch {
	case !ep.IsValid():
		return errors.New("no endpoint address")
	case ep.IsUnspecified() || ep.IsMulticast() || ep.IsLoopback() || ep.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("endpoint %s: want a unicast address served from a host", ep)
	}
	return nil
}

// rec is l as the maps store it.
func (l Location) rec() maps.MigLoc {
	var enc uint32
	if l.Encap == EncapIPIP {
		enc = maps.MigEncapIPIP
	}
	return maps.MigLocEncap(l.Hop, enc)
}

// locOf is the inverse of rec.
func locOf(r maps.MigLoc) Location {
	l := Location{Hop: maps.HopOf(r)}
	if r.Encap == maps.MigEncapIPIP && l.Hop.IsValid() {
		l.Encap = EncapIPIP
	}
	return l
}

// State is a migration's phase.
type State uint8

const (
	StateNone      State = iota // not migrating: packets go to the endpoint's location
	StateMigrating              // pre-copy: packets go to the source
	StateBlackout               // stop-and-copy: packets are held
	StateSwitched               // resumed on the destination: held packets first, then the destination
	StateDone                   // finished (the record is gone: the endpoint's location is the destination)
	StateAborted                // aborted while packets were held: they are flushed to the source first
)

var stateNames = []string{"none", "migrating", "blackout", "switched", "done", "aborted"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", s)
}

// Migration is one endpoint's move in progress.
type Migration struct {
	State    State
	From, To Location
	// Queued are location updates received during the move, oldest
	// first: applied in order at Done, dropped at Abort.
	Queued []Location
	// Held: packets held (blackout, and while a flush runs); Flushed:
	// held packets re-injected; Overflow: packets the full hold dropped
	// (the newest: what arrives once the hold is full); Lost: held
	// packets a daemon restart or failover lost.
	Held, Flushed, Overflow, Lost uint64
	// Flushing: held packets are still being re-injected; new packets
	// are held behind them so none overtakes.
	Flushing bool
}

// Endpoint is one endpoint as List reports it.
type Endpoint struct {
	Addr      netip.Addr
	Location  Location
	Migration *Migration // nil when not migrating
}

// Errors the controller returns; wrapped with the endpoint.
var (
	// ErrNoEndpoint: the address has no location (tandem endpoint set first).
	ErrNoEndpoint = errors.New("no such endpoint")
	// ErrState: the step does not follow from the migration's state
	// (e.g. Switch before Blackout is fine, Blackout after Switch is not).
	ErrState = errors.New("not allowed in this migration state")
	// ErrQueueFull: too many location updates queued during one move.
	ErrQueueFull = errors.New("location update queue full")
)

// Controller drives endpoints and their migrations. The daemon owns the
// one implementation (over the pinned maps); the CLI reaches it through
// the control socket, the drivers through the remote control. Every
// method is safe for concurrent use and takes effect in the datapath
// before it returns.
type Controller interface {
	// Start begins moving ep (which must have a location) to to;
	// packets keep going to the source.
	Start(ep netip.Addr, to Location) error
	// Blackout starts holding ep's packets (the source has stopped).
	Blackout(ep netip.Addr) error
	// Switch sends ep's held packets to the destination, in order, and
	// then every new packet (the destination has resumed). Allowed from
	// migrating too (a move without a blackout).
	Switch(ep netip.Addr) error
	// Done ends the move: ep's location becomes the destination, then
	// the queued updates are applied in order. It waits for a running
	// flush to finish.
	Done(ep netip.Addr) error
	// Abort ends the move in any state: packets go to the source again
	// (held ones first), queued updates are dropped.
	Abort(ep netip.Addr) error
	// SetLocation sets ep's location (creating the endpoint), or, while
	// ep migrates, queues the update (queued true).
	SetLocation(ep netip.Addr, loc Location) (queued bool, err error)
	// Delete removes ep (refused while it migrates: abort first).
	Delete(ep netip.Addr) error
	// List reports every endpoint, sorted by address.
	List() ([]Endpoint, error)
}
