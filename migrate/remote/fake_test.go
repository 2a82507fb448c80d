package remote

import (
	"fmt"
	"net/netip"
	"sync"
)

// fakeController is a Controller with the migration state machine of
// package migrate and a log of the calls that reached it.
type fakeController struct {
	mu    sync.Mutex
	eps   map[netip.Addr]*Status
	calls []string
}

func newFake(eps ...string) *fakeController {
	f := &fakeController{eps: map[netip.Addr]*Status{}}
	for _, e := range eps {
		f.eps[netip.MustParseAddr(e)] = &Status{State: StateNone}
	}
	return f
}

func (f *fakeController) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeController) step(op string, ep netip.Addr, from []string, to string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, op+" "+ep.String())
	st, ok := f.eps[ep]
	if !ok {
		return fmt.Errorf("%s: %w", ep, ErrNoEndpoint)
	}
	for _, s := range from {
		if st.State == s {
			st.State = to
			if to == StateNone {
				st.From, st.To = Dest{}, Dest{}
			}
			return nil
		}
	}
	return fmt.Errorf("%s %s in state %s: %w", op, ep, st.State, ErrState)
}

func (f *fakeController) Start(ep netip.Addr, to Dest) error {
	if err := f.step("start", ep, []string{StateNone}, StateMigrating); err != nil {
		return err
	}
	f.mu.Lock()
	f.eps[ep].To = to
	f.calls[len(f.calls)-1] += " " + to.String()
	f.mu.Unlock()
	return nil
}
func (f *fakeController) Blackout(ep netip.Addr) error {
	return f.step("blackout", ep, []string{StateMigrating}, StateBlackout)
}
func (f *fakeController) Switch(ep netip.Addr) error {
	return f.step("switch", ep, []string{StateMigrating, StateBlackout}, StateSwitched)
}
func (f *fakeController) Done(ep netip.Addr) error {
	return f.step("done", ep, []string{StateSwitched}, StateNone)
}
func (f *fakeController) Abort(ep netip.Addr) error {
	return f.step("abort", ep, []string{StateMigrating, StateBlackout, StateSwitched}, StateNone)
}
func (f *fakeController) Status(ep netip.Addr) (Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.eps[ep]
	if !ok {
		return Status{}, fmt.Errorf("%s: %w", ep, ErrNoEndpoint)
	}
	return *st, nil
}
