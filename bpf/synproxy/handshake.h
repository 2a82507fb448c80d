/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* handshake.h: the two handshakes. Their segments' checksums are checked
 * in full (tcp_csum_ok). The client's SYN is answered with a
 * cookie SYN-ACK (answer_syn); its ACK with a valid cookie makes the
 * connection entry and becomes the SYN to the backend (cookie_ack,
 * backend_syn), sent again while the client waits (client_syn_sent); the
 * backend's SYN-ACK (TC) completes it (backend_synack) or its RST refuses
 * it (backend_syn_sent).
 */
#ifndef SYNPROXY_HANDSHAKE_H
#define SYNPROXY_HANDSHAKE_H

/* The longest handshake segment whose checksum is verified: longer ones
 * are dropped as unverifiable (bad_checksum). A SYN's payload (TCP Fast
 * Open data) is never more than an MSS. */
#define CSUM_CHUNKS 256 /* of 64 bytes: 16 KiB */

struct csum_walk {
	struct xdp_md *ctx;
	__u64 sum;
	__u32 off, left;
	__u32 bad;
};

/* csum_step adds the next 64 bytes (or what is left, zero-padded) of a
 * segment to the sum: chunks start at multiples of 64 from the segment's
 * start, so the 16-bit words line up with the segment's. */
static long csum_step(__u32 i, void *arg)
{
	struct csum_walk *w = arg;
	struct scratch *sc = scratch(0);
	struct csum_scratch *s;
	__u32 n;
	__s64 d;

	if (!sc || w->left == 0)
		return 1;
	s = &sc->csum;
	n = w->left > 64 ? 64 : w->left;
	if (n < 64)
		__builtin_memset(s->seg, 0, sizeof(s->seg));
	n = ((n - 1) & 63) + 1;
	if (bpf_xdp_load_bytes(w->ctx, w->off, s->seg, n)) {
		w->bad = 1;
		return 1;
	}
	d = bpf_csum_diff(0, 0, (void *)s->seg, (n + 3) & 0x7c, 0);
	if (d < 0) {
		w->bad = 1;
		return 1;
	}
	w->sum += (__u32)d;
	w->off += n;
	w->left -= n;
	return 0;
}

/* tcp_csum_long checks a segment longer than the fast path reads (a SYN
 * with a payload), every byte of it, under bpf_loop. Inlined: a frame of
 * its own would put the chain XDP program, cookie_ack, tcp_csum_ok, this,
 * csum_step past 512 bytes on verifiers that round frames up (< 6.8). */
static __always_inline int tcp_csum_long(struct xdp_md *ctx, const struct pkt *p, __u32 tlen, __u16 got)
{
	struct csum_walk w = {};
	__u64 sum;

	if (!p || tlen > CSUM_CHUNKS * 64)
		return 0;
	sum = pseudo_sum(p->eth_proto == ETH_P_IP, p->saddr, p->daddr, tlen);
	if (bpf_ntohs(csum_fold32((__u32)sum)) == got)
		return 1; /* partial: the pseudo-header sum only */
	w.ctx = ctx;
	w.sum = sum;
	w.off = p->l4_off & 0x1ff;
	w.left = tlen;
	bpf_loop(CSUM_CHUNKS, csum_step, &w, 0);
	if (w.bad || w.left)
		return 0;
	sum = (w.sum & 0xffffffff) + (w.sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return csum_fold32((__u32)sum) == 0xffff;
}

/* tcp_csum_ok checks a handshake segment against its checksum: one with
 * options only (at most 60 bytes) in one read, a longer one (a payload)
 * chunk by chunk. A segment from a local socket on a veth carries only
 * the pseudo-header sum (CHECKSUM_PARTIAL, the NIC never ran): that is
 * accepted too, the one form a corrupted segment almost never takes;
 * whatever payload such a segment carries is never read (a SYN's is
 * dropped, the client sends it again once established). */
__attribute__((noinline)) int tcp_csum_ok(struct xdp_md *ctx, const struct pkt *p)
{
	struct scratch *sc = scratch(0);
	struct csum_scratch *s;
	__u32 tlen;
	__s64 sum;
	__u16 got;

	if (!p || !sc)
		return 0;
	s = &sc->csum;
	tlen = p->l4_len;
	if (tlen < 20)
		return 0;
	if (tlen > 60 || tlen % 4) {
		if (bpf_xdp_load_bytes(ctx, (p->l4_off & 0x1ff) + 16, s->seg, 2))
			return 0;
		return tcp_csum_long(ctx, p, tlen, (__u16)s->seg[0] << 8 | s->seg[1]);
	}
	if (bpf_xdp_load_bytes(ctx, p->l4_off & 0x1ff, s->seg, ((tlen - 1) & 63) + 1))
		return 0;
	got = (__u16)s->seg[16] << 8 | s->seg[17];
	sum = pseudo_sum(p->eth_proto == ETH_P_IP, p->saddr, p->daddr, tlen);
	if (bpf_ntohs(csum_fold32((__u32)sum)) == got)
		return 1; /* partial: the pseudo-header sum only */
	sum = csum_words((const __u32 *)s->seg, tlen / 4, sum);
	return csum_fold32((__u32)sum) == 0xffff;
}

/* Linux's SYN options (MSS, SACK_PERM, TS, NOP, WS: tcpopt.h reads the
 * same layout in place) as the TCP header's 32-bit words 5, 6 and 9 load
 * on a little-endian machine, with the variable bytes masked off. */
#define SYN_W5_MASK 0x0000ffff
#define SYN_W5 0x00000402 /* 02 04 (MSS) */
#define SYN_W6 0x0a080204 /* 04 02 (SACK_PERM) 08 0a (TS) */
#define SYN_W9_MASK 0x00ffffff
#define SYN_W9 0x00030301 /* 01 (NOP) 03 03 (WS) */

/* syn_fast answers the SYN most clients send (Linux's, macOS's since
 * 12, floods' that copy them) in place: a 40-byte TCP header with Linux's
 * option layout, nothing after it in the frame, no IPv4 options or IPv6
 * extension headers. Its SYN-ACK has the same length, so the frame is
 * rewritten word by word with direct packet access: the checksum check,
 * the option read and the SYN-ACK's build are one pass over ten words,
 * with no helper call and no copy through scratch memory (what
 * answer_syn's general path costs: tcp_csum_ok's and the option walk's
 * loads, hs_write_xdp's build and store). The bytes are the general
 * path's (TestSynproxyOptionLayouts, the golden SYN-ACKs). It returns -1
 * for any other SYN, which the general path answers. */
static __always_inline int syn_fast(struct xdp_md *ctx, const struct pkt *p, const struct cookie_keys *keys, __u32 svc_id)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3 = p->l3_off & 0x3f, l4 = p->l4_off & 0x1ff;
	int v4 = p->eth_proto == ETH_P_IP;
	__u32 *t = data + l4, *ip = data + l3;
	__u32 w0, isn, tsval, cookie;
	struct cookie_msg msg;
	struct cookie_opts co;
	struct svc_counters *sc;
	__u64 sum, ps;
	__u16 got;

	if (p->l4_len != 40 || l4 != l3 + (v4 ? 20 : 40))
		return -1;
	if ((void *)(t + 10) > data_end || (void *)(ip + 10) > data_end)
		return -1;
	/* Link-layer padding or anything else after the segment: the
	 * general path trims the frame. */
	if ((void *)(t + 10) < data_end)
		return -1;
	if ((t[5] & SYN_W5_MASK) != SYN_W5 || t[6] != SYN_W6 || (t[9] & SYN_W9_MASK) != SYN_W9)
		return -1;

	/* The flow's words straight from the frame, as cookie_mac lays
	 * them out (the addresses in pkt are byte-aligned: read from there,
	 * every word is four byte loads), and the pseudo header's sum from
	 * the same words (pseudo_sum's). */
	w0 = t[0];
	isn = t[1];
	if (v4) {
		msg.m[0] = (__u64)ip[4] << 32 | ip[3];
		msg.m[1] = (__u64)isn << 32 | w0;
		ps = (__u64)ip[3] + ip[4] + bpf_htonl(IPPROTO_TCP << 16 | 40);
	} else {
		/* An IPv4-mapped source: cookie_mac hashes it as IPv4 (the
		 * general path's cookie, which the ACK is checked against). */
		if (ip[2] == 0 && ip[3] == 0 && ip[4] == bpf_htonl(0xffff))
			return -1;
		msg.m[0] = (__u64)ip[3] << 32 | ip[2];
		msg.m[1] = (__u64)ip[5] << 32 | ip[4];
		msg.m[2] = (__u64)ip[7] << 32 | ip[6];
		msg.m[3] = (__u64)ip[9] << 32 | ip[8];
		msg.m[4] = (__u64)isn << 32 | w0;
		ps = (__u64)ip[2] + ip[3] + ip[4] + ip[5] + ip[6] + ip[7] + ip[8] + ip[9] + bpf_htonl(40) + bpf_htonl(IPPROTO_TCP);
	}
	ps = (ps & 0xffffffff) + (ps >> 32);
	ps = (ps & 0xffffffff) + (ps >> 32);

	/* The checksum, as tcp_csum_ok checks it: the pseudo header's sum
	 * alone (a local socket's, tx offload) or the whole segment's. */
	got = t[4] & 0xffff;
	if (csum_fold32((__u32)ps) != got) {
		sum = ps + t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7] + t[8] + t[9];
		sum = (sum & 0xffffffff) + (sum >> 32);
		sum = (sum & 0xffffffff) + (sum >> 32);
		if (csum_fold32((__u32)sum) != 0xffff) {
			sp_count(SP_BAD_CSUM);
			return XDP_DROP;
		}
	}

	/* What the client offered: all of MSS, SACK, timestamps and a
	 * window scale (above 14 means 14, RFC 7323). */
	co.mss = bpf_ntohs((__u16)(t[5] >> 16));
	co.sack = 1;
	co.wscale = t[9] >> 24 > 14 ? 14 : t[9] >> 24;
	tsval = t[7];
	cookie = cookie_make_msg(keys, &msg, v4, &co);

	/* The SYN-ACK: hs_build's bytes for this SYN. Ports swapped; the
	 * cookie as ISN; data offset 10, SYN|ACK, window 0 (the point: no
	 * data before the handshake is ours); MSS, SACK_PERM, NOP, WS
	 * SP_WSCALE, TS with our clock starting at the cookie and the
	 * client's tsval echoed. The pseudo header's sum is the SYN's: the
	 * same addresses, swapped. */
	t[0] = w0 >> 16 | w0 << 16;
	t[1] = bpf_htonl(cookie);
	t[2] = bpf_htonl(bpf_ntohl(isn) + 1);
	t[3] = 0x000012a0;
	t[5] = SYN_W5 | (__u32)bpf_htons(v4 ? cfg_mss4 : cfg_mss6) << 16;
	t[6] = 0x03010204; /* 04 02 (SACK_PERM) 01 (NOP) 03 (WS) */
	t[7] = 0x0a080003 | SP_WSCALE << 8; /* 03 SP_WSCALE 08 0a (TS) */
	t[8] = t[1];
	t[9] = tsval;
	sum = ps + t[0] + t[1] + t[2] + t[3] + t[5] + t[6] + t[7] + t[8] + t[9];
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	t[4] = csum_finish(sum);
	if (v4) {
		/* 45 00 | 00 3c | 00 00 | 40 00 (DF) | 40 (TTL 64) 06 | check */
		__u32 a = ip[3];

		ip[3] = ip[4];
		ip[4] = a;
		ip[0] = 0x3c000045;
		ip[1] = 0x00400000;
		sum = (__u64)ip[0] + ip[1] + 0x0640 + ip[3] + ip[4];
		sum = (sum & 0xffffffff) + (sum >> 32);
		ip[2] = 0x0640 | (__u32)csum_finish(sum) << 16;
	} else {
		/* version 6, no traffic class or flow label; payload 40, TCP,
		 * hop limit 64; the addresses swapped */
		__u32 a0 = ip[2], a1 = ip[3], a2 = ip[4], a3 = ip[5];

		ip[0] = 0x00000060;
		ip[1] = 0x40062800;
		ip[2] = ip[6];
		ip[3] = ip[7];
		ip[4] = ip[8];
		ip[5] = ip[9];
		ip[6] = a0;
		ip[7] = a1;
		ip[8] = a2;
		ip[9] = a3;
	}
	if ((sc = svc_stats(svc_id)))
		sc->syns++;
	sp_count(SP_SYN);
	return xdp_tx_back(ctx);
}

/* answer_syn turns the SYN in ctx into our SYN-ACK: Ethernet addresses
 * swapped (VLAN tags kept), a fresh IP header, a 40-byte TCP header with
 * window 0, the cookie as ISN and options for what the client offered.
 * The common SYN takes syn_fast; the rest is built in scratch memory
 * and written over the frame (hs_write_xdp). */
__attribute__((noinline)) int answer_syn(struct xdp_md *ctx, struct pkt *p, const struct cookie_keys *keys, __u32 svc_id)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;
	struct tcp_opts o;
	struct hs *h;
	__u32 client_isn;
	struct svc_counters *sc;

	int r;

	if (!p || !keys)
		return XDP_DROP;
	r = syn_fast(ctx, p, keys, svc_id);
	if (r >= 0)
		return r;
	th = data + (p->l4_off & 0x1ff);
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	if (!tcp_csum_ok(ctx, p)) {
		sp_count(SP_BAD_CSUM);
		return XDP_DROP;
	}
	parse_tcp_opts(ctx, p->l4_off & 0x1ff, opts_len(th), &o);
	client_isn = bpf_ntohl(th->seq);

	h = hs_start(0);
	if (!h)
		return XDP_DROP;
	__builtin_memcpy(h->saddr, p->daddr, 16);
	__builtin_memcpy(h->daddr, p->saddr, 16);
	h->sport = p->dport;
	h->dport = p->sport;
	h->seq = cookie_make(keys, p->saddr, p->daddr, p->sport, p->dport, bpf_htonl(client_isn), &o.c);
	h->ack = client_isn + 1;
	h->window = 0; /* the point: no data before the handshake is ours */
	h->flags = TCPF_SYN | TCPF_ACK;
	h->v4 = p->eth_proto == ETH_P_IP;
	h->mss = h->v4 ? cfg_mss4 : cfg_mss6;
	h->sack = o.c.sack;
	h->ws = o.c.wscale != COOKIE_WS_NONE ? SP_WSCALE : COOKIE_WS_NONE;
	h->ts = o.ts;
	/* Our timestamp clock for this connection starts at the cookie:
	 * deterministic, and the established path keeps the offset to the
	 * backend's clock. */
	h->tsval = h->seq;
	h->tsecr = o.tsval;
	if (hs_write_xdp(ctx, p->l3_off))
		return XDP_DROP;
	/* The service's id comes from the caller's lookup: a second
	 * lookup of the 20-byte key costs every SYN of a flood. */
	if ((sc = svc_stats(svc_id)))
		sc->syns++;
	sp_count(SP_SYN);
	return xdp_tx_back(ctx);
}

/* backend_syn rewrites the client segment in ctx into the SYN to c's
 * backend: the client's address, port and ISN, its options from the
 * cookie, its timestamp. The backend's SYN-ACK then needs no sequence
 * translation towards the client side of the backend. */
static __always_inline int backend_syn(struct xdp_md *ctx, struct pkt *p, const struct conn_val *c)
{
	struct hs *h;
	__u32 win;

	h = hs_start(0);
	if (!h)
		return XDP_DROP;
	__builtin_memcpy(h->saddr, p->saddr, 16);
	__builtin_memcpy(h->daddr, c->baddr, 16);
	h->sport = p->sport;
	h->dport = c->bport;
	h->seq = c->client_isn;
	h->flags = TCPF_SYN;
	/* A SYN's window is never scaled: the client's in bytes, capped. */
	win = (__u32)c->client_win << (c->wscale == COOKIE_WS_NONE ? 0 : (c->wscale & 15));
	h->window = win > 0xffff ? 0xffff : win;
	h->v4 = p->eth_proto == ETH_P_IP;
	h->mss = c->mss;
	h->sack = !!(c->flags & CONN_F_SACK);
	h->ws = c->wscale;
	h->ts = !!(c->flags & CONN_F_TS);
	h->tsval = c->client_tsval;
	if (hs_write_xdp(ctx, p->l3_off))
		return XDP_DROP;
	return fwd_xdp(ctx, p->l3_off, h->v4, h->saddr, h->daddr, p->vlan_depth);
}

/* flow_hash picks a backend: a fixed key, so the same flow always lands
 * on the same backend (on both hosts, across secret rotations). */
static __always_inline __u32 flow_hash(const struct conn_key *k)
{
	const __u32 key[2] = {0x74616e64, 0x656d2d62};

	return flow_mac(key, k->caddr, k->vaddr, k->cport, k->vport, 0, 0);
}

/* cookie_ok checks a cookie for the segment p. Not inlined: cookie_ack
 * checks twice, and the 6.1 verifier adds every inlined copy's stack to
 * the frame. */
static __attribute__((noinline)) int cookie_ok(const struct cookie_keys *keys, const struct pkt *p, __be32 isn, __u32 cookie, struct cookie_opts *co)
{
	if (!keys || !p || !co)
		return 0;
	return cookie_check(keys, p->saddr, p->daddr, p->sport, p->dport, isn, cookie, co);
}

/* secret is the cookie keys, or 0 when none is set (nothing answered). */
static __always_inline const struct cookie_keys *secret(void)
{
	const struct cookie_keys *keys;
	__u32 zero = 0;

	keys = bpf_map_lookup_elem(&sp_cookie_keys, &zero);
	if (!keys || (keys->key[0][0] | keys->key[0][1] | keys->key[1][0] | keys->key[1][1]) == 0)
		return 0;
	return keys;
}

/* reuse_ack: th, a segment for a closing entry, is a pure ACK whose
 * acknowledgment is a cookie of ours for its sequence number (or, a
 * zero-window probe after a lost first ACK, for the ISN itself): the
 * client has reused the port for a new connection. An ACK that belongs
 * to the old connection passes this with the odds of a forged cookie.
 * A frame of its own: inlined, it would grow the program's top frame past
 * what 6.1's 512-byte limit on a call chain leaves. */
static __attribute__((noinline)) int reuse_ack(const struct pkt *p, const struct tcphdr *th)
{
	const struct cookie_keys *keys = secret();
	struct cookie_opts co;
	__u32 cookie;

	if (!keys || !p || !th)
		return 0;
	cookie = bpf_ntohl(th->ack_seq) - 1;
	if (!th->ack || th->syn || th->rst || th->fin)
		return 0;
	return cookie_ok(keys, p, bpf_htonl(bpf_ntohl(th->seq) - 1), cookie, &co) ||
	       ((p->l4_len & 0xffff) == (__u32)th->doff * 4 && cookie_ok(keys, p, th->seq, cookie, &co));
}

/* cookie_ack handles an ACK with no connection entry: the third packet of
 * a handshake this proxy answered, if its cookie says so. */
__attribute__((noinline)) int cookie_ack(struct xdp_md *ctx, struct pkt *p, const struct cookie_keys *keys, const struct svc_val *svc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;
	__be32 client_isn;
	__u32 cookie;
	struct tcp_opts o;
	struct cookie_opts co = {};
	struct scratch *scr = scratch(0);
	struct conn_key *k;
	struct conn_val *v;
	struct backend_key bk;
	struct backend *b;
	struct conn_val *cur;
	struct svc_counters *sc;

	if (!p || !keys || !svc || !scr)
		return XDP_DROP;
	/* The key is from_client's, in scratch memory (stack is short). */
	k = &scr->ck;
	v = &scr->cookie.v;
	__builtin_memset(v, 0, sizeof(*v));
	th = data + (p->l4_off & 0x1ff);
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	client_isn = bpf_htonl(bpf_ntohl(th->seq) - 1);
	cookie = bpf_ntohl(th->ack_seq) - 1;
	v->client_win = bpf_ntohs(th->window);
	if (!cookie_ok(keys, p, client_isn, cookie, &co)) {
		/* The client's first ACK was lost, and with the window at 0
		 * all it sends is zero-window probes: no payload, seq one
		 * below its next, the ISN itself. They complete the
		 * handshake as well. */
		if ((p->l4_len & 0xffff) != (__u32)th->doff * 4 || !cookie_ok(keys, p, th->seq, cookie, &co)) {
			sp_count(SP_COOKIE_BAD);
			return XDP_DROP;
		}
		client_isn = th->seq;
	}
	if (!tcp_csum_ok(ctx, p)) {
		sp_count(SP_BAD_CSUM);
		return XDP_DROP;
	}
	/* Timestamps were agreed iff the ACK carries them. */
	parse_tcp_opts(ctx, p->l4_off & 0x1ff, opts_len(th), &o);

	v->svc = svc->id;
	/* The service's Maglev table (maglev.h); without one, the fixed
	 * hash over its backends. */
	v->backend = pick_backend(svc, flow_hash(k));
	bk.svc = svc->id;
	bk.idx = v->backend;
	b = v->backend == SP_MAGLEV_NONE ? 0 : bpf_map_lookup_elem(&sp_backends, &bk);
	if (!b) {
		sp_count(SP_NO_BACKEND);
		return XDP_DROP;
	}
	__builtin_memcpy(v->baddr, b->addr, 16);
	v->bport = b->port;
	v->client_isn = bpf_ntohl(client_isn);
	v->cookie = cookie;
	v->client_tsval = o.tsval;
	v->mss = co.mss;
	v->wscale = co.wscale;
	v->bwscale = COOKIE_WS_NONE;
	v->flags = (co.sack ? CONN_F_SACK : 0) | (o.ts ? CONN_F_TS : 0) | (co.wscale != COOKIE_WS_NONE ? CONN_F_WS : 0);
	v->state = CONN_SYN_SENT;
	/* The client's side of the sequence tracking: what the backend
	 * will expect next (the cookie ACK's seq), and its window in bytes
	 * (in its own scale, which it believes in force once it offered
	 * one). The backend's side starts at its SYN-ACK. */
	v->cnxt = v->client_isn + 1;
	v->cuna = v->cnxt;
	v->cwin = v->client_win;
	v->cmaxwin = (__u32)v->client_win << (co.wscale == COOKIE_WS_NONE ? 0 : (co.wscale & 15));
	v->trk = local_token();
	v->tries = 1;
	v->created_ns = now_ns();
	v->last_ns = v->created_ns;
	v->syn_ns = v->created_ns;
	if (bpf_map_update_elem(&sp_conns, k, v, BPF_NOEXIST)) {
		cur = bpf_map_lookup_elem(&sp_conns, k);
		sp_count(cur ? SP_DUP_ACK : SP_CONN_FULL);
		return XDP_DROP;
	}
	cur = bpf_map_lookup_elem(&sp_conns, k);
	if (!cur)
		return XDP_DROP;
	sync_mark(SYNC_MAP_CONN, &cur->sync, k, sizeof(*k));
	sp_count(SP_COOKIE_OK);
	sp_count(SP_BACKEND_SYN);
	if ((sc = svc_stats(svc->id)))
		sc->conns++;
	backend_count_conn(cur->svc, cur->backend);
	return backend_syn(ctx, p, cur);
}

/* rst_to_client rewrites ctx into a RST from the VIP to the client of k,
 * at sequence seq, and sends it back where it came from. */
static __always_inline int rst_to_client(struct xdp_md *ctx, const struct pkt *p, const struct conn_key *k, __u32 seq, __u32 ack, int back)
{
	struct hs *h = hs_start(0);

	if (!h)
		return XDP_DROP;
	__builtin_memcpy(h->saddr, k->vaddr, 16);
	__builtin_memcpy(h->daddr, k->caddr, 16);
	h->sport = k->vport;
	h->dport = k->cport;
	h->seq = seq;
	h->ack = ack;
	h->flags = TCPF_RST | TCPF_ACK;
	h->v4 = p->eth_proto == ETH_P_IP;
	h->ws = COOKIE_WS_NONE;
	if (hs_write_xdp(ctx, p->l3_off))
		return XDP_DROP;
	if (back)
		return xdp_tx_back(ctx);
	return fwd_xdp(ctx, p->l3_off, h->v4, h->saddr, h->daddr, p->vlan_depth);
}

/* client_syn_sent handles a client segment (not a SYN) while the entry
 * waits for the backend. */
static __always_inline int client_syn_sent(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k, const struct tcphdr *th)
{
	struct svc_counters *sc;
	__u64 now;

	if (th->rst) {
		/* Our window towards the client is 0: only a RST at
		 * exactly what the backend will expect (the cookie
		 * ACK's seq) resets; no challenge. */
		if (bpf_ntohl(th->seq) != c->client_isn + 1) {
			sp_count(SP_RST_BAD);
			return XDP_DROP;
		}
		conn_delete(k);
		sp_count(SP_CLOSED);
		return XDP_DROP;
	}
	/* The client is waiting (zero-window probes, ACK retries): at
	 * most one backend SYN per retry interval, whatever the rate
	 * of its segments (an ACK storm costs a lookup each). */
	now = now_ns();
	if (now - c->syn_ns < cfg_syn_retry_ns) {
		sp_count(SP_DUP_ACK);
		return XDP_DROP;
	}
	if (c->tries >= cfg_syn_tries) {
		if ((sc = svc_stats(c->svc)))
			sc->failed++;
		sp_count(SP_BACKEND_TIMEOUT);
		__u32 seq = bpf_ntohl(th->ack_seq), ack = bpf_ntohl(th->seq);

		conn_delete(k);
		return rst_to_client(ctx, p, k, seq, ack, 1);
	}
	c->tries++;
	c->syn_ns = now;
	sp_count(SP_SYN_RETRY);
	return backend_syn(ctx, p, c);
}

/* rst_to_backend rewrites ctx (a backend's segment) into a RST from the
 * client of k to the backend at seq, sent back where it came from. */
static __always_inline int rst_to_backend(struct xdp_md *ctx, const struct pkt *p, const struct conn_key *k, const struct conn_val *c, __u32 seq)
{
	struct hs *h = hs_start(0);

	if (!h)
		return XDP_DROP;
	__builtin_memcpy(h->saddr, k->caddr, 16);
	__builtin_memcpy(h->daddr, c->baddr, 16);
	h->sport = k->cport;
	h->dport = c->bport;
	h->seq = seq;
	h->ack = 0;
	h->flags = TCPF_RST;
	h->v4 = p->eth_proto == ETH_P_IP;
	h->ws = COOKIE_WS_NONE;
	if (hs_write_xdp(ctx, p->l3_off))
		return XDP_DROP;
	return xdp_tx_back(ctx);
}

/* backend_syn_sent handles a backend segment (not a SYN) while the entry
 * waits for its SYN-ACK: a refusal of our SYN, or a stale socket's
 * answer. */
static __always_inline int backend_syn_sent(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k, const struct tcphdr *th)
{
	struct svc_counters *sc;

	/* A refusal acknowledges our SYN: the client's ISN + 1. */
	if (th->rst && th->ack && bpf_ntohl(th->ack_seq) == c->client_isn + 1) {
		if ((sc = svc_stats(c->svc)))
			sc->failed++;
		sp_count(SP_BACKEND_RST);
		conn_delete(k);
		return rst_to_client(ctx, p, k, c->cookie + 1, c->client_isn + 1, 0);
	}
	/* An ACK of something other than our SYN comes from a socket the
	 * backend still has on this 4-tuple (a connection the proxy lost:
	 * tandem down, a restart, a client reusing the port): it answers our
	 * SYN with a challenge ACK, and would until it times out. Like a TCP
	 * in SYN-SENT (RFC 9293 3.10.7.3), reset it at the sequence it
	 * acknowledges: the stale socket goes, and the SYN sent again on the
	 * client's next segment finds the backend listening. */
	if (!th->rst && th->ack && bpf_ntohl(th->ack_seq) != c->client_isn + 1) {
		sp_count(SP_BAD_ACK);
		return rst_to_backend(ctx, p, k, c, bpf_ntohl(th->ack_seq));
	}
	sp_count(th->rst ? SP_RST_BAD : SP_BAD_FLAGS);
	return XDP_DROP;
}

/* The SYN-ACK's fields, read before the packet is rewritten twice. */
struct synack {
	struct pkt p;
	__u32 seq;
	__u16 window;
	__u8 v4;
	__u8 pad;
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	struct tcp_opts o;
};

/* backend_synack: the packet becomes the window update to the client
 * (cloned out towards the client), then the ACK to the backend (sent back
 * out of the interface it came in on). */
__attribute__((noinline)) int backend_synack(struct __sk_buff *skb, struct synack *s, struct conn_val *c, const struct conn_key *k)
{
	struct bpf_fib_lookup f = {};
	struct hs *h;
	struct svc_counters *sc;
	__u8 cws;
	int r;

	if (!s || !c || !k)
		return TC_ACT_SHOT;
	if (c->state == CONN_SYN_SENT) {
		cws = c->wscale;
		c->backend_isn = s->seq;
		c->seq_delta = c->cookie - s->seq;
		c->bwscale = s->o.c.wscale;
		c->ts_delta = c->cookie - s->o.tsval;
		if (!s->o.ts)
			c->flags &= ~CONN_F_TS;
		/* Scaling is in force only if both ends offered it; the
		 * client was told SP_WSCALE whenever it offered. */
		if (cws != COOKIE_WS_NONE && c->bwscale != COOKIE_WS_NONE) {
			c->fwd_shl = c->fwd_shr = cws;
			c->rev_shl = c->bwscale;
		} else {
			c->fwd_shl = cws == COOKIE_WS_NONE ? 0 : cws;
			c->fwd_shr = 0;
			c->rev_shl = 0;
		}
		c->rev_shr = cws == COOKIE_WS_NONE ? 0 : SP_WSCALE;
		/* The backend's side of the sequence tracking: a SYN-ACK's
		 * window is never scaled. */
		c->bnxt = s->seq + 1;
		c->buna = c->bnxt;
		c->bmaxwin = s->window;
		c->bwin = s->window >> (c->rev_shl & 15);
		c->trk = local_token();
		c->state = CONN_ESTABLISHED;
		c->last_ns = now_ns();
		sync_mark(SYNC_MAP_CONN, &c->sync, k, sizeof(*k));
		sp_count(SP_ESTABLISHED);
		if ((sc = svc_stats(c->svc)))
			sc->established++;
	} else if (s->seq != c->backend_isn) {
		sp_count(SP_BAD_ACK);
		return TC_ACT_SHOT;
	}

	/* 1. The window update: what the client would have had in a SYN-ACK
	 * from the backend, as an ACK from the VIP. */
	h = hs_start(1);
	if (!h)
		return TC_ACT_SHOT;
	__builtin_memcpy(h->saddr, k->vaddr, 16);
	__builtin_memcpy(h->daddr, k->caddr, 16);
	h->sport = k->vport;
	h->dport = k->cport;
	h->seq = c->cookie + 1;
	h->ack = c->client_isn + 1;
	h->flags = TCPF_ACK;
	h->window = rescale(s->window, 0, c->rev_shr);
	h->v4 = s->v4;
	h->ws = COOKIE_WS_NONE;
	h->ts = !!(c->flags & CONN_F_TS);
	h->tsval = s->o.tsval + c->ts_delta;
	h->tsecr = s->o.tsecr;
	if (hs_write_skb(skb, s->p.l3_off))
		return TC_ACT_SHOT;
	f.ifindex = skb->ingress_ifindex;
	f.l4_protocol = IPPROTO_TCP;
	if (s->v4) {
		f.family = AF_INET;
		f.tot_len = 20 + 20 + (h->ts ? 12 : 0);
		__builtin_memcpy(&f.ipv4_src, h->saddr + 12, 4);
		__builtin_memcpy(&f.ipv4_dst, h->daddr + 12, 4);
	} else {
		f.family = AF_INET6;
		f.tot_len = 40 + 20 + (h->ts ? 12 : 0);
		__builtin_memcpy(f.ipv6_src, h->saddr, 16);
		__builtin_memcpy(f.ipv6_dst, h->daddr, 16);
	}
	r = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	if (r == BPF_FIB_LKUP_RET_SUCCESS && !s->p.vlan_depth) {
		bpf_skb_store_bytes(skb, 0, f.dmac, ETH_ALEN, 0);
		bpf_skb_store_bytes(skb, ETH_ALEN, f.smac, ETH_ALEN, 0);
		if (bpf_clone_redirect(skb, f.ifindex, 0) == 0)
			sp_count(SP_WIN_UPDATE);
	} else if (r == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* No neighbour entry for the client yet (a host that just took
		 * the VIPs has never talked to it): the copy goes up this
		 * interface's stack, still addressed to this host's MAC, and
		 * the kernel forwards it, resolving the neighbour. */
		if (bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS) == 0)
			sp_count(SP_WIN_UPDATE);
	}
	/* Without a route now, the client's zero-window probe recovers. */

	/* 2. The ACK that completes the backend's handshake. */
	__builtin_memcpy(h->saddr, k->caddr, 16);
	__builtin_memcpy(h->daddr, c->baddr, 16);
	h->sport = k->cport;
	h->dport = c->bport;
	h->seq = c->client_isn + 1;
	h->ack = s->seq + 1;
	h->window = rescale(c->client_win, c->fwd_shl, c->fwd_shr);
	h->tsval = c->client_tsval;
	h->tsecr = s->o.tsval;
	if (hs_write_skb(skb, s->p.l3_off))
		return TC_ACT_SHOT;
	bpf_skb_store_bytes(skb, 0, s->smac, ETH_ALEN, 0);
	bpf_skb_store_bytes(skb, ETH_ALEN, s->dmac, ETH_ALEN, 0);
	return bpf_redirect(skb->ifindex, 0);
}

#endif /* SYNPROXY_HANDSHAKE_H */
