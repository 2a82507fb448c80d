package health

import (
	"context"
	"errors"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"
)

// State is one backend's verdict as keepalived keeps it: a backend starts
// up (keepalived's default, without alpha); Fall consecutive failures take
// it down, Rise consecutive passes bring it back; a result that agrees
// with the verdict resets the count towards a change.
type State struct {
	Up      bool
	streak  int // consecutive results against the verdict
	Checked time.Time
	Changed time.Time
	LastErr string
	Checks  uint64
	Failed  uint64
}

// NewState is a backend's state before its first check: up.
func NewState(now time.Time) State { return State{Up: true, Changed: now} }

func newStateFor(t Target, now time.Time) State {
	s := NewState(now)
	s.Up = !t.StartDown
	return s
}

// Observe records one check's result (nil: passed) and reports whether the
// verdict changed.
func (s *State) Observe(err error, rise, fall int, now time.Time) bool {
	s.Checks++
	s.Checked = now
	pass := err == nil
	if pass {
		s.LastErr = ""
	} else {
		s.Failed++
		s.LastErr = err.Error()
	}
	if pass == s.Up {
		s.streak = 0
		return false
	}
	s.streak++
	need := fall
	if !s.Up {
		need = rise
	}
	if s.streak < need {
		return false
	}
	s.Up, s.streak, s.Changed = pass, 0, now
	return true
}

// Target is a backend to check and the check to run on it.
type Target struct {
	Service netip.AddrPort
	Backend netip.AddrPort
	Check   Check
	// StartDown starts a new target down (rise passes bring it up), as
	// keepalived's alpha does: the daemon sets it for a backend whose
	// published verdict is down, so a restart does not bring a dead
	// backend back for fall checks. Read only when the target is added.
	StartDown bool
}

// Key names a backend of a service.
type Key struct{ Service, Backend netip.AddrPort }

// Status is what the runner knows of a backend.
type Status struct {
	Service netip.AddrPort `json:"service"`
	Backend netip.AddrPort `json:"backend"`
	Check   string         `json:"check"`
	State
}

// Observer is told of every verdict change (and of each backend's first
// verdict when it is added: up, or down with StartDown). The Maglev table builder is one.
type Observer interface {
	OnHealth(service, backend netip.AddrPort, up bool)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(service, backend netip.AddrPort, up bool)

func (f ObserverFunc) OnHealth(s, b netip.AddrPort, up bool) { f(s, b, up) }

// Options configure a Runner.
type Options struct {
	Log *slog.Logger
	// OnHealth is called, in order per backend and never concurrently,
	// on each verdict change. It must not block for long: changes queue
	// behind it (checks do not).
	OnHealth Observer
	// NewChecker makes a target's checker; nil: NewChecker. Tests fake it.
	NewChecker func(Check) Checker
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Runner checks backends, each on its own goroutine: a check is bounded by
// its timeout, and a slow or hanging backend delays only its own next
// check. Verdict changes go to the observer through a queue of their own,
// so neither the checks nor Set wait for it.
//
// Events "backend down" and "backend up" are logged once per change, with
// the keys service, backend, check, fall (down) or rise (up), checks and
// failed (the backend's counts so far), and err (down: the last error).
type Runner struct {
	o       Options
	mu      sync.Mutex
	workers map[Key]*worker
	events  chan event
	wg      sync.WaitGroup
	stop    chan struct{}
	done    chan struct{}
}

type event struct {
	k  Key
	up bool
}

type worker struct {
	t      Target
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	st     State
}

// New starts a runner with no targets.
func New(o Options) *Runner {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.NewChecker == nil {
		o.NewChecker = NewChecker
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Runner{o: o, workers: map[Key]*worker{}, events: make(chan event, 1024), stop: make(chan struct{}), done: make(chan struct{})}
	go r.deliver()
	return r
}

// deliver hands verdict changes to the observer in order. A check waits
// for the queue only when 1,024 changes are pending behind the observer.
func (r *Runner) deliver() {
	defer close(r.done)
	for {
		select {
		case e := <-r.events:
			if r.o.OnHealth != nil {
				r.o.OnHealth.OnHealth(e.k.Service, e.k.Backend, e.up)
			}
		case <-r.stop:
			return
		}
	}
}

func (r *Runner) emit(k Key, up bool) {
	select {
	case r.events <- event{k, up}:
	case <-r.stop:
	}
}

// Set makes the runner check exactly ts: new targets start (up unless
// StartDown, first check at once), removed ones stop, and a target whose check changed
// starts over. It returns without waiting for any check.
func (r *Runner) Set(ts []Target) {
	want := map[Key]Target{}
	for _, t := range ts {
		want[Key{t.Service, t.Backend}] = t
	}
	r.mu.Lock()
	for k, w := range r.workers {
		if t, ok := want[k]; !ok || !reflect.DeepEqual(t.Check, w.t.Check) {
			// Its check in flight ends by its deadline; Close waits.
			w.cancel()
			delete(r.workers, k)
		}
	}
	for k, t := range want {
		if _, ok := r.workers[k]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		w := &worker{t: t, cancel: cancel, done: make(chan struct{}), st: newStateFor(t, r.o.Now())}
		r.workers[k] = w
		r.wg.Add(1)
		go r.run(ctx, w)
	}
	r.mu.Unlock()
}

func (r *Runner) run(ctx context.Context, w *worker) {
	defer r.wg.Done()
	defer close(w.done)
	t := w.t
	k := Key{t.Service, t.Backend}
	checker := r.o.NewChecker(t.Check)
	r.emit(k, !t.StartDown)
	// The first check runs at once; the next ones at this backend's own
	// phase of the interval, so backends added together (a daemon's
	// start, a service with many backends) are not checked in lockstep.
	tick := time.NewTicker(t.Check.Interval)
	defer tick.Stop()
	first := true
	for {
		cctx, cancel := context.WithTimeout(ctx, t.Check.Timeout)
		err := checker.Check(cctx, t.Service, t.Backend)
		if err == nil && cctx.Err() != nil {
			// A checker that ignored its deadline still failed.
			err = cctx.Err()
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = errors.New("timed out after " + t.Check.Timeout.String())
		}
		cancel()
		if ctx.Err() != nil {
			return // stopped mid-check: the result belongs to no one
		}
		w.mu.Lock()
		changed := w.st.Observe(err, t.Check.Rise, t.Check.Fall, r.o.Now())
		st := w.st
		w.mu.Unlock()
		if changed {
			if st.Up {
				r.o.Log.Info("backend up", "service", t.Service, "backend", t.Backend, "check", t.Check.Kind, "rise", t.Check.Rise,
					"checks", st.Checks, "failed", st.Failed)
			} else {
				r.o.Log.Warn("backend down", "service", t.Service, "backend", t.Backend, "check", t.Check.Kind, "fall", t.Check.Fall,
					"checks", st.Checks, "failed", st.Failed, "err", st.LastErr)
			}
			r.emit(k, st.Up)
		}
		if first {
			first = false
			if p := phase(k, t.Check.Interval); p > 0 {
				wait := time.NewTimer(p)
				select {
				case <-ctx.Done():
					wait.Stop()
					return
				case <-wait.C:
				}
				tick.Reset(t.Check.Interval)
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// phase is backend k's offset in the interval, the same at every start
// (FNV-1a of the service and backend).
func phase(k Key, interval time.Duration) time.Duration {
	h := fnv.New64a()
	b, _ := k.Service.MarshalBinary()
	h.Write(b)
	b, _ = k.Backend.MarshalBinary()
	h.Write(b)
	return time.Duration(h.Sum64() % uint64(interval))
}

// Status lists every backend's state, sorted by service and backend.
func (r *Runner) Status() []Status {
	r.mu.Lock()
	out := make([]Status, 0, len(r.workers))
	for k, w := range r.workers {
		w.mu.Lock()
		out = append(out, Status{Service: k.Service, Backend: k.Backend, Check: w.t.Check.Kind, State: w.st})
		w.mu.Unlock()
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int {
		if c := a.Service.Compare(b.Service); c != 0 {
			return c
		}
		return a.Backend.Compare(b.Backend)
	})
	return out
}

// Close stops every check and waits for the checks in flight (each ends
// by its timeout) and for the observer's last call.
func (r *Runner) Close() {
	r.mu.Lock()
	for k, w := range r.workers {
		w.cancel()
		delete(r.workers, k)
	}
	r.mu.Unlock()
	close(r.stop)
	r.wg.Wait()
	<-r.done
}
