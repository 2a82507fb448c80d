/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* established.h: segments of a connection entry, both ways: the RFC 5961
 * checks of RSTs and SYNs (seq_track, challenge_ack), the FIN/RST/closing
 * bookkeeping, and the translation of addresses, ports, sequence numbers
 * and windows (xlate; the options follow from the top frame, see
 * fwd_job). from_client and from_backend dispatch a TCP segment to the
 * handshake or here.
 */
#ifndef SYNPROXY_ESTABLISHED_H
#define SYNPROXY_ESTABLISHED_H

/* touch_now is TAI for last-seen times, as of this CPU's last jiffy: the
 * precise clock (bpf_ktime_get_tai_ns, a clocksource read, ~25 ns of an
 * established segment in this VM, docs/synproxy.md "Benchmarks") is read
 * once per jiffy per CPU and kept in scratch; every other segment reads
 * jiffies (which the verifier inlines into one load) and the kept value.
 * A last-seen time needs no better: it is refreshed every SP_TOUCH_NS and
 * expires after seconds, and a clock step is followed within a jiffy.
 * (The coarse clock plus an offset, before, was a helper call and the
 * timekeeper's cache lines per segment.) */
static __always_inline __u64 touch_now(struct scratch *s)
{
	__u64 j = bpf_jiffies64();

	if (s->clock.jiffies != j || !s->clock.tai) {
		s->clock.tai = now_ns();
		s->clock.jiffies = j;
	}
	return s->clock.tai;
}

/* touch refreshes c's last-seen time, at most every SP_TOUCH_NS, so that
 * an active entry is replicated now and then and never expires on the
 * peer while it lives here. */
static __always_inline void touch(struct scratch *s, struct conn_val *c, const struct conn_key *k, int changed)
{
	__u64 now = touch_now(s);

	if (changed || now - c->last_ns > SP_TOUCH_NS) {
		c->last_ns = now;
		sync_mark(SYNC_MAP_CONN, &c->sync, k, sizeof(*k));
	}
}

/* csum_acc4 and csum_acc2 add a field's change (old to new) to acc, a
 * partial sum that xlate folds into the TCP checksum once: one fold and
 * one store for a segment's dozen changed words, not one each. */
static __always_inline __u32 csum_acc4(__u32 acc, __be32 old, __be32 new)
{
	return acc + (__u16)~(old & 0xffff) + (__u16)~(old >> 16) + (new & 0xffff) + (new >> 16);
}

static __always_inline __u32 csum_acc2(__u32 acc, __be16 old, __be16 new)
{
	return acc + (__u16)~old + new;
}

/* xlate rewrites an established segment in place. fwd: client -> backend
 * (destination becomes the backend, the ack and SACK edges move into the
 * backend's sequence space, the timestamp echo into its clock). Otherwise
 * backend -> client (source becomes the VIP, seq and tsval move into what
 * the client was told, the window into the client's scale). Timestamps in
 * an established segment's usual options (NOP NOP TS) are rewritten here
 * in place; other options are left to xlate_opts from the top frame (see
 * struct fwd_job). */
static __always_inline int xlate(struct xdp_md *ctx, const struct pkt *p, const struct conn_val *c, const struct conn_key *k, int fwd, struct fwd_job *j)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th = data + (p->l4_off & 0x1ff);
	__u32 l4_off = p->l4_off & 0x1ff, n, acc = 0;
	const __u8 *to = fwd ? c->baddr : k->vaddr;
	__be16 port = fwd ? c->bport : k->vport;
	__u8 shl = fwd ? c->fwd_shl : c->rev_shl, shr = fwd ? c->fwd_shr : c->rev_shr;
	__be32 old, nw;

	if ((void *)(th + 1) > data_end)
		return -1;
	n = opts_len(th);
	if (p->eth_proto == ETH_P_IP) {
		struct iphdr *ip = data + (p->l3_off & 0x3f);
		__be32 a;

		if ((void *)(ip + 1) > data_end)
			return -1;
		__builtin_memcpy(&a, to + 12, 4);
		if (fwd) {
			csum_replace4(&ip->check, ip->daddr, a);
			acc = csum_acc4(acc, ip->daddr, a);
			ip->daddr = a;
		} else {
			csum_replace4(&ip->check, ip->saddr, a);
			acc = csum_acc4(acc, ip->saddr, a);
			ip->saddr = a;
		}
	} else {
		struct ipv6hdr *ip6 = data + (p->l3_off & 0x3f);
		__be32 *ia, a;
		int i;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		ia = fwd ? (__be32 *)&ip6->daddr : (__be32 *)&ip6->saddr;
#pragma unroll
		for (i = 0; i < 4; i++) {
			__builtin_memcpy(&a, to + 4 * i, 4);
			acc = csum_acc4(acc, ia[i], a);
			ia[i] = a;
		}
	}
	if (fwd) {
		acc = csum_acc2(acc, th->dest, port);
		th->dest = port;
		if (th->ack) {
			old = th->ack_seq;
			nw = bpf_htonl(bpf_ntohl(old) - c->seq_delta);
			acc = csum_acc4(acc, old, nw);
			th->ack_seq = nw;
		}
	} else {
		acc = csum_acc2(acc, th->source, port);
		th->source = port;
		old = th->seq;
		nw = bpf_htonl(bpf_ntohl(old) + c->seq_delta);
		acc = csum_acc4(acc, old, nw);
		th->seq = nw;
	}
	if (shl != shr) {
		__be16 w = bpf_htons(rescale(bpf_ntohs(th->window), shl, shr));

		acc = csum_acc2(acc, th->window, w);
		th->window = w;
	}
	/* Options: only timestamps (both ways) and SACK (client -> backend)
	 * change. */
	j->opts = n > 0 && n <= 40 && (c->flags & (CONN_F_TS | CONN_F_SACK));
	j->where = l4_off << 8 | n;
	j->tsval_add = fwd ? 0 : c->ts_delta;
	j->tsecr_add = fwd ? -c->ts_delta : 0;
	j->sack_add = fwd ? -c->seq_delta : 0;
	if (j->opts && n == 12) {
		/* NOP NOP TS: two words change in place, no walk. */
		__be32 *b = (void *)(th + 1);

		if ((void *)(b + 3) > data_end)
			return -1;
		if (b[0] == bpf_htonl(TCPOPT_NOP << 24 | TCPOPT_NOP << 16 | TCPOPT_TS << 8 | 10)) {
			nw = bpf_htonl(bpf_ntohl(b[1]) + j->tsval_add);
			acc = csum_acc4(acc, b[1], nw);
			b[1] = nw;
			nw = bpf_htonl(bpf_ntohl(b[2]) + j->tsecr_add);
			acc = csum_acc4(acc, b[2], nw);
			b[2] = nw;
			j->opts = 0;
		}
	}
	th->check = ~csum_fold32((__u16)~th->check + acc);
	return 0;
}

static __always_inline __u32 l4_payload(const struct pkt *p, const struct tcphdr *th)
{
	return p->l4_len - th->doff * 4;
}

/* What seq_track makes of a segment of an established or closing entry. */
enum seq_verdict {
	SEQ_OK = 0,    /* acceptable: tracked, a FIN counts */
	SEQ_FWD,       /* forwarded untracked (the endpoint judges it) */
	SEQ_RESET,     /* a RST at the expected sequence: forwarded, closing */
	SEQ_CHALLENGE, /* a RST in the window: a challenge ACK instead */
	SEQ_DROP,      /* a RST outside the window: dropped */
	SEQ_STALE,     /* a RST behind the window, within X's last flight */
};

/* seq_track checks a segment (not a SYN) from one side of an established
 * or closing entry against the sequence state and advances that state
 * (RFC 5961). X is the sender, Y the receiver; X's sequence numbers are in
 * X's own space (the client's and the backend's spaces differ by
 * seq_delta; acks from the client are moved into the backend's first).
 *
 * A RST resets when its seq is X's nxt (the end of all X sent: what Y
 * expects next once it has it all) or X's una (what Y last acknowledged,
 * and what our challenge ACK carries); one elsewhere in Y's window
 * [una, una + maxwin) is answered with a challenge ACK (forwarded once the
 * entry is closing: the endpoint checks it exactly), any other dropped.
 * Dropped, but told apart: a RST behind una by no more than Y's window
 * from X's nxt. That is where a socket that is gone answers Y's ACKs
 * still in flight when it went (RFC 793: seq = the segment's ack; X never
 * had more than Y's window unacknowledged): each passes the proxy after
 * Y's later ACKs moved una, so all but the last are behind it. Y's
 * RCV.NXT is at una or past it, so Y would drop them too.
 *
 * Other segments move the state only when acceptable: the ack acknowledges
 * nothing Y has not sent and is within X's window of Y's nxt, and the
 * end is within Y's window of X's nxt (RFC 5961 section 5's ACK check,
 * and the window a sender keeps to). Anything else is forwarded untracked,
 * so a forged segment must guess both numbers to move the state. */
static __always_inline int seq_track(struct conn_val *c, int fromc, const struct tcphdr *th, __u32 paylen, __u32 tok)
{
	__u32 *xnxt = fromc ? &c->cnxt : &c->bnxt;
	__u32 *xuna = fromc ? &c->cuna : &c->buna;
	__u32 *ynxt = fromc ? &c->bnxt : &c->cnxt;
	__u32 *yuna = fromc ? &c->buna : &c->cuna;
	__u32 *xmax = fromc ? &c->cmaxwin : &c->bmaxwin;
	__u32 ymax = fromc ? c->bmaxwin : c->cmaxwin;
	__u16 *xwin = fromc ? &c->cwin : &c->bwin;
	__u8 shl = fromc ? c->fwd_shl : c->rev_shl;
	__u8 pick = fromc ? CONN_F_PICK_C : CONN_F_PICK_B;
	__u32 seq = bpf_ntohl(th->seq), ack, end, b;
	__u16 w;

	if (c->trk != tok) {
		/* Tracked elsewhere until now: both sides re-anchor. */
		c->trk = tok;
		c->flags |= CONN_F_PICK_C | CONN_F_PICK_B;
	}
	if (th->rst) {
		if (seq == *xnxt || seq == *xuna)
			return SEQ_RESET;
		if (c->flags & pick)
			return SEQ_CHALLENGE; /* stale state: the sender proves itself */
		if (seq - *xuna < ymax)
			return c->state == CONN_CLOSING ? SEQ_RESET : SEQ_CHALLENGE;
		if ((__s32)(seq - *xuna) < 0 && *xnxt - seq <= ymax + 1)
			return SEQ_STALE;
		return SEQ_DROP;
	}
	if (!th->ack)
		return SEQ_FWD;
	ack = bpf_ntohl(th->ack_seq) - (fromc ? c->seq_delta : 0);
	end = seq + paylen + th->fin;
	w = bpf_ntohs(th->window);
	b = (__u32)w << (shl & 15);
	if (c->flags & pick) {
		/* Re-anchor from this segment, forwards only. */
		c->flags &= ~pick;
		if ((__s32)(end - *xnxt) > 0)
			*xnxt = end;
		if ((__s32)(ack - *ynxt) > 0)
			*ynxt = ack;
		if ((__s32)(ack - *yuna) > 0)
			*yuna = ack;
		if ((__s32)(*xuna - *xnxt) > 0)
			*xuna = *xnxt;
		*xwin = w;
		if (b > *xmax)
			*xmax = b;
		return SEQ_OK;
	}
	/* The +1s: a FIN or a window probe's byte past the window. */
	if ((__s32)(ack - *ynxt) > 0 || *ynxt - ack > *xmax + 1)
		return SEQ_FWD;
	if ((__s32)(end - *xnxt) > 0) {
		if (end - *xnxt > ymax + 1)
			return SEQ_FWD;
		*xnxt = end;
	} else if (*xnxt - end > ymax + 1) {
		return SEQ_FWD;
	}
	if ((__s32)(ack - *yuna) > 0)
		*yuna = ack;
	if (w != *xwin)
		*xwin = w;
	if (b > *xmax)
		*xmax = b;
	return SEQ_OK;
}

/* challenge_ack answers a RST in the window, or a SYN, on an established
 * entry (RFC 5961 sections 3.2 and 4.2) with an ACK back to its sender, in
 * the name of the other side and translated like its segments: seq its
 * nxt, ack what it last acknowledged (never more: an ACK for data the
 * receiver may not have would make the sender drop it), its last window.
 * A sender whose connection is gone answers with a RST at exactly that
 * ack, which resets; a live one ignores it. No timestamps: the proxy
 * keeps no recent tsval. At most one per cfg_challenge_ns per connection. */
__attribute__((noinline)) int challenge_ack(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k, int fromc)
{
	struct hs *h;
	__u32 t;

	if (!p || !c || !k)
		return XDP_DROP;
	t = (__u32)(now_ns() >> 20);
	if (t - c->chal_t < (__u32)(cfg_challenge_ns >> 20)) {
		sp_count(SP_CHALLENGE_LIMITED);
		return XDP_DROP;
	}
	c->chal_t = t;
	h = hs_start(0);
	if (!h)
		return XDP_DROP;
	if (fromc) {
		__builtin_memcpy(h->saddr, k->vaddr, 16);
		__builtin_memcpy(h->daddr, k->caddr, 16);
		h->sport = k->vport;
		h->dport = k->cport;
		h->seq = c->bnxt + c->seq_delta;
		h->ack = c->cuna;
		h->window = rescale(c->bwin, c->rev_shl, c->rev_shr);
	} else {
		__builtin_memcpy(h->saddr, k->caddr, 16);
		__builtin_memcpy(h->daddr, c->baddr, 16);
		h->sport = k->cport;
		h->dport = c->bport;
		h->seq = c->cnxt;
		h->ack = c->buna;
		h->window = rescale(c->cwin, c->fwd_shl, c->fwd_shr);
	}
	h->flags = TCPF_ACK;
	h->v4 = p->eth_proto == ETH_P_IP;
	if (hs_write_xdp(ctx, p->l3_off))
		return XDP_DROP;
	sp_count(SP_CHALLENGE_ACK);
	return xdp_tx_back(ctx);
}

/* est_seg carries a segment of an established or closing entry from one
 * side (fromc: the client) on, after the RFC 5961 checks: the FIN/RST/
 * closing bookkeeping (each side's FIN counts once, when acceptable; a
 * reset or FINs both ways close the entry, counted once), the service's
 * counters, the entry's refresh (replicated now when it changed), then
 * the translation, whose options and forwarding the top frame finishes
 * (FWD_PENDING). Inlined with a constant fromc into both callers. */
static __always_inline int est_seg(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k, const struct tcphdr *th, int fromc)
{
	__u8 fin = fromc ? 1 : 2;
	struct svc_counters *sc;
	struct scratch *s = scratch(0);
	struct fwd_job *j;
	int changed = 0, r;
	__u32 tok;

	if (!s)
		return XDP_DROP;
	tok = s->clock.tok;
	if (!tok)
		tok = s->clock.tok = local_token();
	r = seq_track(c, fromc, th, l4_payload(p, th), tok);
	if (r == SEQ_CHALLENGE)
		return challenge_ack(ctx, p, c, k, fromc);
	if (r == SEQ_DROP || r == SEQ_STALE) {
		sp_count(r == SEQ_DROP ? SP_RST_BAD : SP_RST_STALE);
		return XDP_DROP;
	}
	if (th->fin && r == SEQ_OK && !(c->fins & fin)) {
		c->fins |= fin;
		changed = 1;
	}
	if (r == SEQ_RESET || c->fins == 3) {
		if (c->state != CONN_CLOSING)
			sp_count(SP_CLOSED);
		changed |= c->state != CONN_CLOSING;
		c->state = CONN_CLOSING;
	}
	if ((sc = svc_stats(c->svc))) {
		if (fromc) {
			sc->pkts_in++;
			sc->bytes_in += l4_payload(p, th);
		} else {
			sc->pkts_out++;
			sc->bytes_out += l4_payload(p, th);
		}
	}
	touch(s, c, k, changed);
	j = fwd_job_start(s, p);
	if (xlate(ctx, p, c, k, fromc, j))
		return XDP_DROP;
	nh_resolve(ctx, c, j, !fromc, ((p->l4_off - p->l3_off) & 0x1ff) + p->l4_len, fromc ? p->saddr : k->vaddr, fromc ? c->baddr : p->daddr, tok);
	sp_count(fromc ? SP_FWD : SP_REV);
	return FWD_PENDING;
}

/* conn_seg handles a segment from one side (fromc: the client) of a
 * connection entry: a SYN, the handshake's wait for the backend, or
 * est_seg. Inlined with a constant fromc into client_seg and backend_seg,
 * each a frame (and a verification) of its own. */
static __always_inline int conn_seg(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k, int fromc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;

	if (!p || !c || !k)
		return XDP_DROP;
	th = data + (p->l4_off & 0x1ff);
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	if (th->syn) {
		/* From the client, a pure SYN never gets here (it is answered
		 * without a lookup): this is a SYN with other flags. From the
		 * backend, a SYN-ACK completes the backend handshake and
		 * opens the client's window: it needs a clone, so TC ingress
		 * does it. Waiting for the backend, any other is dropped; on
		 * an established entry it gets a challenge ACK (RFC 5961
		 * section 4) and goes no further. */
		if (!fromc && th->ack)
			return XDP_PASS;
		if (c->state == CONN_SYN_SENT) {
			sp_count(fromc ? SP_DUP_ACK : SP_BAD_FLAGS);
			return XDP_DROP;
		}
		return challenge_ack(ctx, p, c, k, fromc);
	}
	if (c->state == CONN_SYN_SENT)
		return fromc ? client_syn_sent(ctx, p, c, k, th) : backend_syn_sent(ctx, p, c, k, th);
	return est_seg(ctx, p, c, k, th, fromc);
}

/* client_seg handles a segment from a client with a connection entry. */
__attribute__((noinline)) int client_seg(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k)
{
	return conn_seg(ctx, p, c, k, 1);
}

/* backend_seg handles a segment from a backend for a connection entry. */
__attribute__((noinline)) int backend_seg(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k)
{
	return conn_seg(ctx, p, c, k, 0);
}

/* rev_key finds the connection a backend's segment belongs to: the
 * backend's address and port name the service (sp_backend_rev), the
 * destination is the client. */
static __always_inline struct conn_val *rev_lookup(const struct pkt *p, struct conn_key *k, struct svc_key *bk)
{
	struct rev_val *rv;

	__builtin_memset(bk, 0, sizeof(*bk));
	__builtin_memcpy(bk->addr, p->saddr, 16);
	bk->port = p->sport;
	bk->proto = IPPROTO_TCP;
	rv = bpf_map_lookup_elem(&sp_backend_rev, bk);
	if (!rv)
		return 0;
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->caddr, p->daddr, 16);
	__builtin_memcpy(k->vaddr, rv->vaddr, 16);
	k->cport = p->dport;
	k->vport = rv->vport;
	k->proto = IPPROTO_TCP;
	return bpf_map_lookup_elem(&sp_conns, k);
}

/* from_backend handles what is not addressed to a service: a proxied
 * connection's backend segments, or not ours at all. */
static __always_inline int from_backend(struct xdp_md *ctx, struct pkt *p, struct scratch *s)
{
	struct conn_val *c;

	c = rev_lookup(p, &s->ck, &s->rk);
	if (!c)
		return XDP_PASS; /* not a proxied flow */
	return backend_seg(ctx, p, c, &s->ck);
}

/* from_client handles a segment to a service. */
static __always_inline int from_client(struct xdp_md *ctx, struct pkt *p, const struct svc_val *svc, struct scratch *s)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct conn_key *ck = &s->ck;
	const struct cookie_keys *keys;
	struct conn_val *c;
	struct tcphdr *th;

	if (!p || !svc)
		return XDP_DROP;
	th = data + (p->l4_off & 0x1ff);
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	/* A SYN is answered without looking for its connection: under a
	 * flood every lookup would miss, in a table far larger than the
	 * caches, and cost a SYN more than the rest of its path. A SYN for
	 * a live entry (stray or spoofed) gets a SYN-ACK, which the real
	 * client answers with an ACK the backend takes as a duplicate; a
	 * client reusing the port of a closing entry replaces it with its
	 * cookie ACK (below). */
	if (th->syn && !th->ack && !th->rst && !th->fin) {
		keys = secret();
		if (!keys)
			goto no_secret;
		return answer_syn(ctx, p, keys, svc->id);
	}
	__builtin_memset(ck, 0, sizeof(*ck));
	__builtin_memcpy(ck->caddr, p->saddr, 16);
	__builtin_memcpy(ck->vaddr, p->daddr, 16);
	ck->cport = p->sport;
	ck->vport = p->dport;
	ck->proto = IPPROTO_TCP;
	c = bpf_map_lookup_elem(&sp_conns, ck);
	if (c) {
		if (c->state != CONN_CLOSING || !reuse_ack(p, th))
			return client_seg(ctx, p, c, ck);
		/* The client reused the port of a closing entry: its ACK
		 * completes a new handshake; the old entry goes. */
		conn_delete(ck);
	}
	keys = secret();
	if (!keys)
		goto no_secret;
	if (th->ack && !th->syn && !th->rst && !th->fin)
		return cookie_ack(ctx, p, keys, svc);
	sp_count(SP_BAD_FLAGS);
	return XDP_DROP;
no_secret:
	sp_count(SP_NO_SECRET);
	return XDP_DROP;
}

#endif /* SYNPROXY_ESTABLISHED_H */
