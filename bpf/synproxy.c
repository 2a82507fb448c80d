//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* synproxy.c: the zero-window SYN proxy, XDP side.
 *
 * A SYN to a service (VIP:port) is answered here with a SYN-ACK whose
 * window is 0 and whose ISN is a keyed cookie (cookie.h): no state is kept
 * and, with a zero window, a client cannot send data before it proves it
 * saw the SYN-ACK. Its ACK carries the cookie back; a valid one creates the
 * connection entry (replicated by the state sync), a bad one is counted
 * and dropped.
 *
 * Done so far: services, cookies, SYN -> SYN-ACK (IPv4, IPv6, VLAN tags
 * kept), cookie ACK validation and the connection entry. Next: the cookie
 * ACK becomes the SYN to the backend; the backend's SYN-ACK completes the
 * handshake and opens the client's window; established flows translated.
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/csum.h"
#include "include/sync.h"
#include "include/cookie.h"

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOPT_WS 3
#define TCPOPT_SACK_PERM 4
#define TCPOPT_TS 8

/* The window scale this proxy tells clients it uses; the established path
 * rescales the backend's windows to it. */
const volatile __u8 cfg_wscale = 7;
/* The MSS this proxy announces to clients, per family. */
const volatile __u16 cfg_mss4 = 1460;
const volatile __u16 cfg_mss6 = 1440;

enum sp_stat {
	SP_SYN = 0,        /* SYNs to a service answered with a cookie SYN-ACK */
	SP_COOKIE_OK,      /* ACKs with a valid cookie: connection entries made */
	SP_COOKIE_BAD,     /* ACKs with a forged or expired cookie: dropped */
	SP_DUP_ACK,        /* ACKs for a connection already being opened */
	SP_BAD_FLAGS,      /* segments to a service no handshake state explains */
	SP_FRAGMENT,       /* fragments to a service: dropped */
	SP_MALFORMED,      /* truncated or inconsistent TCP to a service */
	SP_NO_SECRET,      /* no cookie secret configured: dropped */
	SP_CONN_FULL,      /* the connection table is full: dropped */
	SP_RESIZE_FAILED,  /* the frame could not be resized for the SYN-ACK */
	SP_STAT_MAX,
};

/* Never read: keep the layouts in BTF for bpf2go. */
const volatile enum sp_stat sp_stat_layout = 0;

struct svc_key {
	__u8 addr[16]; /* the VIP, IPv4-mapped for IPv4 */
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_val {
	__u32 id;
	__u32 backends; /* how many backends the service has */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cookie_keys);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_cookie_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_stats SEC(".maps");

enum conn_state {
	CONN_COOKIE_OK = 1, /* the client proved itself; the backend leg is next */
};

enum conn_flags {
	CONN_F_SACK = 1,
	CONN_F_TS = 2,
	CONN_F_WS = 4,
};

struct conn_key {
	__u8 caddr[16];
	__u8 vaddr[16];
	__be16 cport;
	__be16 vport;
	__u8 proto;
	__u8 pad[3];
};

struct conn_val {
	struct sync_hdr sync;
	__u32 client_isn; /* the client's ISN (host order) */
	__u32 cookie;     /* our ISN towards the client */
	__u32 backend_isn;
	__u32 svc;
	__u32 backend; /* index among the service's backends, by flow hash */
	__u16 mss;     /* the client's, from the cookie */
	__u8 wscale;   /* the client's, COOKIE_WS_NONE: none */
	__u8 flags;    /* enum conn_flags */
	__u8 state;    /* enum conn_state */
	__u8 pad[7];
	__u64 created_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct conn_key);
	__type(value, struct conn_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_conns SEC(".maps");

SYNC_ACCESSORS(sp_conns, struct conn_key, struct conn_val)

static __always_inline void sp_count(__u32 s)
{
	count_percpu(&sp_stats, s, 1);
}

/* What the parser of a SYN's options found. */
struct syn_opts {
	struct cookie_opts c;
	__u8 ts;
	__be32 tsval;
};

/* Options are copied (at most 40 bytes) to the stack and walked there
 * under bpf_loop with a masked index: no packet pointer and no loop
 * counter in the verifier's state, so its states converge instead of
 * multiplying with every option kind at every step. */
struct opt_walk {
	__u8 buf[64]; /* zeros past the options read as EOL */
	__u32 i, n;
	struct syn_opts o;
};

static long opt_step(__u32 k, void *arg)
{
	struct opt_walk *w = arg;
	__u32 i = w->i & 63, kind, len;

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
			w->o.tsval = (__u32)w->buf[(i + 2) & 63] | (__u32)w->buf[(i + 3) & 63] << 8 |
				     (__u32)w->buf[(i + 4) & 63] << 16 | (__u32)w->buf[(i + 5) & 63] << 24;
		}
		break;
	}
	w->i = (i + len) & 63;
	return 0;
}

/* parse_tcp_opts fills o from th's options; malformed options end the
 * walk and what was found before counts (as in the kernel). */
static __always_inline void parse_tcp_opts(struct xdp_md *ctx, struct tcphdr *th, void *data, struct syn_opts *o)
{
	struct opt_walk w = {};
	__u32 off = (void *)(th + 1) - data;

	w.n = th->doff * 4 - sizeof(*th);
	w.o.c.wscale = COOKIE_WS_NONE;
	if (w.n > 0 && w.n <= 40 && bpf_xdp_load_bytes(ctx, off, w.buf, ((w.n - 1) & 63) + 1) == 0)
		bpf_loop(40, opt_step, &w, 0);
	*o = w.o;
}

static __always_inline __u16 csum_finish(__s64 sum)
{
	return ~csum_fold32((__u32)sum);
}

/* answer_syn turns the SYN in ctx into our SYN-ACK: Ethernet addresses
 * swapped (VLAN tags kept), a fresh IP header, a 40-byte TCP header with
 * window 0, the cookie as ISN and options for what the client offered. */
__attribute__((noinline)) int answer_syn(struct xdp_md *ctx, struct pkt *p, const struct cookie_keys *keys)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;
	struct syn_opts o = {};
	struct tcphdr t = {};
	__u8 opt[20];
	__be32 client_seq, cookie, tsval;
	__u32 l3_len, new_len, l3_off;
	int v4;
	__u8 mac[ETH_ALEN];
	struct ethhdr *eth;
	void *l3;
	__s64 sum;

	if (!p || !keys)
		return XDP_DROP;
	th = data + (p->l4_off & 0x1ff);
	l3_off = p->l3_off & 0x3f;
	v4 = p->eth_proto == ETH_P_IP;
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	parse_tcp_opts(ctx, th, data, &o);
	client_seq = th->seq;
	cookie = bpf_htonl(cookie_make(keys, p->saddr, p->daddr, p->sport, p->dport, client_seq, &o.c));

	t.source = p->dport;
	t.dest = p->sport;
	t.seq = cookie;
	t.ack_seq = bpf_htonl(bpf_ntohl(client_seq) + 1);
	t.doff = 10;
	t.syn = 1;
	t.ack = 1;
	t.window = 0; /* the point: no data before the handshake is ours */

	/* MSS | SACK_PERM or NOP NOP | NOP WS or 4 NOP | TS or EOL + zeros */
	__builtin_memset(opt, 0, sizeof(opt));
	opt[0] = TCPOPT_MSS;
	opt[1] = 4;
	{
		__u16 mss = v4 ? cfg_mss4 : cfg_mss6;

		opt[2] = mss >> 8;
		opt[3] = mss & 0xff;
	}
	opt[4] = o.c.sack ? TCPOPT_SACK_PERM : TCPOPT_NOP;
	opt[5] = o.c.sack ? 2 : TCPOPT_NOP;
	opt[6] = TCPOPT_NOP;
	if (o.c.wscale != COOKIE_WS_NONE) {
		opt[7] = TCPOPT_WS;
		opt[8] = 3;
		opt[9] = cfg_wscale;
	} else {
		opt[7] = opt[8] = opt[9] = TCPOPT_NOP;
	}
	if (o.ts) {
		/* Our timestamp clock for this connection starts at the
		 * cookie: deterministic, and the established path keeps the
		 * offset to the backend's clock. */
		tsval = cookie;
		opt[10] = TCPOPT_TS;
		opt[11] = 10;
		__builtin_memcpy(&opt[12], &tsval, 4);
		__builtin_memcpy(&opt[16], &o.tsval, 4);
	} else {
		opt[10] = TCPOPT_EOL;
	}

	/* The pseudo header and the segment, summed before the frame moves. */
	if (v4) {
		struct {
			__u8 saddr[4], daddr[4];
			__u8 zero, proto;
			__be16 len;
		} ph = {.proto = IPPROTO_TCP, .len = bpf_htons(40)};

		__builtin_memcpy(ph.saddr, p->daddr + 12, 4);
		__builtin_memcpy(ph.daddr, p->saddr + 12, 4);
		sum = bpf_csum_diff(0, 0, (void *)&ph, sizeof(ph), 0);
		l3_len = sizeof(struct iphdr);
	} else {
		struct {
			__u8 saddr[16], daddr[16];
			__be32 len;
			__u8 zero[3], nh;
		} ph = {.len = bpf_htonl(40), .nh = IPPROTO_TCP};

		__builtin_memcpy(ph.saddr, p->daddr, 16);
		__builtin_memcpy(ph.daddr, p->saddr, 16);
		sum = bpf_csum_diff(0, 0, (void *)&ph, sizeof(ph), 0);
		l3_len = sizeof(struct ipv6hdr);
	}
	sum = bpf_csum_diff(0, 0, (void *)&t, sizeof(t), sum);
	sum = bpf_csum_diff(0, 0, (void *)opt, sizeof(opt), sum);
	t.check = csum_finish(sum);

	new_len = l3_off + l3_len + 40;
	/* The length from the helper: the verifier forbids the pointer
	 * arithmetic data_end - data would take. */
	if (bpf_xdp_adjust_tail(ctx, (int)new_len - (int)bpf_xdp_get_buff_len(ctx))) {
		sp_count(SP_RESIZE_FAILED);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);

	if (v4) {
		struct iphdr ip = {
			.version = 4,
			.ihl = 5,
			.tot_len = bpf_htons(20 + 40),
			.frag_off = bpf_htons(0x4000), /* DF */
			.ttl = 64,
			.protocol = IPPROTO_TCP,
		};

		__builtin_memcpy(&ip.saddr, p->daddr + 12, 4);
		__builtin_memcpy(&ip.daddr, p->saddr + 12, 4);
		ip.check = csum_finish(bpf_csum_diff(0, 0, (void *)&ip, sizeof(ip), 0));
		/* One base pointer and a constant-size check: a 6.1 verifier
		 * cannot combine a variable header length with the offset. */
		l3 = data + l3_off;
		if (l3 + sizeof(ip) + 40 > data_end)
			return XDP_DROP;
		__builtin_memcpy(l3, &ip, sizeof(ip));
		__builtin_memcpy(l3 + sizeof(ip), &t, sizeof(t));
		__builtin_memcpy(l3 + sizeof(ip) + sizeof(t), opt, sizeof(opt));
	} else {
		struct ipv6hdr ip6 = {
			.version = 6,
			.payload_len = bpf_htons(40),
			.nexthdr = IPPROTO_TCP,
			.hop_limit = 64,
		};

		__builtin_memcpy(&ip6.saddr, p->daddr, 16);
		__builtin_memcpy(&ip6.daddr, p->saddr, 16);
		l3 = data + l3_off;
		if (l3 + sizeof(ip6) + 40 > data_end)
			return XDP_DROP;
		__builtin_memcpy(l3, &ip6, sizeof(ip6));
		__builtin_memcpy(l3 + sizeof(ip6), &t, sizeof(t));
		__builtin_memcpy(l3 + sizeof(ip6) + sizeof(t), opt, sizeof(opt));
	}
	sp_count(SP_SYN);
	return XDP_TX;
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
	struct syn_opts o = {}, ack_opts = {};
	struct conn_key k = {};
	struct conn_val v = {};
	struct conn_val *cur;

	if (!p || !keys || !svc)
		return XDP_DROP;
	th = data + (p->l4_off & 0x1ff);
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(k.caddr, p->saddr, 16);
	__builtin_memcpy(k.vaddr, p->daddr, 16);
	k.cport = p->sport;
	k.vport = p->dport;
	k.proto = IPPROTO_TCP;
	if (bpf_map_lookup_elem(&sp_conns, &k)) {
		sp_count(SP_DUP_ACK);
		return XDP_DROP;
	}
	client_isn = bpf_htonl(bpf_ntohl(th->seq) - 1);
	cookie = bpf_ntohl(th->ack_seq) - 1;
	if (!cookie_check(keys, p->saddr, p->daddr, p->sport, p->dport, client_isn, cookie, &o.c)) {
		sp_count(SP_COOKIE_BAD);
		return XDP_DROP;
	}
	/* Timestamps were agreed iff the ACK carries them. */
	parse_tcp_opts(ctx, th, data, &ack_opts);
	o.ts = ack_opts.ts;

	v.client_isn = bpf_ntohl(client_isn);
	v.cookie = cookie;
	v.svc = svc->id;
	v.backend = svc->backends ? (cookie_mac(keys->key[0], k.caddr, k.vaddr, k.cport, k.vport, 0, 0) % svc->backends) : 0;
	v.mss = o.c.mss;
	v.wscale = o.c.wscale;
	v.flags = (o.c.sack ? CONN_F_SACK : 0) | (o.ts ? CONN_F_TS : 0) | (o.c.wscale != COOKIE_WS_NONE ? CONN_F_WS : 0);
	v.state = CONN_COOKIE_OK;
	v.created_ns = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&sp_conns, &k, &v, BPF_NOEXIST)) {
		cur = bpf_map_lookup_elem(&sp_conns, &k);
		if (cur) {
			sp_count(SP_DUP_ACK);
			return XDP_DROP;
		}
		sp_count(SP_CONN_FULL);
		return XDP_DROP;
	}
	cur = bpf_map_lookup_elem(&sp_conns, &k);
	if (cur)
		sync_mark(SYNC_MAP_CONN, &cur->sync, &k, sizeof(k));
	sp_count(SP_COOKIE_OK);
	/* The backend leg (this ACK becoming the SYN to the backend) is the
	 * next step; until then the client retransmits its ACK. */
	return XDP_DROP;
}

SEC("xdp")
int xdp_synproxy(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct svc_key sk = {};
	struct svc_val *svc;
	struct cookie_keys *keys;
	struct tcphdr *th;
	struct pkt p;
	__u32 zero = 0;
	int r;

	r = parse_frame(&p, data, data_end);
	if (r != PARSE_IP || p.l4_proto != IPPROTO_TCP)
		return XDP_PASS; /* the gate judges what is not ours */
	__builtin_memcpy(sk.addr, p.daddr, 16);
	sk.port = p.dport;
	sk.proto = IPPROTO_TCP;
	if (p.frag) {
		/* A fragment has no port to match unless it is the first; a
		 * first fragment to a service is dropped (a handshake is never
		 * fragmented). */
		if (p.frag == 1 && bpf_map_lookup_elem(&sp_services, &sk)) {
			sp_count(SP_FRAGMENT);
			return XDP_DROP;
		}
		return XDP_PASS;
	}
	svc = bpf_map_lookup_elem(&sp_services, &sk);
	if (!svc)
		return XDP_PASS;
	th = data + (p.l4_off & 0x1ff);
	if ((void *)(th + 1) > data_end) {
		sp_count(SP_MALFORMED);
		return XDP_DROP;
	}
	keys = bpf_map_lookup_elem(&sp_cookie_keys, &zero);
	if (!keys || (keys->key[0][0] | keys->key[0][1] | keys->key[1][0] | keys->key[1][1]) == 0) {
		sp_count(SP_NO_SECRET);
		return XDP_DROP;
	}
	if (th->syn && !th->ack && !th->rst && !th->fin)
		return answer_syn(ctx, &p, keys);
	if (th->ack && !th->syn && !th->rst && !th->fin)
		return cookie_ack(ctx, &p, keys, svc);
	sp_count(SP_BAD_FLAGS);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
