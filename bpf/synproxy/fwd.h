/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* fwd.h: sending a rewritten frame on: back where it came from
 * (xdp_tx_back), or towards its new destination through a FIB lookup
 * (fwd_xdp), and the pending forward an established segment leaves to the
 * program's top frame (fwd_job).
 */
#ifndef SYNPROXY_FWD_H
#define SYNPROXY_FWD_H

static __always_inline void swap_macs(struct ethhdr *eth)
{
	__u8 mac[ETH_ALEN];

	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
}

static __always_inline int xdp_tx_back(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	swap_macs(eth);
	return XDP_TX;
}

/* fwd_xdp sends a segment the proxy wrote (a backend SYN, a RST, an ICMP
 * error) towards its new destination: a FIB
 * lookup, TTL decremented, MACs from the neighbour table, XDP_REDIRECT.
 * Whatever the lookup cannot finish (no neighbour yet, VLAN tags, TTL
 * running out) goes to the kernel, which forwards the same bytes. */
static __always_inline int fwd_xdp(struct xdp_md *ctx, __u32 l3_off, int v4, const __u8 *saddr, const __u8 *daddr, __u16 vlan_depth)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bpf_fib_lookup f = {};
	struct ethhdr *eth = data;
	long rc;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	f.ifindex = ctx->ingress_ifindex;
	f.l4_protocol = IPPROTO_TCP;
	if (v4) {
		struct iphdr *ip = data + (l3_off & 0x3f);

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		f.family = AF_INET;
		f.tot_len = bpf_ntohs(ip->tot_len);
		__builtin_memcpy(&f.ipv4_src, saddr + 12, 4);
		__builtin_memcpy(&f.ipv4_dst, daddr + 12, 4);
		rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS || vlan_depth || ip->ttl <= 1)
			goto kernel;
		csum_replace2(&ip->check, bpf_htons((__u16)ip->ttl << 8), bpf_htons((__u16)(ip->ttl - 1) << 8));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = data + (l3_off & 0x3f);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		f.family = AF_INET6;
		f.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		__builtin_memcpy(f.ipv6_src, saddr, 16);
		__builtin_memcpy(f.ipv6_dst, daddr, 16);
		rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS || vlan_depth || ip6->hop_limit <= 1)
			goto kernel;
		ip6->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, f.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, f.smac, ETH_ALEN);
	if (f.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(f.ifindex, 0);
kernel:
	sp_count(SP_KERNEL_FWD);
	return FWD_KERNEL;
}

/* mac_copy copies a destination and a source MAC (12 bytes) as three
 * 32-bit words: both ends are word-aligned (struct fwd_job's mac,
 * conn_val's nh_mac, an Ethernet header at the frame's start; x86 has no
 * alignment rule anyway), and clang, which sees __u8 arrays, would copy
 * byte by byte. */
static __always_inline void mac_copy(void *dst, const void *src)
{
	__u32 *d = dst;
	const __u32 *s = src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
}

/* nh_resolve finds the next hop of an established segment towards dst
 * (to: 0 the backend, 1 the client): the one cached in the entry while
 * its generation is current, or a FIB lookup, whose answer is cached. A
 * FIB lookup was the largest cost of a routed segment (~125 ns IPv4,
 * ~250 ns IPv6 here, docs/synproxy.md "Benchmarks"); the generation moves
 * whenever the routes or neighbours change (the daemon,
 * loader.WatchNextHops), so a change is followed at the next segment.
 * What the lookup cannot finish (no neighbour yet, fragmentation needed,
 * VLAN tags) leaves j->nh 0: the kernel forwards the segment. Two CPUs
 * may refresh one entry at once; both write what the same tables say. */
static __always_inline void nh_resolve(struct xdp_md *ctx, struct conn_val *c, struct fwd_job *j, int to, __u16 tot_len, const __u8 *saddr, const __u8 *daddr, __u32 tok)
{
	struct scratch *s;
	struct bpf_fib_lookup *f;
	__u32 gen = nh_gen_now(tok);
	long rc;

	to &= 1;
	j->nh = 0;
	if (j->vlan_depth)
		return;
	if (gen && c->nh_gen == gen && c->nh_ifindex[to] && tot_len <= c->nh_mtu[to]) {
		j->nh = 1;
		j->ifindex = c->nh_ifindex[to];
		mac_copy(j->mac, c->nh_mac[to]);
		return;
	}
	s = scratch(0);
	if (!s)
		return;
	f = (void *)s->nh.f;
	__builtin_memset(f, 0, sizeof(*f));
	f->ifindex = ctx->ingress_ifindex;
	f->l4_protocol = IPPROTO_TCP;
	f->tot_len = tot_len;
	if (j->v4) {
		f->family = AF_INET;
		__builtin_memcpy(&f->ipv4_src, saddr + 12, 4);
		__builtin_memcpy(&f->ipv4_dst, daddr + 12, 4);
	} else {
		f->family = AF_INET6;
		__builtin_memcpy(f->ipv6_src, saddr, 16);
		__builtin_memcpy(f->ipv6_dst, daddr, 16);
	}
	rc = bpf_fib_lookup(ctx, f, sizeof(*f), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return;
	j->nh = 1;
	j->ifindex = f->ifindex;
	__builtin_memcpy(j->mac, f->dmac, ETH_ALEN);
	__builtin_memcpy(j->mac + ETH_ALEN, f->smac, ETH_ALEN);
	if (!gen)
		return;
	if (c->nh_gen != gen) {
		/* A new generation: the other way's hop is stale too. */
		c->nh_ifindex[to ^ 1] = 0;
		c->nh_gen = gen;
	}
	c->nh_mtu[to] = f->mtu_result; /* the route's MTU on success */
	mac_copy(c->nh_mac[to], j->mac);
	c->nh_ifindex[to] = j->ifindex;
}

/* fwd_pending sends an established segment towards the next hop nh_resolve
 * found: hop limit decremented, MACs, XDP_REDIRECT (XDP_TX when it goes
 * back out where it came from). Without a next hop, or with the TTL
 * running out, the kernel forwards the same bytes. */
static __always_inline int fwd_pending(struct xdp_md *ctx, const struct fwd_job *j)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (!j->nh)
		goto kernel;
	if (j->v4) {
		struct iphdr *ip = data + (j->l3_off & 0x3f);

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		if (ip->ttl <= 1)
			goto kernel;
		csum_replace2(&ip->check, bpf_htons((__u16)ip->ttl << 8), bpf_htons((__u16)(ip->ttl - 1) << 8));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = data + (j->l3_off & 0x3f);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		if (ip6->hop_limit <= 1)
			goto kernel;
		ip6->hop_limit--;
	}
	mac_copy(eth, j->mac);
	if (j->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(j->ifindex, 0);
kernel:
	sp_count(SP_KERNEL_FWD);
	return FWD_KERNEL;
}

static __always_inline struct fwd_job *fwd_job_start(struct scratch *s, const struct pkt *p)
{
	__builtin_memset(&s->job, 0, sizeof(s->job));
	s->job.l3_off = p->l3_off;
	s->job.vlan_depth = p->vlan_depth;
	s->job.v4 = p->eth_proto == ETH_P_IP;
	return &s->job;
}

#endif /* SYNPROXY_FWD_H */
