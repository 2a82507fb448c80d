/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: ICMP errors for a proxied flow. */
#ifndef SYNPROXY_ICMP_H
#define SYNPROXY_ICMP_H

/* icmp_err translates an ICMP error (destination unreachable, packet too
 * big, time exceeded, parameter problem) that quotes a segment of a
 * proxied connection, the way the segment itself was translated, and
 * forwards it: from the backend side (quoting client -> backend) towards
 * the client, as if about client -> VIP; from the client side (quoting
 * VIP -> client) towards the backend, as if about backend -> client. The
 * ICMP checksum follows (for ICMPv6 with its pseudo header); the quoted
 * TCP checksum is left alone (it is often not quoted at all). Anything
 * else is not ours: XDP_PASS. */
static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

__attribute__((noinline)) int icmp_err(struct xdp_md *ctx, struct pkt *p)
{
	struct scratch *scr = scratch(0);
	__u8 *in, *old, *isrc, *idst, *osrc, *odst;
	__u32 l4, ilen, ioff, poff;
	struct svc_key *sk;
	struct conn_key *k;
	struct conn_val *c;
	struct rev_val *rv;
	__be16 isport, idport;
	__sum16 check;
	__u8 type;
	__s64 d;
	int v4, fromb;

	/* Everything in scratch memory: the stack has no room for it. */
	if (!p || !scr)
		return XDP_PASS;
	in = scr->icmp.in;
	old = scr->icmp.old;
	isrc = scr->icmp.isrc;
	idst = scr->icmp.idst;
	osrc = scr->icmp.osrc;
	odst = scr->icmp.odst;
	sk = &scr->icmp.sk;
	k = &scr->icmp.k;
	__builtin_memset(sk, 0, sizeof(*sk));
	__builtin_memset(k, 0, sizeof(*k));
	v4 = p->eth_proto == ETH_P_IP;
	l4 = p->l4_off & 0x1ff;
	if (bpf_xdp_load_bytes(ctx, l4, &type, 1))
		return XDP_PASS;
	if (v4 ? !(type == 3 || type == 11 || type == 12) : !(type >= 1 && type <= 4))
		return XDP_PASS;
	ilen = v4 ? 28 : 48;
	/* The quote (IP header, ports, sequence number) must be inside the
	 * IP packet, not in the frame's padding after it (found by
	 * FuzzSynproxyXDP: such an error was translated from the padding
	 * and its checksum broken). An error quoting less is not ours. */
	if (p->l4_len < 8 + ilen)
		return XDP_PASS;
	if (bpf_xdp_load_bytes(ctx, l4 + 8, in, v4 ? 28 : 48))
		return XDP_PASS;
	__builtin_memcpy(old, in, 48);
	if (v4) {
		if (in[0] != 0x45 || in[9] != IPPROTO_TCP)
			return XDP_PASS;
		addr_from_v4(isrc, *(__be32 *)&in[12]);
		addr_from_v4(idst, *(__be32 *)&in[16]);
		poff = 20;
	} else {
		if ((in[0] >> 4) != 6 || in[6] != IPPROTO_TCP)
			return XDP_PASS;
		__builtin_memcpy(isrc, &in[8], 16);
		__builtin_memcpy(idst, &in[24], 16);
		poff = 40;
	}
	__builtin_memcpy(&isport, &in[poff & 63], 2);
	__builtin_memcpy(&idport, &in[(poff + 2) & 63], 2);
	__builtin_memcpy(osrc, p->saddr, 16);
	__builtin_memcpy(odst, p->daddr, 16);

	/* From the backend side: the quoted segment went client -> backend. */
	__builtin_memcpy(sk->addr, idst, 16);
	sk->port = idport;
	sk->proto = IPPROTO_TCP;
	rv = bpf_map_lookup_elem(&sp_backend_rev, sk);
	fromb = rv != 0;
	if (rv) {
		__builtin_memcpy(k->caddr, isrc, 16);
		__builtin_memcpy(k->vaddr, rv->vaddr, 16);
		k->cport = isport;
		k->vport = rv->vport;
	} else {
		/* From the client side: the quoted segment went VIP -> client. */
		__builtin_memcpy(sk->addr, isrc, 16);
		sk->port = isport;
		if (!bpf_map_lookup_elem(&sp_services, sk))
			return XDP_PASS;
		__builtin_memcpy(k->caddr, idst, 16);
		__builtin_memcpy(k->vaddr, isrc, 16);
		k->cport = idport;
		k->vport = isport;
	}
	k->proto = IPPROTO_TCP;
	c = bpf_map_lookup_elem(&sp_conns, k);
	if (!c || c->state == CONN_SYN_SENT)
		return XDP_PASS;
	if (fromb) {
		/* client -> backend becomes client -> VIP; an error the
		 * backend itself sent comes from the VIP. */
		if (v4)
			__builtin_memcpy(&in[16], k->vaddr + 12, 4);
		else
			__builtin_memcpy(&in[24], k->vaddr, 16);
		__builtin_memcpy(&in[(poff + 2) & 63], &k->vport, 2);
		if (addr_eq(osrc, c->baddr))
			__builtin_memcpy(osrc, k->vaddr, 16);
	} else {
		/* VIP -> client becomes backend -> client, in the backend's
		 * sequence space; the error goes to the backend. */
		__u32 seq;

		if (v4)
			__builtin_memcpy(&in[12], c->baddr + 12, 4);
		else
			__builtin_memcpy(&in[8], c->baddr, 16);
		__builtin_memcpy(&in[poff & 63], &c->bport, 2);
		seq = get32(in, poff + 4) - c->seq_delta;
		put32(in, poff + 4, seq);
		__builtin_memcpy(odst, c->baddr, 16);
	}
	if (v4) {
		/* The quoted IP header's own checksum, recomputed. */
		in[10] = in[11] = 0;
		check = csum_finish(bpf_csum_diff(0, 0, (void *)in, 20, 0));
		__builtin_memcpy(&in[10], &check, 2);
	}
	/* The ICMP checksum: the quoted bytes, and for ICMPv6 the outer
	 * addresses of its pseudo header. */
	d = bpf_csum_diff((void *)old, ilen, (void *)in, ilen, 0);
	if (!v4) {
		d = bpf_csum_diff((void *)p->saddr, 16, (void *)osrc, 16, d);
		d = bpf_csum_diff((void *)p->daddr, 16, (void *)odst, 16, d);
	}
	if (bpf_xdp_load_bytes(ctx, l4 + 2, &check, 2))
		return XDP_PASS;
	csum_add_diff(&check, d);
	if (bpf_xdp_store_bytes(ctx, l4 + 8, in, v4 ? 28 : 48) || bpf_xdp_store_bytes(ctx, l4 + 2, &check, 2))
		return XDP_DROP;
	/* The outer addresses. */
	ioff = p->l3_off & 0x3f;
	if (v4) {
		struct iphdr *ip = (void *)scr->icmp.ip;

		if (bpf_xdp_load_bytes(ctx, ioff, ip, sizeof(*ip)))
			return XDP_DROP;
		__builtin_memcpy(&ip->saddr, osrc + 12, 4);
		__builtin_memcpy(&ip->daddr, odst + 12, 4);
		if (ip->ihl == 5) {
			ip->check = 0;
			ip->check = csum_finish(bpf_csum_diff(0, 0, (void *)ip, sizeof(*ip), 0));
		} else {
			d = bpf_csum_diff((void *)p->saddr + 12, 4, (void *)osrc + 12, 4, 0);
			d = bpf_csum_diff((void *)p->daddr + 12, 4, (void *)odst + 12, 4, d);
			csum_add_diff(&ip->check, d);
		}
		if (bpf_xdp_store_bytes(ctx, ioff, ip, sizeof(*ip)))
			return XDP_DROP;
	} else {
		if (bpf_xdp_store_bytes(ctx, ioff + 8, osrc, 16) || bpf_xdp_store_bytes(ctx, ioff + 24, odst, 16))
			return XDP_DROP;
	}
	sp_count(SP_ICMP);
	return fwd_xdp(ctx, ioff, v4, osrc, odst, p->vlan_depth);
}

#endif /* SYNPROXY_ICMP_H */
