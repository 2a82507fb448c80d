package loader

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The SYN proxy's established segments keep their next hop (interface and
// MACs, from a FIB lookup) in the connection entry while the next-hop
// generation (sp_nh_gen) stays where it was (bpf/synproxy/fwd.h,
// nh_resolve): a FIB lookup per segment was the largest cost of the
// established path (docs/synproxy.md, "Benchmarks"). NextHopWatcher moves
// the generation whenever the kernel's routes, rules, next hops,
// neighbours, addresses, links or forwarding settings change, so the next
// segment of every connection looks its next hop up again.

// BumpNextHopGen moves the next-hop generation on by one: every cached
// next hop is looked up again at its connection's next segment. The daemon
// is the map's only writer.
func BumpNextHopGen(m *ebpf.Map) error {
	var g uint32
	if err := m.Lookup(uint32(0), &g); err != nil {
		return fmt.Errorf("read sp_nh_gen: %w", err)
	}
	if err := m.Update(uint32(0), g+1, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write sp_nh_gen: %w", err)
	}
	return nil
}

// NextHopWatcher bumps the next-hop generation on every routing change in
// the network namespace it was made in.
type NextHopWatcher struct {
	c     *netlink.Conn
	gen   *ebpf.Map
	bumps atomic.Uint64
}

// WatchNextHops subscribes to the routing changes of the calling thread's
// network namespace (the socket stays in it); Run acts on them.
func WatchNextHops(gen *ebpf.Map) (*NextHopWatcher, error) {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{Groups: unix.RTMGRP_LINK | unix.RTMGRP_NEIGH |
		unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_IFADDR | unix.RTMGRP_IPV6_ROUTE})
	if err != nil {
		return nil, fmt.Errorf("subscribe to routing changes: %w", err)
	}
	// Policy rules, next-hop objects and forwarding switched on or off
	// (netconf) have no legacy group bit.
	for _, g := range []uint32{unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE, unix.RTNLGRP_NEXTHOP, unix.RTNLGRP_IPV4_NETCONF, unix.RTNLGRP_IPV6_NETCONF} {
		if err := c.JoinGroup(g); err != nil {
			c.Close()
			return nil, fmt.Errorf("subscribe to routing changes (group %d): %w", g, err)
		}
	}
	w := &NextHopWatcher{c: c, gen: gen}
	// Whatever changed before the subscription is not cached yet: entries
	// made by an earlier daemon may hold hops from before it.
	if err := w.bump(); err != nil {
		c.Close()
		return nil, err
	}
	return w, nil
}

func (w *NextHopWatcher) bump() error {
	if err := BumpNextHopGen(w.gen); err != nil {
		return err
	}
	w.bumps.Add(1)
	return nil
}

// Bumps is how often the watcher moved the generation.
func (w *NextHopWatcher) Bumps() uint64 { return w.bumps.Load() }

// Run moves the generation once per batch of change messages until ctx
// ends or the socket fails. A lost batch (the socket's buffer overflowed)
// moves it too: something changed.
func (w *NextHopWatcher) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { w.c.Close() })
	defer stop()
	for {
		_, err := w.c.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, unix.ENOBUFS) {
			return fmt.Errorf("routing changes: %w", err)
		}
		if err := w.bump(); err != nil {
			return err
		}
	}
}

// Close ends the subscription (and Run).
func (w *NextHopWatcher) Close() error { return w.c.Close() }
