// Package synflood generates SYN floods at kernel speed for the SYN proxy's
// benchmarks: an XDP program run with BPF_PROG_TEST_RUN in live-frame mode
// (BPF_F_TEST_XDP_LIVE_FRAMES) gives every copy of a template SYN a random
// source address and port, fixes both checksums from precomputed sums, and
// transmits it (XDP_TX) out of an interface. No packet goes through a
// socket or the generator's stack, so the generator outruns what a
// gateway answers on the same machine (hping3 stops near 75,000 SYNs/s).
package synflood

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// Offsets in the template: Ethernet, IPv4 without options, TCP.
const (
	offIPCsum  = 14 + 10
	offSaddr   = 14 + 12
	offSport   = 14 + 20
	offTCPCsum = 14 + 20 + 16
)

// Generator is a loaded flood program and its template.
type Generator struct {
	Prog  *ebpf.Program
	Frame []byte
}

// New builds a generator of SYNs to dst (IPv4) from random sources, in
// Ethernet frames from srcMAC to dstMAC. Sources are random in
// 10.0.0.0/8, ports from 1024. The SYN carries MSS, SACK
// permitted, timestamps and window scale, like Linux's.
func New(srcMAC, dstMAC []byte, dst netip.AddrPort) (*Generator, error) {
	if !dst.Addr().Is4() {
		return nil, fmt.Errorf("synflood: %s: IPv4 only", dst)
	}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: []byte{0, 0, 0, 0}, DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: 0, DstPort: layers.TCPPort(dst.Port()), Seq: 0x5eed, SYN: true, Window: 64240, Options: []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
		{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
		{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)},
		{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
	}}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
		&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}, ip, tcp); err != nil {
		return nil, err
	}
	frame := buf.Bytes()
	// Native-order 16-bit sums of everything the checksums cover except
	// the random fields (zero in the template) and the checksums.
	sum := func(b []byte) uint64 {
		var s uint64
		for i := 0; i+1 < len(b); i += 2 {
			s += uint64(binary.NativeEndian.Uint16(b[i:]))
		}
		return s
	}
	tcpLen := len(frame) - 34
	pseudo := make([]byte, 12)
	copy(pseudo[4:], frame[30:34])
	pseudo[9] = 6
	binary.BigEndian.PutUint16(pseudo[10:], uint16(tcpLen))
	baseIP := sum(frame[14:34])
	baseTCP := sum(pseudo) + sum(frame[34:])

	prandom := asm.FnGetPrandomU32
	fold := func(r asm.Register) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R5, r), asm.RSh.Imm(asm.R5, 16), asm.And.Imm(r, 0xffff), asm.Add.Reg(r, asm.R5),
			asm.Mov.Reg(asm.R5, r), asm.RSh.Imm(asm.R5, 16), asm.And.Imm(r, 0xffff), asm.Add.Reg(r, asm.R5),
			asm.Xor.Imm(r, 0xffff),
		}
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R7),
		asm.Add.Imm(asm.R4, int32(len(frame))),
		asm.JGT.Reg(asm.R4, asm.R3, "drop"),
	}
	// The whole template, every time: live-frame mode recycles pages
	// without restoring their bytes, and whoever received a frame may
	// have rewritten it in place (an XDP_TX'd SYN-ACK is the same page).
	for i := 0; i < len(frame); i += 4 {
		if len(frame)-i >= 4 {
			insns = append(insns, asm.StoreImm(asm.R7, int16(i), int64(int32(binary.NativeEndian.Uint32(frame[i:]))), asm.Word))
		} else {
			insns = append(insns, asm.StoreImm(asm.R7, int16(i), int64(int16(binary.NativeEndian.Uint16(frame[i:]))), asm.Half))
		}
	}
	insns = append(insns,
		// Sources in 10.0.0.0/8 (no martians a stack would drop) and
		// ports from 1024.
		prandom.Call(),
		asm.And.Imm(asm.R0, -256),
		asm.Or.Imm(asm.R0, 10),
		asm.StoreMem(asm.R7, offSaddr, asm.R0, asm.Word),
		prandom.Call(),
		asm.Or.Imm(asm.R0, 4),
		asm.StoreMem(asm.R7, offSport, asm.R0, asm.Half),
		asm.LoadMem(asm.R8, asm.R7, offSaddr, asm.Half),
		asm.LoadMem(asm.R9, asm.R7, offSaddr+2, asm.Half),
		asm.LoadImm(asm.R4, int64(baseIP), asm.DWord),
		asm.Add.Reg(asm.R4, asm.R8),
		asm.Add.Reg(asm.R4, asm.R9),
	)
	insns = append(insns, fold(asm.R4)...)
	insns = append(insns,
		asm.StoreMem(asm.R7, offIPCsum, asm.R4, asm.Half),
		asm.LoadImm(asm.R4, int64(baseTCP), asm.DWord),
		asm.Add.Reg(asm.R4, asm.R8),
		asm.Add.Reg(asm.R4, asm.R9),
		asm.LoadMem(asm.R8, asm.R7, offSport, asm.Half),
		asm.Add.Reg(asm.R4, asm.R8),
	)
	insns = append(insns, fold(asm.R4)...)
	insns = append(insns,
		asm.StoreMem(asm.R7, offTCPCsum, asm.R4, asm.Half),
		asm.Mov.Imm(asm.R0, 3), // XDP_TX
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "synflood", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("synflood: load: %w", err)
	}
	return &Generator{Prog: prog, Frame: frame}, nil
}

// xdpMD is struct xdp_md as BPF_PROG_TEST_RUN takes it.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Send transmits n SYNs out of ifindex (the calling thread's network
// namespace). It returns when they are sent.
func (g *Generator) Send(ifindex int, n uint32) error {
	_, err := g.Prog.Run(&ebpf.RunOptions{Data: g.Frame, Repeat: n, Flags: unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		Context: xdpMD{DataEnd: uint32(len(g.Frame)), IngressIfindex: uint32(ifindex)}})
	if err != nil {
		return fmt.Errorf("synflood: send: %w", err)
	}
	return nil
}

// Close releases the program.
func (g *Generator) Close() error { return g.Prog.Close() }
