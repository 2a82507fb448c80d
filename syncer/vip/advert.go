// Package vip decides which host of a pair owns the VIPs and moves them:
// heartbeats (adverts) over every path between the two hosts, an election
// by health, ownership, priority and generation, and the takeover itself
// (probe that nobody answers for the addresses, add them, open the VIP
// gate, announce them with gratuitous ARP and unsolicited neighbour
// advertisements on a schedule) and the release (close the gate, remove
// the addresses).
package vip

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Advert is one heartbeat: what a host says about itself.
type Advert struct {
	Name       string // the host's name (at most 32 bytes)
	Boot       uint64 // random per daemon start: a restart resets the sequence
	Seq        uint64 // grows with every advert of one boot
	SentNanos  int64  // the sender's wall clock: information only, never checked
	Priority   uint8
	Generation uint64 // the sync generation: changes whenever a host becomes primary
	Owner      bool   // it holds the VIPs
	Healthy    bool   // its interfaces are up and its programs attached
	CaughtUp   bool   // its state is as fresh as the peer's (a standby that applied everything)
	Yield      bool   // the owner hands the VIPs to the peer (planned handover)
	Want       bool   // a standby with preemption and a better priority asks for the VIPs
	Applied    uint64 // the last sync sequence it applied (standby) or sent and had acknowledged (owner)
	Challenge  uint64 // the sender's nonce: a new boot of the receiver is heard once it echoes it
	Echo       uint64 // the receiver's last Challenge the sender heard, echoed
}

const (
	advertMagic   = "TDVA"
	advertVersion = 2
	advertBody    = 4 + 1 + 1 + 1 + 1 + 8 + 8 + 8 + 8 + 8 + 8 + 8 + 32 // magic, version, flags, priority, name length, boot, seq, sent, generation, applied, challenge, echo, name
	macLen        = sha256.Size
	// AdvertLen is the size of an advert on the wire.
	AdvertLen = advertBody + macLen
)

const (
	flagOwner = 1 << iota
	flagHealthy
	flagCaughtUp
	flagYield
	flagWant
)

// ErrAuth is an advert whose MAC does not verify: not from the pair.
var ErrAuth = errors.New("advert: bad MAC (not signed with the pair's secret)")

// Marshal encodes a and signs it with key (HMAC-SHA256).
func (a Advert) Marshal(key []byte) ([]byte, error) {
	if len(a.Name) > 32 {
		return nil, fmt.Errorf("advert: name %q longer than 32 bytes", a.Name)
	}
	b := make([]byte, 0, AdvertLen)
	b = append(b, advertMagic...)
	var flags byte
	for bit, on := range map[byte]bool{flagOwner: a.Owner, flagHealthy: a.Healthy, flagCaughtUp: a.CaughtUp, flagYield: a.Yield, flagWant: a.Want} {
		if on {
			flags |= bit
		}
	}
	b = append(b, advertVersion, flags, a.Priority, byte(len(a.Name)))
	b = binary.BigEndian.AppendUint64(b, a.Boot)
	b = binary.BigEndian.AppendUint64(b, a.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(a.SentNanos))
	b = binary.BigEndian.AppendUint64(b, a.Generation)
	b = binary.BigEndian.AppendUint64(b, a.Applied)
	b = binary.BigEndian.AppendUint64(b, a.Challenge)
	b = binary.BigEndian.AppendUint64(b, a.Echo)
	var name [32]byte
	copy(name[:], a.Name)
	b = append(b, name[:]...)
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return m.Sum(b), nil
}

// UnmarshalAdvert checks an advert's length, MAC and fields.
func UnmarshalAdvert(b, key []byte) (Advert, error) {
	var a Advert
	if len(b) != AdvertLen {
		return a, fmt.Errorf("advert: %d bytes, want %d", len(b), AdvertLen)
	}
	m := hmac.New(sha256.New, key)
	m.Write(b[:advertBody])
	if !hmac.Equal(m.Sum(nil), b[advertBody:]) {
		return a, ErrAuth
	}
	if string(b[:4]) != advertMagic || b[4] != advertVersion {
		return a, fmt.Errorf("advert: version %d, want %d", b[4], advertVersion)
	}
	flags := b[5]
	a.Priority = b[6]
	nl := int(b[7])
	if nl > 32 {
		return a, fmt.Errorf("advert: name length %d", nl)
	}
	a.Boot = binary.BigEndian.Uint64(b[8:])
	a.Seq = binary.BigEndian.Uint64(b[16:])
	a.SentNanos = int64(binary.BigEndian.Uint64(b[24:]))
	a.Generation = binary.BigEndian.Uint64(b[32:])
	a.Applied = binary.BigEndian.Uint64(b[40:])
	a.Challenge = binary.BigEndian.Uint64(b[48:])
	a.Echo = binary.BigEndian.Uint64(b[56:])
	a.Name = string(b[64 : 64+nl])
	a.Owner, a.Healthy, a.CaughtUp = flags&flagOwner != 0, flags&flagHealthy != 0, flags&flagCaughtUp != 0
	a.Yield, a.Want = flags&flagYield != 0, flags&flagWant != 0
	return a, nil
}
