//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csumtest.c: a test-only program that exercises include/csum.h the way
 * the translating programs will: it rewrites the destination address and
 * port of a TCP or UDP packet and fixes the IP and L4 checksums
 * incrementally. The tests compare its output with a full recomputation.
 * The loader never loads it.
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/csum.h"

const volatile __be32 cfg_daddr4 = 0;
const volatile __be32 cfg_daddr6[4] = {};
const volatile __be16 cfg_dport = 0;

/* fix_l4 updates a TCP or UDP checksum for the address and port change.
 * A UDP checksum of 0 over IPv4 means "none" and stays 0; a computed 0 is
 * sent as 0xffff (RFC 768). */
static __always_inline void fix_l4(__sum16 *check, int udp, int v6, const __be32 *old, const __be32 *new, __be16 oldp, __be16 newp)
{
	if (udp && !v6 && *check == 0)
		return;
	if (v6)
		csum_replace16(check, old, new);
	else
		csum_replace4(check, old[0], new[0]);
	csum_replace2(check, oldp, newp);
	if (udp && *check == 0)
		*check = 0xffff;
}

SEC("xdp")
int xdp_csum_rewrite(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__be32 old[4], new[4];
	__sum16 *check;
	__be16 *dport;
	struct pkt p;
	int udp;

	if (parse_frame(&p, data, data_end) != PARSE_IP || p.frag)
		return XDP_PASS;
	if (p.l4_proto != IPPROTO_TCP && p.l4_proto != IPPROTO_UDP)
		return XDP_PASS;
	udp = p.l4_proto == IPPROTO_UDP;

	void *l4 = data + (p.l4_off & 0x1ff);
	if (l4 + sizeof(struct tcphdr) > data_end && !udp)
		return XDP_ABORTED;
	if (l4 + sizeof(struct udphdr) > data_end)
		return XDP_ABORTED;
	if (udp) {
		check = &((struct udphdr *)l4)->check;
		dport = &((struct udphdr *)l4)->dest;
	} else {
		check = &((struct tcphdr *)l4)->check;
		dport = &((struct tcphdr *)l4)->dest;
	}

	if (p.eth_proto == ETH_P_IP) {
		struct iphdr *iph = data + (p.l3_off & 0xff);

		if ((void *)(iph + 1) > data_end)
			return XDP_ABORTED;
		old[0] = iph->daddr;
		new[0] = cfg_daddr4;
		iph->daddr = new[0];
		csum_replace4(&iph->check, old[0], new[0]);
		fix_l4(check, udp, 0, old, new, *dport, cfg_dport);
	} else {
		struct ipv6hdr *ip6h = data + (p.l3_off & 0xff);
		int i;

		if ((void *)(ip6h + 1) > data_end)
			return XDP_ABORTED;
#pragma unroll
		for (i = 0; i < 4; i++) {
			old[i] = ip6h->daddr.in6_u.u6_addr32[i];
			new[i] = cfg_daddr6[i];
			ip6h->daddr.in6_u.u6_addr32[i] = new[i];
		}
		fix_l4(check, udp, 1, old, new, *dport, cfg_dport);
	}
	*dport = cfg_dport;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
