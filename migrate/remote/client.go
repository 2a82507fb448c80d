package remote

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// DefaultDialTimeout bounds a client's dial and handshake.
const DefaultDialTimeout = 5 * time.Second

// Client is a connection to a gateway daemon's migration control. It
// dials lazily and again after a failure, trying the gateways in turn
// (the pair's two daemons: after a failover the new owner answers);
// Do is safe for concurrent use (requests go one at a time).
type Client struct {
	Gateways []string    // HOST:PORT of each gateway's --migrate-listen
	TLS      *tls.Config // syncer.ClientTLSConfig or TLSConfigAllowing with the gateways' names
	// Timeout bounds one request and its answer (and a dial).
	Timeout time.Duration // default DefaultDialTimeout

	mu   sync.Mutex
	c    net.Conn
	r    *bufio.Reader
	next int // the gateway to try first
}

// Close closes the connection (a later Do dials again).
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.drop()
}

func (c *Client) drop() error {
	if c.c == nil {
		return nil
	}
	err := c.c.Close()
	c.c, c.r = nil, nil
	return err
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultDialTimeout
}

func (c *Client) dial(ctx context.Context) error {
	if len(c.Gateways) == 0 {
		return errors.New("no gateway to dial: give --gateway HOST:PORT (the daemon's --migrate-listen)")
	}
	var errs []error
	for i := range c.Gateways {
		gw := c.Gateways[(c.next+i)%len(c.Gateways)]
		cfg := c.TLS.Clone()
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(gw)
			if err != nil {
				return fmt.Errorf("gateway %q: want HOST:PORT", gw)
			}
			cfg.ServerName = host
		}
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: c.timeout()}, Config: cfg}
		dctx, cancel := context.WithTimeout(ctx, c.timeout())
		conn, err := d.DialContext(dctx, "tcp", gw)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", gw, err))
			continue
		}
		c.next = (c.next + i) % len(c.Gateways)
		c.c, c.r = conn, bufio.NewReader(conn)
		return nil
	}
	return fmt.Errorf("dial the migration control: %w (is the daemon up with --migrate-listen, and this host's name in its --migrate-clients?)", errors.Join(errs...))
}

// Do sends req and returns the answer; a refused request is a
// *RemoteError, a connection that fails is dialled again once (a step
// is idempotent on the server, so resending is safe). A gateway that
// answers it is the standby is left for the next one: the owner of the
// pair's state takes the steps.
func (c *Client) Do(ctx context.Context, req Request) (Response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var resp Response
	var err error
	standbys := 0
	for attempt := 0; attempt < 2+standbys; attempt++ {
		if c.c == nil {
			if err = c.dial(ctx); err != nil {
				return resp, err
			}
		}
		resp, err = c.roundTrip(req)
		if err == nil && !resp.OK && resp.Code == CodeStandby && standbys < len(c.Gateways)-1 {
			standbys++
			c.drop()
			c.next = (c.next + 1) % len(c.Gateways)
			continue
		}
		if err == nil {
			break
		}
		c.drop()
		// Next time, try the other gateway first: this one failed.
		c.next = (c.next + 1) % max(len(c.Gateways), 1)
	}
	if err != nil {
		// crypto/tls reports the peer's alert as an unexported type.
		if strings.Contains(err.Error(), "remote error: tls:") {
			// TLS 1.3: the server judges the client's certificate after
			// the client's handshake is over; its verdict arrives here.
			return resp, fmt.Errorf("%s %s: %w (the gateway refused this host's certificate: is its name in the gateway's --migrate-clients, and is it signed by the pair's CA?)", req.Op, req.Endpoint, err)
		}
		return resp, fmt.Errorf("%s %s: %w", req.Op, req.Endpoint, err)
	}
	if !resp.OK {
		return resp, &RemoteError{Op: req.Op, Endpoint: req.Endpoint, Code: resp.Code, Msg: resp.Error}
	}
	return resp, nil
}

func (c *Client) roundTrip(req Request) (Response, error) {
	var resp Response
	line, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	c.c.SetDeadline(time.Now().Add(c.timeout()))
	if _, err := c.c.Write(append(line, '\n')); err != nil {
		return resp, err
	}
	out, err := c.r.ReadBytes('\n')
	if err != nil {
		return resp, err
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		return resp, fmt.Errorf("answer %q: %w", out, err)
	}
	return resp, nil
}
