/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* tcpopt.h: TCP options: the walk that reads a segment's (MSS, window
 * scale, SACK, timestamps), and the rewrite that moves an established
 * segment's timestamps and SACK edges into the other side's spaces; and
 * the checksum folding (csum_finish, csum_add_diff) the later stages use
 * too.
 */
#ifndef SYNPROXY_TCPOPT_H
#define SYNPROXY_TCPOPT_H

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOPT_WS 3
#define TCPOPT_SACK_PERM 4
#define TCPOPT_SACK 5
#define TCPOPT_TS 8

/* What a walk over a segment's options found, in host order. */
struct tcp_opts {
	struct cookie_opts c;
	__u8 ts;
	__u32 tsval, tsecr;
};

/* Options are copied (at most 40 bytes) to the stack and walked there
 * under bpf_loop with a masked index: no packet pointer and no loop
 * counter in the verifier's state, so its states converge instead of
 * multiplying with every option kind at every step. The same walk
 * translates: timestamps and SACK edges get constants added in place. */
struct opt_walk {
	__u8 buf[64]; /* zeros past the options read as EOL */
	__u32 i, n;
	__u32 tsval_add, tsecr_add, sack_add;
	struct tcp_opts o;
};

static __always_inline __u32 get32(const __u8 *b, __u32 i)
{
	return (__u32)b[i & 63] << 24 | (__u32)b[(i + 1) & 63] << 16 | (__u32)b[(i + 2) & 63] << 8 | b[(i + 3) & 63];
}

static __always_inline void put32(__u8 *b, __u32 i, __u32 v)
{
	b[i & 63] = v >> 24;
	b[(i + 1) & 63] = v >> 16;
	b[(i + 2) & 63] = v >> 8;
	b[(i + 3) & 63] = v;
}

static long opt_step(__u32 k, void *arg)
{
	struct opt_walk *w = arg;
	__u32 i = w->i & 63, kind, len, e;

	if (i >= w->n)
		return 1;
	kind = w->buf[i];
	if (kind == TCPOPT_EOL)
		return 1;
	if (kind == TCPOPT_NOP) {
		w->i = (i + 1) & 63;
		return 0;
	}
	len = w->buf[(i + 1) & 63];
	if (len < 2 || i + len > w->n)
		return 1;
	switch (kind) {
	case TCPOPT_MSS:
		if (len == 4)
			w->o.c.mss = (__u16)w->buf[(i + 2) & 63] << 8 | w->buf[(i + 3) & 63];
		break;
	case TCPOPT_WS:
		if (len == 3)
			w->o.c.wscale = w->buf[(i + 2) & 63] > 14 ? 14 : w->buf[(i + 2) & 63];
		break;
	case TCPOPT_SACK_PERM:
		if (len == 2)
			w->o.c.sack = 1;
		break;
	case TCPOPT_TS:
		if (len == 10) {
			w->o.ts = 1;
			w->o.tsval = get32(w->buf, i + 2) + w->tsval_add;
			w->o.tsecr = get32(w->buf, i + 6) + w->tsecr_add;
			if (w->tsval_add)
				put32(w->buf, i + 2, w->o.tsval);
			if (w->tsecr_add)
				put32(w->buf, i + 6, w->o.tsecr);
		}
		break;
	case TCPOPT_SACK:
		/* Up to four blocks of two edges, all in the sequence space
		 * of the other direction. */
		if (w->sack_add && (len - 2) % 8 == 0) {
			for (e = 0; e < 8; e++) {
				if (2 + 4 * e >= len)
					break;
				put32(w->buf, i + 2 + 4 * e, get32(w->buf, i + 2 + 4 * e) + w->sack_add);
			}
		}
		break;
	}
	w->i = (i + len) & 63;
	return 0;
}

static __always_inline void opt_walk_init(struct opt_walk *w, __u32 n)
{
	__builtin_memset(w, 0, sizeof(*w));
	w->n = n;
	w->o.c.wscale = COOKIE_WS_NONE;
}

/* opts_len is the length of th's options, 0..40. */
static __always_inline __u32 opts_len(const struct tcphdr *th)
{
	__u32 n = th->doff * 4;

	return n > 20 ? (n - 20) & 63 : 0;
}

/* parse_tcp_opts fills o from the options of the segment at l4_off;
 * malformed options end the walk and what was found before counts. */
__attribute__((noinline)) int parse_tcp_opts(struct xdp_md *ctx, __u32 l4_off, __u32 n, struct tcp_opts *o)
{
	struct opt_walk w;

	if (!o)
		return -1;
	opt_walk_init(&w, n);
	if (n == 0 || n > 40 || bpf_xdp_load_bytes(ctx, l4_off + 20, w.buf, ((n - 1) & 63) + 1))
		goto out;
	/* Linux's SYN (MSS, SACK_PERM, TS, NOP, WS) read in place: most
	 * SYNs, floods' too, need no walk. */
	if (n == 20 && w.buf[0] == TCPOPT_MSS && w.buf[1] == 4 && w.buf[4] == TCPOPT_SACK_PERM && w.buf[5] == 2 &&
	    w.buf[6] == TCPOPT_TS && w.buf[7] == 10 && w.buf[16] == TCPOPT_NOP && w.buf[17] == TCPOPT_WS && w.buf[18] == 3) {
		w.o.c.mss = (__u16)w.buf[2] << 8 | w.buf[3];
		w.o.c.sack = 1;
		w.o.ts = 1;
		w.o.tsval = get32(w.buf, 8);
		w.o.tsecr = get32(w.buf, 12);
		w.o.c.wscale = w.buf[19] > 14 ? 14 : w.buf[19];
		goto out;
	}
	bpf_loop(40, opt_step, &w, 0);
out:
	*o = w.o;
	return 0;
}

static __always_inline __u16 csum_finish(__s64 sum)
{
	return ~csum_fold32((__u32)sum);
}

/* csum_add_diff folds a bpf_csum_diff result into a stored checksum. */
static __always_inline void csum_add_diff(__sum16 *check, __s64 diff)
{
	__u64 s = (__u16)~*check;

	s += (__u32)diff;
	s = (s & 0xffffffff) + (s >> 32);
	*check = ~csum_fold32((__u32)s + (__u32)(s >> 32));
}

/* xlate_opts adds constants to the timestamps and SACK edges of the
 * segment at l4_off (n bytes of options; where = l4_off << 8 | n, five
 * arguments being a BPF call's limit) and fixes its checksum. */
__attribute__((noinline)) int xlate_opts(struct xdp_md *ctx, __u32 where, __u32 tsval_add, __u32 tsecr_add, __u32 sack_add)
{
	__u32 l4_off = (where >> 8) & 0x1ff, n = where & 0xff;
	struct opt_walk w;
	__sum16 check;
	__s64 d;

	if (n == 0 || n > 40)
		return 0;
	if (n == 12) {
		/* NOP NOP TS, what an established segment carries but for
		 * SACK blocks: two words change in place, no walk, no copy
		 * (the helpers' loads and stores were a sixth of the
		 * segment's cost). */
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		struct tcphdr *th = data + l4_off;
		__be32 *b = (void *)(th + 1), nv, ne;

		if ((void *)(b + 3) > data_end)
			return -1;
		if (b[0] == bpf_htonl(TCPOPT_NOP << 24 | TCPOPT_NOP << 16 | TCPOPT_TS << 8 | 10)) {
			nv = bpf_htonl(bpf_ntohl(b[1]) + tsval_add);
			ne = bpf_htonl(bpf_ntohl(b[2]) + tsecr_add);
			csum_replace4(&th->check, b[1], nv);
			csum_replace4(&th->check, b[2], ne);
			b[1] = nv;
			b[2] = ne;
			return 0;
		}
	}
	opt_walk_init(&w, n);
	w.tsval_add = tsval_add;
	w.tsecr_add = tsecr_add;
	w.sack_add = sack_add;
	if (bpf_xdp_load_bytes(ctx, l4_off + 20, w.buf, ((n - 1) & 63) + 1))
		return -1;
	d = bpf_csum_diff((void *)w.buf, n & 0x3c, 0, 0, 0);
	bpf_loop(40, opt_step, &w, 0);
	d = bpf_csum_diff(0, 0, (void *)w.buf, n & 0x3c, d);
	if (bpf_xdp_store_bytes(ctx, l4_off + 20, w.buf, ((n - 1) & 63) + 1))
		return -1;
	if (bpf_xdp_load_bytes(ctx, l4_off + 16, &check, 2))
		return -1;
	csum_add_diff(&check, d);
	return bpf_xdp_store_bytes(ctx, l4_off + 16, &check, 2);
}

#endif /* SYNPROXY_TCPOPT_H */
