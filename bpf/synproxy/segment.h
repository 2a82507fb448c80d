/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* segment.h: the segments this proxy writes from scratch (SYN-ACKs to
 * clients, SYNs and ACKs to backends, window updates, RSTs, challenge
 * ACKs): described in scratch memory (hs_start), built (hs_build) and
 * written over the frame, from XDP (hs_write_xdp) or TC (hs_write_skb).
 */
#ifndef SYNPROXY_SEGMENT_H
#define SYNPROXY_SEGMENT_H

/* pseudo_sum sums the TCP pseudo header for saddr -> daddr, tlen bytes,
 * word by word from the addresses (no header written out): IPv4 is
 * saddr, daddr, then 0 | proto | length; IPv6 the addresses, the length
 * and 0 0 0 proto, each a 32-bit big-endian word. */
static __always_inline __s64 pseudo_sum(int v4, const __u8 *saddr, const __u8 *daddr, __u32 tlen)
{
	__u32 a[4], b[4];
	__u64 sum;

	__builtin_memcpy(a, saddr, 16);
	__builtin_memcpy(b, daddr, 16);
	if (v4)
		sum = (__u64)a[3] + b[3] + bpf_htonl(IPPROTO_TCP << 16 | (tlen & 0xffff));
	else
		sum = (__u64)a[0] + a[1] + a[2] + a[3] + b[0] + b[1] + b[2] + b[3] + bpf_htonl(tlen) + bpf_htonl(IPPROTO_TCP);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return (__u32)sum;
}

/* hs_build writes h's IP and TCP headers into s->buf and returns their
 * length. A SYN's options are laid out as MSS | SACK_PERM or NOP NOP |
 * NOP WS or NOP NOP NOP | TS or EOL and zeros (20 bytes); other segments
 * carry NOP NOP TS or nothing. */
static __always_inline __u32 hs_build(struct seg_scratch *s)
{
	const struct hs *h = &s->h;
	__u32 olen, tlen, l3;
	struct tcphdr *t;
	__u8 *opt;
	__s64 sum;

	olen = h->mss ? 20 : h->ts ? 12 : 0;
	tlen = 20 + olen;
	__builtin_memset(s->buf, 0, sizeof(s->buf));
	if (h->v4) {
		struct iphdr *ip = (void *)s->buf;

		ip->version = 4;
		ip->ihl = 5;
		ip->tot_len = bpf_htons(20 + tlen);
		ip->frag_off = bpf_htons(0x4000); /* DF */
		ip->ttl = 64;
		ip->protocol = IPPROTO_TCP;
		__builtin_memcpy(&ip->saddr, h->saddr + 12, 4);
		__builtin_memcpy(&ip->daddr, h->daddr + 12, 4);
		ip->check = csum_finish(csum_words((const __u32 *)ip, 5, 0));
		l3 = 20;
		t = (void *)(s->buf + 20);
	} else {
		struct ipv6hdr *ip6 = (void *)s->buf;

		ip6->version = 6;
		ip6->payload_len = bpf_htons(tlen);
		ip6->nexthdr = IPPROTO_TCP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, h->saddr, 16);
		__builtin_memcpy(&ip6->daddr, h->daddr, 16);
		l3 = 40;
		t = (void *)(s->buf + 40);
	}
	sum = pseudo_sum(h->v4, h->saddr, h->daddr, tlen);
	opt = (__u8 *)(t + 1);
	if (h->mss) {
		opt[0] = TCPOPT_MSS;
		opt[1] = 4;
		opt[2] = h->mss >> 8;
		opt[3] = h->mss & 0xff;
		opt[4] = h->sack ? TCPOPT_SACK_PERM : TCPOPT_NOP;
		opt[5] = h->sack ? 2 : TCPOPT_NOP;
		opt[6] = TCPOPT_NOP;
		if (h->ws != COOKIE_WS_NONE) {
			opt[7] = TCPOPT_WS;
			opt[8] = 3;
			opt[9] = h->ws;
		} else {
			opt[7] = opt[8] = opt[9] = TCPOPT_NOP;
		}
		if (h->ts) {
			opt[10] = TCPOPT_TS;
			opt[11] = 10;
			*(__be32 *)&opt[12] = bpf_htonl(h->tsval);
			*(__be32 *)&opt[16] = bpf_htonl(h->tsecr);
		} else {
			opt[10] = TCPOPT_EOL;
		}
	} else if (h->ts) {
		opt[0] = TCPOPT_NOP;
		opt[1] = TCPOPT_NOP;
		opt[2] = TCPOPT_TS;
		opt[3] = 10;
		*(__be32 *)&opt[4] = bpf_htonl(h->tsval);
		*(__be32 *)&opt[8] = bpf_htonl(h->tsecr);
	}
	t->source = h->sport;
	t->dest = h->dport;
	t->seq = bpf_htonl(h->seq);
	t->ack_seq = bpf_htonl(h->ack);
	/* Data offset and flags as their two bytes (the TCPF_* bits are the
	 * wire's): one store each, not a read-modify-write per bitfield. */
	((__u8 *)t)[12] = (tlen / 4) << 4;
	((__u8 *)t)[13] = h->flags & (TCPF_FIN | TCPF_SYN | TCPF_RST | TCPF_ACK);
	t->window = bpf_htons(h->window);
	if (olen == 20)
		sum = csum_words((const __u32 *)t, 10, sum);
	else if (olen == 12)
		sum = csum_words((const __u32 *)t, 8, sum);
	else
		sum = csum_words((const __u32 *)t, 5, sum);
	t->check = csum_finish(sum);
	return l3 + tlen;
}

/* hs_start hands out the cleared segment description of a slot. */
static __always_inline struct hs *hs_start(__u32 slot)
{
	struct scratch *s = scratch(slot);

	if (!s)
		return 0;
	__builtin_memset(&s->seg.h, 0, sizeof(s->seg.h));
	s->seg.h.ws = COOKIE_WS_NONE;
	return &s->seg.h;
}

/* hs_write_xdp replaces everything after the Ethernet header (VLAN tags
 * kept) with the segment described in slot 0 (hs_start(0)). */
__attribute__((noinline)) int hs_write_xdp(struct xdp_md *ctx, __u32 l3_off)
{
	struct scratch *s = scratch(0);
	__u32 len;
	int delta;

	if (!s)
		return -1;
	len = hs_build(&s->seg);
	l3_off &= 0x3f;
	if (len > HS_MAX || len < 40)
		return -1;
	/* The length from the helper: the verifier forbids the pointer
	 * arithmetic data_end - data would take. */
	delta = (int)(l3_off + len) - (int)bpf_xdp_get_buff_len(ctx);
	if (delta > 0 && bpf_xdp_adjust_tail(ctx, delta)) {
		/* No tailroom (a frame from a tightly allocated skb): grow at
		 * the front, where XDP always has headroom, and move the
		 * Ethernet header (and VLAN tags) there. */
		if (l3_off < ETH_HLEN || bpf_xdp_load_bytes(ctx, 0, s->seg.l2, ((l3_off - 1) & 63) + 1) || bpf_xdp_adjust_head(ctx, -delta) ||
		    bpf_xdp_store_bytes(ctx, 0, s->seg.l2, ((l3_off - 1) & 63) + 1)) {
			sp_count(SP_RESIZE_FAILED);
			return -1;
		}
	} else if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta)) {
		sp_count(SP_RESIZE_FAILED);
		return -1;
	}
	return bpf_xdp_store_bytes(ctx, l3_off, s->seg.buf, len);
}

/* rescale moves a window from one scale to another (left by shl, right by
 * shr), capped, never closing an open one. */
static __always_inline __u16 rescale(__u16 w, __u8 shl, __u8 shr)
{
	__u32 b = ((__u32)w << (shl & 15)) >> (shr & 15);

	if (b > 0xffff)
		return 0xffff;
	if (!b && w)
		return 1; /* never turn an open window into a closed one */
	return b;
}

/* hs_write_skb is hs_write_xdp for TC: the segment described in slot 1
 * (hs_start(1)). */
__attribute__((noinline)) int hs_write_skb(struct __sk_buff *skb, __u32 l3_off)
{
	struct scratch *s = scratch(1);
	__u32 len;

	if (!s)
		return -1;
	len = hs_build(&s->seg);
	l3_off &= 0x3f;
	if (len > HS_MAX || len < 40)
		return -1;
	if (bpf_skb_change_tail(skb, l3_off + len, 0))
		return -1;
	return bpf_skb_store_bytes(skb, l3_off, s->seg.buf, len, 0);
}

#endif /* SYNPROXY_SEGMENT_H */
