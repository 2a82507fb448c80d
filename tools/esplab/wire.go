package esplab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/tools/lab"
)

// ESPAt finds the ESP header of an Ethernet frame: ESP over IPv4 or IPv6
// (protocol 50, no extension headers) or in UDP 4500 (RFC 3948, not the
// non-ESP marker nor a keepalive). It returns the header's offset, the
// SPI and the sequence number (host order).
func ESPAt(frame []byte) (off int, spi, seq uint32, ok bool) {
	if len(frame) < 14 {
		return 0, 0, 0, false
	}
	var proto byte
	switch binary.BigEndian.Uint16(frame[12:]) {
	case unix.ETH_P_IP:
		if len(frame) < 34 {
			return 0, 0, 0, false
		}
		ihl := int(frame[14]&0x0f) * 4
		if binary.BigEndian.Uint16(frame[20:])&0x3fff != 0 { // a fragment
			return 0, 0, 0, false
		}
		proto, off = frame[23], 14+ihl
	case unix.ETH_P_IPV6:
		if len(frame) < 54 {
			return 0, 0, 0, false
		}
		proto, off = frame[20], 54
	default:
		return 0, 0, 0, false
	}
	switch proto {
	case unix.IPPROTO_ESP:
	case unix.IPPROTO_UDP:
		if len(frame) < off+8 || binary.BigEndian.Uint16(frame[off+2:]) != 4500 {
			return 0, 0, 0, false
		}
		off += 8
	default:
		return 0, 0, 0, false
	}
	if len(frame) < off+8 {
		return 0, 0, 0, false
	}
	spi, seq = binary.BigEndian.Uint32(frame[off:]), binary.BigEndian.Uint32(frame[off+4:])
	if spi == 0 {
		return 0, 0, 0, false // IKE's non-ESP marker
	}
	return off, spi, seq, true
}

// Forge returns a copy of a captured ESP frame with sequence number seq
// and a bad ICV (its last byte flipped; the ICV is the packet's tail):
// what an attacker can send without the keys. A UDP-encapsulated
// frame's checksum is cleared (0: none, for IPv4).
func Forge(frame []byte, seq uint32) ([]byte, error) {
	off, _, _, ok := ESPAt(frame)
	if !ok {
		return nil, errors.New("esplab: forge: not an ESP frame")
	}
	f := append([]byte(nil), frame...)
	binary.BigEndian.PutUint32(f[off+4:], seq)
	f[len(f)-1] ^= 0xff
	if off >= 8 && f[off-6] == 0x11 && f[off-5] == 0x94 { // UDP 4500: the dport just before
		binary.BigEndian.PutUint16(f[off-2:], 0)
	}
	return f, nil
}

// IKE returns a UDP datagram to port 4500 with the non-ESP marker (four
// zero bytes, RFC 3948 section 2.2) followed by payload: an IKE message
// as it travels once NAT-T is on. It is built on a captured ESP-in-UDP
// frame (its Ethernet and IP headers and ports), lengths and checksums
// recomputed.
func IKE(frame, payload []byte) ([]byte, error) {
	off, _, _, ok := ESPAt(frame)
	if !ok || off < 8 || binary.BigEndian.Uint16(frame[off-6:]) != EncapPort {
		return nil, errors.New("esplab: IKE: not an ESP-in-UDP frame")
	}
	udp := off - 8
	f := append([]byte(nil), frame[:off]...)
	f = append(f, 0, 0, 0, 0)
	f = append(f, payload...)
	ulen := len(f) - udp
	binary.BigEndian.PutUint16(f[udp+4:], uint16(ulen))
	binary.BigEndian.PutUint16(f[udp+6:], 0)
	var pseudo []byte
	if binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_IP {
		binary.BigEndian.PutUint16(f[16:], uint16(len(f)-14))
		binary.BigEndian.PutUint16(f[24:], 0)
		binary.BigEndian.PutUint16(f[24:], ^csum(0, f[14:udp]))
		pseudo = append(append([]byte{}, f[26:34]...), 0, unix.IPPROTO_UDP, byte(ulen>>8), byte(ulen))
	} else {
		binary.BigEndian.PutUint16(f[18:], uint16(ulen))
		pseudo = append(append([]byte{}, f[22:54]...), 0, 0, byte(ulen>>8), byte(ulen), 0, 0, 0, unix.IPPROTO_UDP)
	}
	c := ^csum(uint32(csum(0, pseudo)), f[udp:])
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(f[udp+6:], c)
	return f, nil
}

// csum adds b to the ones' complement sum s (RFC 1071), folded.
func csum(s uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// Capture waits up to timeout for an ESP frame with this SPI (0: any)
// on h's iface, in either direction, and returns it (Ethernet header
// included). Start it before the traffic it should see, or while a
// stream runs.
func Capture(h *lab.Host, iface string, spi uint32, timeout time.Duration) ([]byte, error) {
	var out []byte
	err := h.Do(func() error {
		fd, err := packetSocket(iface)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		buf := make([]byte, 65536)
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			// EINTR: a receive timeout returns it on the runtime's
			// preemption signal.
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("esplab: capture on %s: %w", iface, err)
			}
			if _, s, _, ok := ESPAt(buf[:n]); ok && (spi == 0 || s == spi) {
				out = append([]byte(nil), buf[:n]...)
				return nil
			}
		}
		return fmt.Errorf("esplab: no ESP frame with SPI 0x%x on %s/%s in %s", spi, h.Name, iface, timeout)
	})
	return out, err
}

// Send puts frames on the wire of h's iface as they are (AF_PACKET).
func Send(h *lab.Host, iface string, frames ...[]byte) error {
	return h.Do(func() error {
		fd, err := packetSocket(iface)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		for _, f := range frames {
			sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index, Halen: 6}
			copy(sa.Addr[:], f[:6])
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return fmt.Errorf("esplab: send on %s/%s: %w", h.Name, iface, err)
			}
		}
		return nil
	})
}

func packetSocket(iface string) (int, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return -1, fmt.Errorf("esplab: %w", err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return -1, fmt.Errorf("esplab: packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("esplab: bind packet socket to %s: %w", iface, err)
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func closeFD(fd int) { unix.Close(fd) }
