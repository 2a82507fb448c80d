// Package remote is the migration control over mutual TLS: the daemon's
// listener (--migrate-listen) that hosts allowed to drive migrations
// (--migrate-clients) reach, the client they use (tandem migrate, the
// QMP follower), and the protocol between them: one JSON object a line,
// a request and its response, in turn.
//
//	-> {"op":"blackout","endpoint":"10.1.0.5"}
//	<- {"ok":true,"state":"blackout"}
//	-> {"op":"switch","endpoint":"10.9.9.9"}
//	<- {"ok":false,"error":"10.9.9.9: no such endpoint","code":"no_endpoint"}
//
// Steps are idempotent on the server: a step asked again in the state it
// leads to answers ok without touching the datapath (a follower that
// reconnects, or sees QEMU repeat an event, resends what it is unsure
// of). docs/migration.md (## Drivers) describes the drivers.
package remote

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Ops a request names.
const (
	OpStart    = "start"    // to is required
	OpBlackout = "blackout" // the source stopped: hold
	OpSwitch   = "switch"   // the destination runs: flush, then forward there
	OpDone     = "done"     // the move is over
	OpAbort    = "abort"    // back to the source
	OpStatus   = "status"   // the endpoint's migration, changes nothing
)

// Ops lists the ops in the order a move takes them.
var Ops = []string{OpStart, OpBlackout, OpSwitch, OpDone, OpAbort, OpStatus}

// States a response reports (the migration controller's names).
const (
	StateNone      = "none"
	StateMigrating = "migrating"
	StateBlackout  = "blackout"
	StateSwitched  = "switched"
	StateAborted   = "aborted"
)

// Request is one line from a client.
type Request struct {
	Op       string `json:"op"`
	Endpoint string `json:"endpoint"`
	To       string `json:"to,omitempty"` // start: the destination: HOST, or ipip:HOST (a routed host)
}

// Response is the server's answer to one request.
type Response struct {
	OK    bool   `json:"ok"`
	State string `json:"state,omitempty"` // the endpoint's migration state after the request
	From  string `json:"from,omitempty"`
	To    string `json:"to,omitempty"`
	Held  uint64 `json:"held,omitempty"`
	// Noop: the step was already taken (a repeat); nothing changed.
	Noop  bool   `json:"noop,omitempty"`
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"` // the error's class: see the Code* constants
}

// Error codes of a refused request.
const (
	CodeBadRequest   = "bad_request"   // not a valid request: fix the client
	CodeNoEndpoint   = "no_endpoint"   // tandem endpoint set ADDR ... first
	CodeState        = "state"         // the step does not follow the migration's state
	CodeNoDatapath   = "no_datapath"   // this daemon runs no migration datapath
	CodeControllerIO = "controller"    // the controller failed (maps): see the daemon's log
	CodeDifferentTo  = "different_to"  // start for a move already under way to another host
	CodeQueueFull    = "queue_full"    // too many location updates queued
	CodeNoRoute      = "no_route"      // the gateway has no route to the destination (or it is its own address)
	CodeStandby      = "standby"       // the gateway is the pair's standby: the owner takes steps
	CodeUnavailable  = "unavailable"   // the daemon is stopping
	CodeUnknown      = "unknown_error" // anything else
)

// Dest is a location as the remote control names it: a host's address
// and, for a routed host, its encapsulation ("ipip"; empty: a next hop
// on one of the gateway's segments). Written HOST or ipip:HOST.
type Dest struct {
	Addr  netip.Addr
	Encap string
}

// EncapIPIP is a routed host reached by IP-in-IP (package migrate's).
const EncapIPIP = "ipip"

// ParseDest reads HOST or ipip:HOST.
func ParseDest(s string) (Dest, error) {
	var d Dest
	if enc, host, ok := strings.Cut(s, ":"); ok && enc == EncapIPIP {
		d.Encap, s = EncapIPIP, host
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return Dest{}, errors.New("want HOST or ipip:HOST, HOST an IP address (without a zone)")
	}
	d.Addr = a.Unmap()
	// What migrate.Location.Validate refuses, refused here as the
	// request's fault, not the controller's.
	if a := d.Addr; a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return Dest{}, fmt.Errorf("%s: want a host's unicast address", a)
	}
	return d, nil
}

func (d Dest) String() string {
	if !d.Addr.IsValid() {
		return ""
	}
	if d.Encap != "" {
		return d.Encap + ":" + d.Addr.String()
	}
	return d.Addr.String()
}

// Status is an endpoint's migration as the controller reports it.
type Status struct {
	State    string // StateNone when not migrating
	From, To Dest
	Held     uint64
}

// Controller is what the remote control drives: the daemon's migration
// controller (package migrate's Controller, through a thin adapter that
// turns a host address into its Location and List into Status).
type Controller interface {
	Start(ep netip.Addr, to Dest) error
	Blackout(ep netip.Addr) error
	Switch(ep netip.Addr) error
	Done(ep netip.Addr) error
	Abort(ep netip.Addr) error
	// Status is ep's migration; an unknown endpoint is ErrNoEndpoint.
	Status(ep netip.Addr) (Status, error)
}

// Errors a Controller returns (wrapped), mapped to response codes. The
// adapter over package migrate maps its errors onto these.
var (
	ErrNoEndpoint = errors.New("no such endpoint")
	ErrState      = errors.New("not allowed in this migration state")
	ErrQueueFull  = errors.New("location update queue full")
	ErrNoRoute    = errors.New("no route from the gateway")
	ErrStandby    = errors.New("this gateway is the standby: the owner takes migration steps")
)

// RemoteError is a request the server refused, as the client sees it.
type RemoteError struct {
	Op, Endpoint string
	Code, Msg    string
}

func (e *RemoteError) Error() string {
	hint := ""
	switch e.Code {
	case CodeNoEndpoint:
		hint = " (give the endpoint a location first: tandem endpoint set)"
	case CodeState:
		hint = " (tandem migrate status shows where the move is)"
	case CodeNoDatapath:
		hint = " (the gateway's daemon runs without the migration feature)"
	case CodeStandby:
		hint = " (give the client both gateways of the pair, --gateway A --gateway B: the owner takes the step)"
	case CodeNoRoute:
		hint = " (check --to: the gateway forwards only to hosts it has a route to)"
	case CodeControllerIO:
		hint = " (see the gateway daemon's log)"
	}
	return fmt.Sprintf("%s %s: %s%s", e.Op, e.Endpoint, e.Msg, hint)
}
