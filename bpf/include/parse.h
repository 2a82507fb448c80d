/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: bounds-checked header parsing shared by XDP and TC programs.
 *
 * Every read is checked against data_end before it happens, loops are
 * bounded (two VLAN tags, eight IPv6 extension headers), and the parser
 * never trusts a length field further than the frame it was given. It
 * classifies a frame as IP (with L3/L4 offsets filled in), not IP, or
 * malformed; the caller decides what each class means for its verdict.
 */
#pragma once

#include "common.h"

#define VLAN_MAX_DEPTH 2
#define IPV6_EXT_MAX 8

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

enum parse_result {
	PARSE_IP = 0,       /* IPv4 or IPv6, headers in bounds */
	PARSE_NOT_IP = 1,   /* ARP, LLDP, ...: not ours to judge */
	PARSE_MALFORMED = 2 /* truncated or inconsistent headers */
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* ipv6_opt_hdr covers hop-by-hop, routing and destination options. */
struct ipv6_ext {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct pkt {
	__u16 l3_off;   /* offset of the IP header from data */
	__u16 l4_off;   /* offset of the L4 header; 0 when there is none */
	__u16 eth_proto; /* host order: ETH_P_IP or ETH_P_IPV6 */
	__u8 l4_proto;  /* IPPROTO_* after extension headers */
	__u8 frag;      /* 1: a fragment; 2: a non-first fragment (no L4) */
	__u16 vlan_depth;
	/* Addresses as IPv6; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d),
	 * the same form Go's netip.Addr.As16 produces. */
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u16 l4_len;   /* the L4 header and payload, as the IP header says */
	__u16 pad;
};

/* bounded16 returns v, known to the verifier to be below 2^16. Verifiers
 * before 6.6 learn nothing from a byte swap (bpf_ntohs), and the compiler
 * drops a plain mask it can prove redundant; the empty asm hides the proof
 * so the mask stays and the verifier gets its bound. */
static __always_inline __u32 bounded16(__u32 v)
{
	asm volatile("" : "+r"(v));
	return v & 0xffff;
}

static __always_inline void addr_from_v4(__u8 *dst, __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

/* parse_l4 checks the L4 header against both the frame (data_end, for the
 * verifier) and the IP packet (l4_len, what the IP header says is left), so
 * link-layer padding is never mistaken for a header. */
static __always_inline int parse_l4(struct pkt *p, void *data, void *data_end, void *l4, __u32 l4_len)
{
	p->l4_off = l4 - data;
	p->l4_len = l4_len;
	switch (p->l4_proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end || l4_len < sizeof(*th))
			return PARSE_MALFORMED;
		if (th->doff < 5 || th->doff * 4 > l4_len || l4 + th->doff * 4 > data_end)
			return PARSE_MALFORMED;
		p->sport = th->source;
		p->dport = th->dest;
		return PARSE_IP;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end || l4_len < sizeof(*uh))
			return PARSE_MALFORMED;
		if (bpf_ntohs(uh->len) < sizeof(*uh) || bpf_ntohs(uh->len) > l4_len)
			return PARSE_MALFORMED;
		p->sport = uh->source;
		p->dport = uh->dest;
		return PARSE_IP;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		/* type, code, checksum and the 4-byte rest of header */
		if (l4 + 8 > data_end || l4_len < 8)
			return PARSE_MALFORMED;
		return PARSE_IP;
	default:
		/* ESP, GRE, ...: no ports; their own programs parse them. */
		return PARSE_IP;
	}
}

static __always_inline int parse_ipv4(struct pkt *p, void *data, void *data_end, void *l3)
{
	struct iphdr *iph = l3;
	__u32 hlen, tot;
	__u16 frag;

	if ((void *)(iph + 1) > data_end)
		return PARSE_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return PARSE_MALFORMED;
	hlen = iph->ihl * 4;
	tot = bounded16(bpf_ntohs(iph->tot_len));
	/* Options must be in the frame; the frame may carry link padding
	 * past tot_len but must not end before it. */
	if (l3 + hlen > data_end || tot < hlen || l3 + tot > data_end)
		return PARSE_MALFORMED;

	addr_from_v4(p->saddr, iph->saddr);
	addr_from_v4(p->daddr, iph->daddr);
	p->l4_proto = iph->protocol;
	frag = bpf_ntohs(iph->frag_off);
	if (frag & 0x1fff) {
		p->frag = 2;
		return PARSE_IP;
	}
	if (frag & 0x2000)
		p->frag = 1;
	return parse_l4(p, data, data_end, l3 + hlen, tot - hlen);
}

static __always_inline int parse_ipv6(struct pkt *p, void *data, void *data_end, void *l3)
{
	struct ipv6hdr *ip6h = l3;
	void *pos = ip6h + 1;
	__u32 plen, ext_len;
	__u8 nh;
	int i;

	if (pos > data_end)
		return PARSE_MALFORMED;
	if (ip6h->version != 6)
		return PARSE_MALFORMED;
	plen = bounded16(bpf_ntohs(ip6h->payload_len));
	if (pos + plen > data_end)
		return PARSE_MALFORMED;

	__builtin_memcpy(p->saddr, &ip6h->saddr, 16);
	__builtin_memcpy(p->daddr, &ip6h->daddr, 16);
	nh = ip6h->nexthdr;

#pragma unroll
	for (i = 0; i < IPV6_EXT_MAX; i++) {
		struct ipv6_ext *ext = pos;

		switch (nh) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(ext + 1) > data_end)
				return PARSE_MALFORMED;
			nh = ext->nexthdr;
			pos += (ext->hdrlen + 1) * 8;
			break;
		case IPPROTO_AH:
			if ((void *)(ext + 1) > data_end)
				return PARSE_MALFORMED;
			nh = ext->nexthdr;
			pos += (ext->hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT: {
			__be16 *off = pos + 2;

			if (pos + 8 > data_end)
				return PARSE_MALFORMED;
			nh = ext->nexthdr;
			p->frag = (bpf_ntohs(*off) & 0xfff8) ? 2 : 1;
			pos += 8;
			break;
		}
		default:
			goto done;
		}
		if (pos > data_end)
			return PARSE_MALFORMED;
	}
	/* More extension headers than we walk: treat as malformed rather
	 * than guess where L4 starts. */
	return PARSE_MALFORMED;
done:
	p->l4_proto = nh;
	ext_len = pos - (void *)(ip6h + 1);
	if (ext_len > plen)
		return PARSE_MALFORMED;
	if (p->frag == 2)
		return PARSE_IP;
	return parse_l4(p, data, data_end, pos, plen - ext_len);
}

/* parse_frame fills p from an Ethernet frame in [data, data_end). */
static __always_inline int parse_frame(struct pkt *p, void *data, void *data_end)
{
	struct ethhdr *eth = data;
	void *pos = eth + 1;
	__u16 proto;
	int i;

	__builtin_memset(p, 0, sizeof(*p));
	if (pos > data_end)
		return PARSE_MALFORMED;
	proto = bpf_ntohs(eth->h_proto);

#pragma unroll
	for (i = 0; i < VLAN_MAX_DEPTH; i++) {
		struct vlan_hdr *vh = pos;

		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		if ((void *)(vh + 1) > data_end)
			return PARSE_MALFORMED;
		proto = bpf_ntohs(vh->encap_proto);
		pos = vh + 1;
		p->vlan_depth++;
	}

	p->eth_proto = proto;
	p->l3_off = pos - data;
	switch (proto) {
	case ETH_P_IP:
		return parse_ipv4(p, data, data_end, pos);
	case ETH_P_IPV6:
		return parse_ipv6(p, data, data_end, pos);
	default:
		return PARSE_NOT_IP;
	}
}
