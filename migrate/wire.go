package migrate

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// The control protocol: one JSON request line, one JSON answer line. The
// daemon serves it on its local control socket (--state-dir/migrate.sock);
// the remote control serves the same Handle over mutual TLS.

// Request is one call of a Controller method.
type Request struct {
	Op string     `json:"op"` // start, blackout, switch, done, abort, set, del, list
	EP netip.Addr `json:"endpoint,omitzero"`
	To netip.Addr `json:"to,omitzero"` // start: the destination; set: the location
	// Encap goes with To: "ipip" for a routed location, empty for a
	// segment hop (Location.Encap).
	Encap string `json:"encap,omitempty"`
}

// Answer is the result of one Request.
type Answer struct {
	Error     string     `json:"error,omitempty"`
	Kind      string     `json:"kind,omitempty"` // no_endpoint, state, queue_full, standby, no_route
	Queued    bool       `json:"queued,omitempty"`
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Handle runs one request against c.
func Handle(c Controller, r Request) Answer {
	var (
		a   Answer
		err error
	)
	switch r.Op {
	case "start":
		err = c.Start(r.EP, Location{Hop: r.To, Encap: r.Encap})
	case "blackout":
		err = c.Blackout(r.EP)
	case "switch":
		err = c.Switch(r.EP)
	case "done":
		err = c.Done(r.EP)
	case "abort":
		err = c.Abort(r.EP)
	case "set":
		a.Queued, err = c.SetLocation(r.EP, Location{Hop: r.To, Encap: r.Encap})
	case "del":
		err = c.Delete(r.EP)
	case "list":
		a.Endpoints, err = c.List()
	default:
		err = fmt.Errorf("unknown request %q (start, blackout, switch, done, abort, set, del, list)", r.Op)
	}
	if err != nil {
		a.Error = err.Error()
		switch {
		case errors.Is(err, ErrNoEndpoint):
			a.Kind = "no_endpoint"
		case errors.Is(err, ErrState):
			a.Kind = "state"
		case errors.Is(err, ErrQueueFull):
			a.Kind = "queue_full"
		case errors.Is(err, ErrStandby):
			a.Kind = "standby"
		case errors.Is(err, ErrNoRoute):
			a.Kind = "no_route"
		}
	}
	return a
}

// ServeConn answers one connection: a request line (read within 5 s),
// then the answer. allow, when not nil, may refuse the peer.
func ServeConn(c net.Conn, ctl Controller, allow func(net.Conn) error) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, 4096)).ReadBytes('\n')
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	enc := json.NewEncoder(c)
	if allow != nil {
		if err := allow(c); err != nil {
			enc.Encode(Answer{Error: err.Error()})
			return
		}
	}
	var r Request
	if err := json.Unmarshal(line, &r); err != nil {
		enc.Encode(Answer{Error: "bad request: " + err.Error()})
		return
	}
	enc.Encode(Handle(ctl, r))
}

// Client is a Controller that calls a daemon over its control protocol:
// Dial opens one connection per call.
type Client struct {
	Dial func() (net.Conn, error)
}

var _ Controller = (*Client)(nil)

// UnixClient calls the daemon's local control socket at path.
func UnixClient(path string) *Client {
	return &Client{Dial: func() (net.Conn, error) { return net.Dial("unix", path) }}
}

func (c *Client) call(r Request) (Answer, error) {
	conn, err := c.Dial()
	if err != nil {
		return Answer{}, fmt.Errorf("reach the daemon (is tandem up running with --migrate-iface?): %w", err)
	}
	defer conn.Close()
	if err := json.NewEncoder(conn).Encode(r); err != nil {
		return Answer{}, fmt.Errorf("send request: %w", err)
	}
	var a Answer
	if err := json.NewDecoder(conn).Decode(&a); err != nil {
		return Answer{}, fmt.Errorf("read answer: %w", err)
	}
	if a.Error != "" {
		var kind error
		switch a.Kind {
		case "no_endpoint":
			kind = ErrNoEndpoint
		case "state":
			kind = ErrState
		case "queue_full":
			kind = ErrQueueFull
		case "standby":
			kind = ErrStandby
		case "no_route":
			kind = ErrNoRoute
		}
		if kind != nil {
			return a, &remoteError{msg: a.Error, kind: kind}
		}
		return a, errors.New(a.Error)
	}
	return a, nil
}

type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

func (c *Client) do(r Request) error { _, err := c.call(r); return err }

func (c *Client) Start(ep netip.Addr, to Location) error {
	return c.do(Request{Op: "start", EP: ep, To: to.Hop, Encap: to.Encap})
}
func (c *Client) Blackout(ep netip.Addr) error { return c.do(Request{Op: "blackout", EP: ep}) }
func (c *Client) Switch(ep netip.Addr) error   { return c.do(Request{Op: "switch", EP: ep}) }
func (c *Client) Done(ep netip.Addr) error     { return c.do(Request{Op: "done", EP: ep}) }
func (c *Client) Abort(ep netip.Addr) error    { return c.do(Request{Op: "abort", EP: ep}) }
func (c *Client) Delete(ep netip.Addr) error   { return c.do(Request{Op: "del", EP: ep}) }
func (c *Client) SetLocation(ep netip.Addr, loc Location) (bool, error) {
	a, err := c.call(Request{Op: "set", EP: ep, To: loc.Hop, Encap: loc.Encap})
	return a.Queued, err
}
func (c *Client) List() ([]Endpoint, error) {
	a, err := c.call(Request{Op: "list"})
	return a.Endpoints, err
}
