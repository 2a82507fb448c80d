package xfrm

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Conn is an XFRM netlink socket for requests (list, GETAE, NEWAE).
type Conn struct{ c *netlink.Conn }

// Dial opens an XFRM netlink socket in the network namespace netns (a
// file descriptor of /proc/PID/ns/net, or 0 for the caller's).
func Dial(netns int) (*Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_XFRM, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("open xfrm netlink (needs CONFIG_XFRM_USER and CAP_NET_ADMIN): %w", err)
	}
	return &Conn{c}, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// List returns every SA of the namespace with its replay state
// (XFRM_MSG_GETSA dump), those filter f accepts (a nil f accepts all).
func (c *Conn) List(f *Filter) ([]SA, error) {
	msgs, err := c.c.Execute(netlink.Message{
		Header: netlink.Header{Type: MsgGetSA, Flags: netlink.Request | netlink.Dump},
	})
	if err != nil {
		return nil, fmt.Errorf("dump xfrm SAs: %w", err)
	}
	var out []SA
	for _, m := range msgs {
		if m.Header.Type != MsgNewSA {
			continue
		}
		sa, err := DecodeSA(m.Data)
		if err != nil {
			return nil, fmt.Errorf("dump xfrm SAs: %w", err)
		}
		if f.Match(sa) {
			out = append(out, sa)
		}
	}
	return out, nil
}

// ErrNoSA is returned when the kernel has no SA by that id.
var ErrNoSA = errors.New("no such SA in the kernel")

// GetAE asks the kernel for the replay state and thresholds of SA id
// (XFRM_MSG_GETAE).
func (c *Conn) GetAE(id SAID) (AEvent, error) {
	msgs, err := c.c.Execute(netlink.Message{
		Header: netlink.Header{Type: MsgGetAE, Flags: netlink.Request},
		Data:   EncodeGetAE(id),
	})
	if err != nil {
		return AEvent{}, fmt.Errorf("get replay state of %s: %w", id, notFound(err))
	}
	for _, m := range msgs {
		if m.Header.Type == MsgNewAE {
			return DecodeAE(m.Data)
		}
	}
	return AEvent{}, fmt.Errorf("get replay state of %s: no XFRM_MSG_NEWAE in the answer", id)
}

// SetReplay installs replay state r into SA id (XFRM_MSG_NEWAE with
// NLM_F_REPLACE). The kernel takes it as it is: SetReplay does not
// compare it with the SA's current state (Resume does).
func (c *Conn) SetReplay(id SAID, r Replay) error {
	_, err := c.c.Execute(netlink.Message{
		Header: netlink.Header{Type: MsgNewAE, Flags: netlink.Request | netlink.Acknowledge | netlink.Replace},
		Data:   EncodeNewAE(id, r),
	})
	if err != nil {
		return fmt.Errorf("set replay state of %s: %w", id, notFound(err))
	}
	return nil
}

func notFound(err error) error {
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%w (%w)", ErrNoSA, err)
	}
	return err
}

// Event is one XFRM notification tandem follows.
type Event struct {
	Type uint16 // MsgNewSA, MsgUpdSA, MsgDelSA, MsgExpire, MsgNewAE
	SA   SA     // NEWSA, UPDSA, DELSA, EXPIRE
	AE   AEvent // NEWAE
	Hard bool   // EXPIRE: the hard limit (the SA is gone), else the soft one
}

// Watcher follows XFRM SA notifications (new, updated, deleted SAs: a
// rekey is a NEWSA with a new SPI, then the old SPI's DELSA) and,
// with aevents, the kernel's replay events (NEWAE, sent when an SA's
// sequence numbers moved by XFRMA_REPLAY_THRESH or its timer fired).
type Watcher struct{ c *netlink.Conn }

// Watch subscribes in namespace netns (0: the caller's). aevents also
// joins XFRMNLGRP_AEVENTS, which switches the kernel's replay
// notifications on for every SA of the namespace (xfrm_aevent_is_on).
func Watch(netns int, aevents bool) (*Watcher, error) {
	groups := uint32(1 << (GroupSA - 1))
	if aevents {
		groups |= 1 << (GroupAEvents - 1)
	}
	c, err := netlink.Dial(unix.NETLINK_XFRM, &netlink.Config{NetNS: netns, Groups: groups})
	if err != nil {
		return nil, fmt.Errorf("subscribe to xfrm events: %w", err)
	}
	return &Watcher{c}, nil
}

// Close ends the subscription (a blocked Next returns an error).
func (w *Watcher) Close() error { return w.c.Close() }

// Next blocks for the next batch of notifications; messages of other
// types are skipped.
func (w *Watcher) Next() ([]Event, error) {
	msgs, err := w.c.Receive()
	if err != nil {
		return nil, fmt.Errorf("receive xfrm events: %w", err)
	}
	var out []Event
	for _, m := range msgs {
		ev := Event{Type: uint16(m.Header.Type)}
		switch ev.Type {
		case MsgNewSA, MsgUpdSA:
			ev.SA, err = DecodeSA(m.Data)
		case MsgDelSA:
			ev.SA, err = DecodeDelSA(m.Data)
		case MsgExpire:
			// struct xfrm_user_expire: the SA, then hard (u8), no attributes.
			ev.SA, err = DecodeSA(m.Data[:min(len(m.Data), sizeUsersaInfo)])
			ev.Hard = len(m.Data) > sizeUsersaInfo && m.Data[sizeUsersaInfo] != 0
		case MsgNewAE:
			ev.AE, err = DecodeAE(m.Data)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("xfrm event %d: %w", ev.Type, err)
		}
		out = append(out, ev)
	}
	return out, nil
}
