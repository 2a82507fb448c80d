package remote

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tandem-net/tandem/syncer"
)

// Defaults of the Server's zero fields.
const (
	// DefaultHandshakeTimeout: a connection has this long for its TLS
	// handshake and its first request.
	DefaultHandshakeTimeout = 3 * time.Second
	// DefaultIdleTimeout: a client that sends no request this long is
	// closed (a follower keeps its connection with status requests).
	DefaultIdleTimeout = 30 * time.Second
	// MaxRequestBytes bounds a request line.
	MaxRequestBytes = 4096
)

// Reasons a connection is refused, the label of the refused counter.
const (
	RefuseHandshake = "handshake" // TLS failed: no certificate, another CA, not TLS, too slow
	RefuseName      = "name"      // a certificate of the pair's CA for a name not allowed to drive migrations
	RefuseRequest   = "request"   // no valid first request in time
	RefuseBusy      = "busy"      // too many connections in their handshake
)

// RefuseReasons lists the refusal reasons.
var RefuseReasons = []string{RefuseHandshake, RefuseName, RefuseRequest, RefuseBusy}

// Server is the daemon's migration control listener. TLS must admit only
// the allowed clients (syncer.TLSConfigAllowing). Admission (the pending
// bound, Stop) is the sync receiver's: syncer.Admission.
type Server struct {
	TLS        *tls.Config
	Controller Controller // nil: every step is refused with CodeNoDatapath
	Log        *slog.Logger

	HandshakeTimeout time.Duration // default DefaultHandshakeTimeout
	IdleTimeout      time.Duration // default DefaultIdleTimeout
	MaxPending       int           // default syncer.DefaultMaxPending

	// Refused counts refused connections by reason; Requests counts
	// requests by op and result (ok, noop, or the error code).
	Refused  *prometheus.CounterVec
	Requests *prometheus.CounterVec

	adm  syncer.Admission
	once sync.Once
	mu   sync.Mutex // one step at a time: a repeat sees the state its first left
}

// NewMetrics makes the counters a Server fills, registered on reg.
func (s *Server) NewMetrics(reg prometheus.Registerer) {
	s.Refused = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "tandem", Subsystem: "migrate", Name: "clients_refused_total",
		Help: "Connections to the migration control refused, by reason: handshake (no certificate, another CA, not TLS, too slow), name (a certificate of the pair's CA not allowed to drive migrations), request (no valid request in time), busy (too many handshakes at once)."}, []string{"reason"})
	s.Requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "tandem", Subsystem: "migrate", Name: "requests_total",
		Help: "Migration control requests by op and result (ok, noop for a repeated step, or the error code)."}, []string{"op", "result"})
	for _, r := range RefuseReasons {
		s.Refused.WithLabelValues(r)
	}
	reg.MustRegister(s.Refused, s.Requests)
}

func (s *Server) init() {
	s.once.Do(func() {
		if s.HandshakeTimeout <= 0 {
			s.HandshakeTimeout = DefaultHandshakeTimeout
		}
		if s.IdleTimeout <= 0 {
			s.IdleTimeout = DefaultIdleTimeout
		}
		if s.Log == nil {
			s.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
		}
		if s.Refused == nil {
			s.NewMetrics(prometheus.NewRegistry())
		}
		s.adm.MaxPending = s.MaxPending
		s.adm.Busy = func(c net.Conn) {
			s.refuse(s.Log.With("client", c.RemoteAddr().String()), RefuseBusy, "too many connections in their handshake", nil)
		}
	})
}

// RefusedFor counts the connections refused for reason.
func (s *Server) RefusedFor(reason string) uint64 {
	s.init()
	return uint64(counterValue(s.Refused.WithLabelValues(reason)))
}

// Serve accepts clients until ln closes; it returns when every
// connection is done.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	return s.adm.Serve(ln, s.handle)
}

// Stop ends every open connection (the caller closes the listener).
func (s *Server) Stop() {
	s.init()
	s.adm.Stop()
}

func (s *Server) refuse(log *slog.Logger, reason, msg string, err error) {
	s.Refused.WithLabelValues(reason).Inc()
	log.Warn("migration client refused: "+msg, "reason", reason, "err", err)
}

func (s *Server) handle(c net.Conn, release func()) {
	log := s.Log.With("client", c.RemoteAddr().String())
	tc, err := syncer.Handshake(c, s.TLS, s.HandshakeTimeout)
	if err != nil {
		var nameErr *syncer.ClientNameError
		if errors.As(err, &nameErr) {
			s.refuse(log, RefuseName, "certificate not allowed to drive migrations", err)
		} else {
			s.refuse(log, RefuseHandshake, "TLS handshake failed", err)
		}
		return
	}
	if names := tc.ConnectionState().PeerCertificates[0].DNSNames; len(names) > 0 {
		log = log.With("name", names[0])
	} else {
		log = log.With("name", tc.ConnectionState().PeerCertificates[0].Subject.CommonName)
	}
	r := bufio.NewReaderSize(tc, MaxRequestBytes)
	w := bufio.NewWriter(tc)
	first := true
	for {
		line, err := r.ReadSlice('\n')
		var req Request
		if err == nil {
			err = json.Unmarshal(line, &req)
		}
		if err != nil {
			switch {
			case first:
				s.refuse(log, RefuseRequest, "no valid request", err)
			case errors.Is(err, io.EOF):
			case s.adm.Stopping():
			default:
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					err = fmt.Errorf("the client sent nothing for %s", s.IdleTimeout)
				}
				log.Info("migration client closed", "reason", err)
			}
			return
		}
		if first {
			first = false
			release()
			log.Info("migration client connected")
		}
		resp := s.Do(req)
		if resp.OK && req.Op != OpStatus {
			log.Info("migration step", "op", req.Op, "endpoint", req.Endpoint, "to", req.To, "state", resp.State, "noop", resp.Noop)
		} else if !resp.OK {
			log.Warn("migration step refused", "op", req.Op, "endpoint", req.Endpoint, "err", resp.Error)
		}
		out, _ := json.Marshal(resp)
		w.Write(append(out, '\n'))
		c.SetDeadline(time.Now().Add(s.IdleTimeout))
		if err := w.Flush(); err != nil {
			log.Info("migration client closed", "reason", err)
			return
		}
	}
}

// Do carries out one request (the server's connections call it; tests
// and the local control socket may too).
func (s *Server) Do(req Request) Response {
	s.init()
	resp := s.do(req)
	result := "ok"
	switch {
	case !resp.OK:
		result = resp.Code
	case resp.Noop:
		result = "noop"
	}
	op := req.Op
	if !slices.Contains(Ops, op) {
		op = "invalid"
	}
	s.Requests.WithLabelValues(op, result).Inc()
	return resp
}

func fail(code string, err error) Response { return Response{Code: code, Error: err.Error()} }

func (s *Server) do(req Request) Response {
	if !slices.Contains(Ops, req.Op) {
		return fail(CodeBadRequest, fmt.Errorf("op %q: want one of %v", req.Op, Ops))
	}
	ep, err := netip.ParseAddr(req.Endpoint)
	if err != nil || ep.Zone() != "" {
		return fail(CodeBadRequest, fmt.Errorf("endpoint %q: not an IP address (without a zone)", req.Endpoint))
	}
	// ::ffff:a.b.c.d is the IPv4 endpoint, as the maps and the CLI have it.
	ep = ep.Unmap()
	var to Dest
	if req.Op == OpStart {
		if to, err = ParseDest(req.To); err != nil {
			return fail(CodeBadRequest, fmt.Errorf("start %s: to %q: %v (the destination host)", ep, req.To, err))
		}
	}
	ctl := s.Controller
	if ctl == nil {
		return fail(CodeNoDatapath, errors.New("this daemon runs no migration datapath"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := ctl.Status(ep)
	if err != nil {
		return controllerFail(err)
	}
	// A step asked again in the state it leads to is a repeat: a
	// reconnecting follower resends, QEMU may report an event twice.
	noop := false
	switch req.Op {
	case OpStatus:
		noop = true
	case OpStart:
		if st.State != StateNone && st.State != StateAborted {
			if st.To != to {
				return fail(CodeDifferentTo, fmt.Errorf("start %s: already moving to %s, not %s (abort it first)", ep, st.To, to))
			}
			noop = true
		}
	case OpBlackout:
		noop = st.State == StateBlackout
	case OpSwitch:
		noop = st.State == StateSwitched
	case OpDone, OpAbort:
		noop = st.State == StateNone
	}
	if !noop {
		switch req.Op {
		case OpStart:
			err = ctl.Start(ep, to)
		case OpBlackout:
			err = ctl.Blackout(ep)
		case OpSwitch:
			err = ctl.Switch(ep)
		case OpDone:
			err = ctl.Done(ep)
		case OpAbort:
			err = ctl.Abort(ep)
		}
		if err != nil {
			return controllerFail(err)
		}
		if st, err = ctl.Status(ep); err != nil {
			return controllerFail(err)
		}
	}
	resp := Response{OK: true, State: st.State, Held: st.Held, Noop: noop && req.Op != OpStatus}
	resp.From, resp.To = st.From.String(), st.To.String()
	return resp
}

func controllerFail(err error) Response {
	switch {
	case errors.Is(err, ErrNoEndpoint):
		return fail(CodeNoEndpoint, err)
	case errors.Is(err, ErrState):
		return fail(CodeState, err)
	case errors.Is(err, ErrQueueFull):
		return fail(CodeQueueFull, err)
	case errors.Is(err, ErrNoRoute):
		return fail(CodeNoRoute, err)
	case errors.Is(err, ErrStandby):
		return fail(CodeStandby, err)
	}
	return fail(CodeControllerIO, err)
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}
