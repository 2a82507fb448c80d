//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* synproxy.c: the zero-window SYN proxy.
 *
 * Handshake, client side (XDP): a SYN to a service (VIP:port) is answered
 * with a SYN-ACK whose window is 0 and whose ISN is a keyed cookie
 * (cookie.h): no state, and with a zero window the client cannot send data
 * before it proves it saw the SYN-ACK. Its ACK carries the cookie back: a
 * valid one creates the connection entry (replicated by the state sync) and
 * the ACK itself is rewritten into the SYN to the backend, with the client's
 * ISN and options, so the backend's sequence space towards the client needs
 * no translation.
 *
 * Handshake, backend side (TC ingress, because it needs a clone): the
 * backend's SYN-ACK becomes the ACK that completes the backend handshake,
 * and a clone becomes the window update that opens the client's window. A
 * lost window update costs nothing: the client's zero-window probes are
 * translated like any segment and the backend's answer carries its window.
 *
 * Established (XDP, both ways): addresses and ports (NAT: the backends
 * route back through the gateway), the backend's sequence numbers (our ISN
 * towards the client was the cookie), timestamps (the client saw ours start
 * at the cookie), SACK blocks, and windows when the scale the client was
 * told differs from the backend's; checksums updated incrementally. The
 * result is forwarded with a FIB lookup and XDP_REDIRECT, or passed to the
 * kernel when the lookup cannot finish (no neighbour yet, VLAN-tagged).
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/csum.h"
#include "include/sync.h"
#include "include/cookie.h"
#include "include/gate.h"
#include "include/chain.h"

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOPT_WS 3
#define TCPOPT_SACK_PERM 4
#define TCPOPT_SACK 5
#define TCPOPT_TS 8

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_PSH 0x08
#define TCPF_ACK 0x10

#define AF_INET 2
#define AF_INET6 10

#define SP_MAX_SERVICES 1024

/* The window scale this proxy tells clients it uses; the established path
 * rescales the backend's windows to it. */
const volatile __u8 cfg_wscale = 7;
/* The MSS this proxy announces to clients, per family. */
const volatile __u16 cfg_mss4 = 1460;
const volatile __u16 cfg_mss6 = 1440;
/* A backend SYN is sent again when the client's packets show it is still
 * waiting and this long has passed; after cfg_syn_tries SYNs the client
 * gets a RST. */
const volatile __u64 cfg_syn_retry_ns = 1000000000ULL;
const volatile __u32 cfg_syn_tries = 4;
/* An entry's last-seen time (TAI, comparable between the two hosts) is
 * refreshed, and the entry replicated again, at most this often. */
const volatile __u64 cfg_touch_ns = 1000000000ULL;
/* At most one challenge ACK per connection this often (RFC 5961 section
 * 7; Linux's tcp_invalid_ratelimit is the same 500 ms, per socket). Per
 * connection, not global: a global budget is a side channel an off-path
 * attacker can read (CVE-2016-5696). */
const volatile __u64 cfg_challenge_ns = 500000000ULL;

enum sp_stat {
	SP_SYN = 0,         /* SYNs to a service answered with a cookie SYN-ACK */
	SP_COOKIE_OK,       /* ACKs with a valid cookie: connection entries made */
	SP_COOKIE_BAD,      /* ACKs with a forged or expired cookie: dropped */
	SP_DUP_ACK,         /* client segments while the backend is not ready: dropped */
	SP_BAD_FLAGS,       /* segments to a service no handshake state explains */
	SP_FRAGMENT,        /* fragments to a service: dropped */
	SP_MALFORMED,       /* truncated or inconsistent TCP to a service */
	SP_NO_SECRET,       /* no cookie secret configured: dropped */
	SP_CONN_FULL,       /* the connection table is full: dropped */
	SP_RESIZE_FAILED,   /* the frame could not be resized for a rewrite */
	SP_BACKEND_SYN,     /* SYNs sent to backends (first tries) */
	SP_SYN_RETRY,       /* SYNs sent to backends again */
	SP_BACKEND_TIMEOUT, /* backends that never answered: RST to the client */
	SP_BACKEND_RST,     /* backends that refused: RST to the client */
	SP_ESTABLISHED,     /* backend SYN-ACKs: handshakes completed */
	SP_WIN_UPDATE,      /* window updates sent to clients */
	SP_FWD,             /* established segments client -> backend */
	SP_REV,             /* established segments backend -> client */
	SP_CLOSED,          /* connections closed by FIN both ways or RST */
	SP_BAD_CSUM,        /* handshake segments with a bad checksum: dropped */
	SP_NO_BACKEND,      /* valid cookie but the service has no backend */
	SP_KERNEL_FWD,      /* translated, then left to the kernel to forward */
	SP_ICMP,            /* ICMP errors for a proxied flow translated */
	SP_BAD_ACK,         /* backend SYN-ACKs that acknowledge nothing we sent */
	SP_NOT_OWNER,       /* segments to a VIP the gate says another host owns */
	SP_CHALLENGE_ACK,   /* challenge ACKs sent (RFC 5961): RST in window, SYN */
	SP_CHALLENGE_LIMITED, /* challenge ACKs not sent: the per-connection rate */
	SP_RST_BAD,         /* RSTs outside the window: dropped */
	SP_RST_STALE,       /* RSTs behind the window, within the sender's last
			     * flight: a closed socket's answers to ACKs that
			     * were in flight (the receiver drops them too) */
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
	__u32 id;       /* below SP_MAX_SERVICES: indexes sp_svc_stats */
	__u32 backends; /* how many backends the service has */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SP_MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_services SEC(".maps");

struct backend_key {
	__u32 svc;
	__u32 idx;
};

struct backend {
	__u8 addr[16]; /* IPv4-mapped for IPv4, like the VIP */
	__be16 port;
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct backend_key);
	__type(value, struct backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_backends SEC(".maps");

/* A backend's reply names the client but not the VIP: this maps the
 * backend's address and port back to its service (one service per backend
 * address and port, which the CLI enforces). Keyed like sp_services. */
struct rev_val {
	__u8 vaddr[16];
	__be16 vport;
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct rev_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_backend_rev SEC(".maps");

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

/* Per service (by id), per CPU. */
struct svc_counters {
	__u64 syns;        /* SYNs answered */
	__u64 conns;       /* valid cookies: backend SYNs sent */
	__u64 established; /* backend handshakes completed */
	__u64 failed;      /* backends that refused or never answered */
	__u64 pkts_in, bytes_in;   /* client -> backend, established */
	__u64 pkts_out, bytes_out; /* backend -> client, established */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SP_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_svc_stats SEC(".maps");

enum conn_state {
	CONN_SYN_SENT = 1,    /* the client proved itself; waiting for the backend */
	CONN_ESTABLISHED = 2, /* both handshakes done: translating */
	CONN_CLOSING = 3,     /* FIN both ways or a RST: expires soon */
};

enum conn_flags {
	CONN_F_SACK = 1,
	CONN_F_TS = 2,
	CONN_F_WS = 4,
	/* The sequence state of a side is stale (the entry came from the
	 * peer, or from before a restart): its next segment re-anchors it. */
	CONN_F_PICK_C = 8,
	CONN_F_PICK_B = 16,
};

/* Never read: keep the layout in BTF for bpf2go. */
const volatile enum conn_state conn_state_layout = 0;

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
	__u8 baddr[16];   /* the backend chosen for this flow */
	__be16 bport;
	__u8 state;       /* enum conn_state */
	__u8 flags;       /* enum conn_flags */
	__u8 wscale;      /* the client's, COOKIE_WS_NONE: none */
	__u8 bwscale;     /* the backend's, COOKIE_WS_NONE: none */
	__u8 tries;       /* backend SYNs sent */
	__u8 fins;        /* 1: the client sent FIN, 2: the backend did */
	__u32 client_isn; /* host order, like every sequence number here */
	__u32 cookie;     /* our ISN towards the client */
	__u32 backend_isn;
	__u32 seq_delta;  /* cookie - backend_isn: backend seq -> client seq */
	__u32 ts_delta;   /* cookie - backend's first tsval */
	__u32 client_tsval; /* from the cookie ACK: the backend SYN carries it */
	__u16 client_win; /* from the cookie ACK, in the client's scale */
	__u16 mss;        /* the client's, from the cookie */
	/* Window rewriting, fixed once the backend answered: a window is
	 * shifted left then right (no rewrite when they are equal). */
	__u8 fwd_shl, fwd_shr, rev_shl, rev_shr;
	__u32 svc;
	__u32 backend;    /* index among the service's backends, by flow hash */
	/* Sequence tracking (RFC 5961 checks of RSTs and SYNs), each side in
	 * its own sequence space: nxt is the highest sequence end (seq +
	 * payload + FIN) the side sent, una the highest ack the other side
	 * sent for it; maxwin the largest window the side advertised, in
	 * bytes; win its last window as sent (its own scale). Updated only by
	 * segments that pass the checks (see seq_track). */
	__u32 cnxt, cuna, bnxt, buna;
	__u32 cmaxwin, bmaxwin;
	__u16 cwin, bwin;
	__u32 trk;        /* sp_local's token of the host tracking this entry */
	__u32 chal_t;     /* the last challenge ACK, TAI ns >> 20 */
	__u32 pad;
	__u64 created_ns; /* TAI */
	__u64 last_ns;    /* TAI, refreshed at most every cfg_touch_ns */
	__u64 syn_ns;     /* TAI, the last backend SYN */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct conn_key);
	__type(value, struct conn_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_conns SEC(".maps");

SYNC_ACCESSORS(sp_conns, struct conn_key, struct conn_val)

/* sp_local[0]: this host's tracking token, random, made on first use and
 * never replicated. An entry whose trk differs was last tracked elsewhere
 * (the peer, before a failover) and its sequence state may be behind by
 * up to a replication interval: each side's next segment re-anchors it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_local SEC(".maps");

static __always_inline __u32 local_token(void)
{
	__u32 zero = 0, *t = bpf_map_lookup_elem(&sp_local, &zero);

	if (!t)
		return 0;
	if (*t == 0)
		__sync_val_compare_and_swap(t, 0, bpf_get_prandom_u32() | 1);
	return *t;
}

static __always_inline void sp_count(__u32 s)
{
	count_percpu(&sp_stats, s, 1);
}

static __always_inline struct svc_counters *svc_stats(__u32 id)
{
	return bpf_map_lookup_elem(&sp_svc_stats, &id);
}

static __always_inline __u64 now_ns(void)
{
	/* TAI, not boot time: the peer compares it with its own clock. */
	return bpf_ktime_get_tai_ns();
}

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

/* A segment this proxy writes from scratch: SYN-ACKs to clients, SYNs and
 * ACKs to backends, window updates and RSTs. Addresses are IPv4-mapped
 * for IPv4; numbers are in host order. */
struct hs {
	__u8 saddr[16], daddr[16];
	__be16 sport, dport;
	__u32 seq, ack;
	__u16 window;
	__u8 flags; /* TCPF_* */
	__u8 v4;
	__u16 mss;  /* nonzero: a SYN's 20 bytes of options (MSS, SACK, WS, TS) */
	__u8 ws;    /* COOKIE_WS_NONE: no window scale option */
	__u8 sack;
	__u8 ts;
	__u8 pad[3];
	__u32 tsval, tsecr;
};

#define HS_MAX 80 /* IPv6 40 + TCP 20 + options 20 */

/* What is left of an established segment's translation when the segment
 * functions return FWD_PENDING: the option walk and the forwarding, done
 * from the program's top frame, where the walk's frames fit under the
 * 512-byte stack limit (verifiers before 6.8 round every frame up). */
struct fwd_job {
	__u32 where; /* l4_off << 8 | options length */
	__u32 tsval_add, tsecr_add, sack_add;
	__u8 saddr[16], daddr[16];
	__u16 l3_off, vlan_depth;
	__u8 v4, opts;
	__u8 pad[2];
};

#define FWD_PENDING 0x100

/* Per-CPU scratch for the segments this proxy writes: the verifier's
 * 512-byte stack cannot hold them next to the callers' frames. Slot 0 is
 * XDP's, slot 1 TC's. */
struct scratch {
	__u8 buf[HS_MAX];
	__u8 ph[40]; /* old and new IPv6 addresses (xlate) */
	__u8 seg[64];
	struct hs h; /* what hs_write_xdp/hs_write_skb write */
	struct pkt p; /* the parsed packet (XDP) */
	struct conn_val v; /* a new connection entry */
	struct fwd_job job;
	struct conn_key k;  /* a key to delete */
	struct conn_key ck; /* the packet's connection */
	struct {
		__u8 in[48], old[48]; /* a quoted header and TCP ports, seq */
		__u8 isrc[16], idst[16], osrc[16], odst[16];
		__u8 ip[20]; /* the outer IPv4 header */
	} icmp;
	struct svc_key sk;  /* the packet's service, or its backend */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct scratch);
} sp_scratch SEC(".maps");

static __always_inline struct scratch *scratch(__u32 slot)
{
	return bpf_map_lookup_elem(&sp_scratch, &slot);
}

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
static __always_inline __u32 hs_build(struct scratch *s)
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
	__builtin_memset(&s->h, 0, sizeof(s->h));
	s->h.ws = COOKIE_WS_NONE;
	return &s->h;
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
	len = hs_build(s);
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
		if (l3_off < ETH_HLEN || bpf_xdp_load_bytes(ctx, 0, s->seg, ((l3_off - 1) & 63) + 1) || bpf_xdp_adjust_head(ctx, -delta) ||
		    bpf_xdp_store_bytes(ctx, 0, s->seg, ((l3_off - 1) & 63) + 1)) {
			sp_count(SP_RESIZE_FAILED);
			return -1;
		}
	} else if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta)) {
		sp_count(SP_RESIZE_FAILED);
		return -1;
	}
	return bpf_xdp_store_bytes(ctx, l3_off, s->buf, len);
}

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

/* fwd_xdp sends the rewritten packet towards its new destination: a FIB
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
	return XDP_PASS;
}

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
	struct scratch *s = scratch(0);
	__u32 n;
	__s64 d;

	if (!s || w->left == 0)
		return 1;
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
	struct scratch *s = scratch(0);
	__u32 tlen;
	__s64 sum;
	__u16 got;

	if (!p || !s)
		return 0;
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

/* answer_syn turns the SYN in ctx into our SYN-ACK: Ethernet addresses
 * swapped (VLAN tags kept), a fresh IP header, a 40-byte TCP header with
 * window 0, the cookie as ISN and options for what the client offered. */
__attribute__((noinline)) int answer_syn(struct xdp_md *ctx, struct pkt *p, const struct cookie_keys *keys, __u32 svc_id)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;
	struct tcp_opts o;
	struct hs *h;
	__u32 client_isn;
	struct svc_counters *sc;

	if (!p || !keys)
		return XDP_DROP;
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
	h->ws = o.c.wscale != COOKIE_WS_NONE ? cfg_wscale : COOKIE_WS_NONE;
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

	return cookie_mac(key, k->caddr, k->vaddr, k->cport, k->vport, 0, 0);
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
	v = &scr->v;
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
	v->backend = svc->backends ? flow_hash(k) % svc->backends : 0;
	bk.svc = svc->id;
	bk.idx = v->backend;
	b = bpf_map_lookup_elem(&sp_backends, &bk);
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
	return backend_syn(ctx, p, cur);
}

/* touch refreshes c's last-seen time, at most every cfg_touch_ns, so that
 * an active entry is replicated now and then and never expires on the
 * peer while it lives here. */
static __always_inline void touch(struct conn_val *c, const struct conn_key *k, int changed)
{
	__u64 now = now_ns();

	if (changed || now - c->last_ns > cfg_touch_ns) {
		c->last_ns = now;
		sync_mark(SYNC_MAP_CONN, &c->sync, k, sizeof(*k));
	}
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
		 * SACK blocks: two words change, no walk. */
		__be32 b[3], nv, ne;

		if (bpf_xdp_load_bytes(ctx, l4_off + 20, b, sizeof(b)))
			return -1;
		if (b[0] == bpf_htonl(TCPOPT_NOP << 24 | TCPOPT_NOP << 16 | TCPOPT_TS << 8 | 10)) {
			nv = bpf_htonl(bpf_ntohl(b[1]) + tsval_add);
			ne = bpf_htonl(bpf_ntohl(b[2]) + tsecr_add);
			if (bpf_xdp_load_bytes(ctx, l4_off + 16, &check, 2))
				return -1;
			csum_replace4(&check, b[1], nv);
			csum_replace4(&check, b[2], ne);
			b[1] = nv;
			b[2] = ne;
			if (bpf_xdp_store_bytes(ctx, l4_off + 24, &b[1], 8))
				return -1;
			return bpf_xdp_store_bytes(ctx, l4_off + 16, &check, 2);
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

static __always_inline struct fwd_job *fwd_job_start(const struct pkt *p)
{
	struct scratch *s = scratch(0);

	if (!s)
		return 0;
	__builtin_memset(&s->job, 0, sizeof(s->job));
	s->job.l3_off = p->l3_off;
	s->job.vlan_depth = p->vlan_depth;
	s->job.v4 = p->eth_proto == ETH_P_IP;
	return &s->job;
}

static __always_inline __u16 rescale(__u16 w, __u8 shl, __u8 shr)
{
	__u32 b = ((__u32)w << (shl & 15)) >> (shr & 15);

	if (b > 0xffff)
		return 0xffff;
	if (!b && w)
		return 1; /* never turn an open window into a closed one */
	return b;
}

/* xlate rewrites an established segment in place. fwd: client -> backend
 * (destination becomes the backend, the ack and SACK edges move into the
 * backend's sequence space, the timestamp echo into its clock). Otherwise
 * backend -> client (source becomes the VIP, seq and tsval move into what
 * the client was told, the window into the client's scale). */
static __always_inline int xlate(struct xdp_md *ctx, const struct pkt *p, const struct conn_val *c, const struct conn_key *k, int fwd, struct fwd_job *j)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th = data + (p->l4_off & 0x1ff);
	__u32 l4_off = p->l4_off & 0x1ff, n, old, nw;
	const __u8 *to = fwd ? c->baddr : k->vaddr;
	__be16 port = fwd ? c->bport : k->vport;
	__u8 shl = fwd ? c->fwd_shl : c->rev_shl, shr = fwd ? c->fwd_shr : c->rev_shr;

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
			csum_replace4(&th->check, ip->daddr, a);
			ip->daddr = a;
		} else {
			csum_replace4(&ip->check, ip->saddr, a);
			csum_replace4(&th->check, ip->saddr, a);
			ip->saddr = a;
		}
	} else {
		struct ipv6hdr *ip6 = data + (p->l3_off & 0x3f);
		struct scratch *s = scratch(0);
		__be32 *oa, *na;

		/* The old and new addresses in scratch memory: this frame is
		 * on the deepest call chain (six frames under 512 bytes). */
		if ((void *)(ip6 + 1) > data_end || !s)
			return -1;
		oa = (__be32 *)s->ph;
		na = (__be32 *)(s->ph + 16);
		__builtin_memcpy(na, to, 16);
		if (fwd) {
			__builtin_memcpy(oa, &ip6->daddr, 16);
			__builtin_memcpy(&ip6->daddr, na, 16);
		} else {
			__builtin_memcpy(oa, &ip6->saddr, 16);
			__builtin_memcpy(&ip6->saddr, na, 16);
		}
		csum_replace16(&th->check, oa, na);
	}
	if (fwd) {
		csum_replace2(&th->check, th->dest, port);
		th->dest = port;
		if (th->ack) {
			old = th->ack_seq;
			th->ack_seq = bpf_htonl(bpf_ntohl(old) - c->seq_delta);
			csum_replace4(&th->check, old, th->ack_seq);
		}
	} else {
		csum_replace2(&th->check, th->source, port);
		th->source = port;
		old = th->seq;
		th->seq = bpf_htonl(bpf_ntohl(old) + c->seq_delta);
		csum_replace4(&th->check, old, th->seq);
	}
	if (shl != shr) {
		nw = bpf_htons(rescale(bpf_ntohs(th->window), shl, shr));
		csum_replace2(&th->check, th->window, nw);
		th->window = nw;
	}
	/* Options: only timestamps (both ways) and SACK (client -> backend)
	 * change; the walk runs when they can be there, from the program's
	 * top frame (see struct fwd_job). */
	j->opts = n > 0 && n <= 40 && (c->flags & (CONN_F_TS | CONN_F_SACK));
	j->where = l4_off << 8 | n;
	j->tsval_add = fwd ? 0 : c->ts_delta;
	j->tsecr_add = fwd ? -c->ts_delta : 0;
	j->sack_add = fwd ? -c->seq_delta : 0;
	return 0;
}

static __always_inline __u32 l4_payload(const struct pkt *p, const struct tcphdr *th)
{
	return p->l4_len - th->doff * 4;
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

static __always_inline void conn_delete(const struct conn_key *k)
{
	/* A copy in scratch memory: verifiers before 6.2 refuse a global
	 * function's pointer argument as a map key, and the stack has no
	 * room left. */
	struct scratch *s = scratch(0);

	if (!s)
		return;
	s->k = *k;
	if (bpf_map_delete_elem(&sp_conns, &s->k) == 0)
		sync_mark_deleted(SYNC_MAP_CONN, &s->k, sizeof(s->k));
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
static __always_inline int seq_track(struct conn_val *c, int fromc, const struct tcphdr *th, __u32 paylen)
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
	__u32 seq = bpf_ntohl(th->seq), ack, end, tok, b;
	__u16 w;

	tok = local_token();
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

/* client_seg handles a segment from a client with a connection entry. */
__attribute__((noinline)) int client_seg(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;
	struct svc_counters *sc;
	__u64 now;
	struct fwd_job *j;
	int changed = 0, r;

	if (!p || !c || !k)
		return XDP_DROP;
	th = data + (p->l4_off & 0x1ff);
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	if (th->syn) {
		/* A pure SYN never gets here (it is answered without a
		 * lookup); this is a SYN with other flags. Waiting for the
		 * backend, it is dropped; on an established entry it gets a
		 * challenge ACK (RFC 5961 section 4) and goes no further. */
		if (c->state == CONN_SYN_SENT) {
			sp_count(SP_DUP_ACK);
			return XDP_DROP;
		}
		return challenge_ack(ctx, p, c, k, 1);
	}
	if (c->state == CONN_SYN_SENT) {
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
	r = seq_track(c, 1, th, l4_payload(p, th));
	if (r == SEQ_CHALLENGE)
		return challenge_ack(ctx, p, c, k, 1);
	if (r == SEQ_DROP || r == SEQ_STALE) {
		sp_count(r == SEQ_DROP ? SP_RST_BAD : SP_RST_STALE);
		return XDP_DROP;
	}
	if (th->fin && r == SEQ_OK && !(c->fins & 1)) {
		c->fins |= 1;
		changed = 1;
	}
	if (r == SEQ_RESET || c->fins == 3) {
		if (c->state != CONN_CLOSING)
			sp_count(SP_CLOSED);
		changed |= c->state != CONN_CLOSING;
		c->state = CONN_CLOSING;
	}
	if ((sc = svc_stats(c->svc))) {
		sc->pkts_in++;
		sc->bytes_in += l4_payload(p, th);
	}
	touch(c, k, changed);
	j = fwd_job_start(p);
	if (!j || xlate(ctx, p, c, k, 1, j))
		return XDP_DROP;
	__builtin_memcpy(j->saddr, p->saddr, 16);
	__builtin_memcpy(j->daddr, c->baddr, 16);
	sp_count(SP_FWD);
	return FWD_PENDING;
}

/* backend_seg handles a segment from a backend for a connection entry. */
__attribute__((noinline)) int backend_seg(struct xdp_md *ctx, struct pkt *p, struct conn_val *c, const struct conn_key *k)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;
	struct svc_counters *sc;
	struct fwd_job *j;
	int changed = 0, r;

	if (!p || !c || !k)
		return XDP_DROP;
	th = data + (p->l4_off & 0x1ff);
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	if (th->syn) {
		/* The SYN-ACK completes the backend handshake and opens the
		 * client's window: it needs a clone, so TC ingress does it.
		 * A SYN on an established entry gets a challenge ACK (RFC
		 * 5961 section 4) and goes no further. */
		if (th->ack)
			return XDP_PASS;
		if (c->state == CONN_SYN_SENT) {
			sp_count(SP_BAD_FLAGS);
			return XDP_DROP;
		}
		return challenge_ack(ctx, p, c, k, 0);
	}
	if (c->state == CONN_SYN_SENT) {
		/* A refusal acknowledges our SYN: the client's ISN + 1. */
		if (th->rst && th->ack && bpf_ntohl(th->ack_seq) == c->client_isn + 1) {
			if ((sc = svc_stats(c->svc)))
				sc->failed++;
			sp_count(SP_BACKEND_RST);
			conn_delete(k);
			return rst_to_client(ctx, p, k, c->cookie + 1, c->client_isn + 1, 0);
		}
		sp_count(th->rst ? SP_RST_BAD : SP_BAD_FLAGS);
		return XDP_DROP;
	}
	r = seq_track(c, 0, th, l4_payload(p, th));
	if (r == SEQ_CHALLENGE)
		return challenge_ack(ctx, p, c, k, 0);
	if (r == SEQ_DROP || r == SEQ_STALE) {
		sp_count(r == SEQ_DROP ? SP_RST_BAD : SP_RST_STALE);
		return XDP_DROP;
	}
	if (th->fin && r == SEQ_OK && !(c->fins & 2)) {
		c->fins |= 2;
		changed = 1;
	}
	if (r == SEQ_RESET || c->fins == 3) {
		if (c->state != CONN_CLOSING)
			sp_count(SP_CLOSED);
		changed |= c->state != CONN_CLOSING;
		c->state = CONN_CLOSING;
	}
	if ((sc = svc_stats(c->svc))) {
		sc->pkts_out++;
		sc->bytes_out += l4_payload(p, th);
	}
	touch(c, k, changed);
	j = fwd_job_start(p);
	if (!j || xlate(ctx, p, c, k, 0, j))
		return XDP_DROP;
	__builtin_memcpy(j->saddr, k->vaddr, 16);
	__builtin_memcpy(j->daddr, p->daddr, 16);
	sp_count(SP_REV);
	return FWD_PENDING;
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

	c = rev_lookup(p, &s->ck, &s->sk);
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

/* ---- ICMP errors for a proxied flow ------------------------------------ */

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
	sk = &scr->sk;
	k = &scr->ck;
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

/* xdp_synproxy is the SYN proxy's stage of the XDP chain (slot 3). It
 * reads the frame the chain's entry parsed, claims what is the proxy's (a
 * service's segments, a proxied flow's segments and ICMP errors) and
 * passes everything else to the next stage. */
SEC("xdp")
int xdp_synproxy(struct xdp_md *ctx)
{
	struct chain_ctx *c = chain_get();
	struct scratch *scr = scratch(0);
	struct fwd_job *j;
	struct svc_val *svc;
	struct svc_key *sk;
	struct pkt *p;
	int r;

	/* The parsed packet and the keys live in scratch memory: the
	 * deepest call chain under this frame needs almost all of the
	 * 512-byte stack on verifiers that round frames up (before 6.8). */
	if (!scr || !c)
		return XDP_PASS;
	if (c->parsed != PARSE_IP)
		return chain_next(ctx, c, STAGE_SYNPROXY); /* the gate judges what is not ours */
	p = &scr->p;
	*p = c->p;
	sk = &scr->sk;
	if ((p->l4_proto == IPPROTO_ICMP && p->eth_proto == ETH_P_IP) || (p->l4_proto == IPPROTO_ICMPV6 && p->eth_proto == ETH_P_IPV6)) {
		if (p->frag)
			return chain_next(ctx, c, STAGE_SYNPROXY);
		r = icmp_err(ctx, p);
		if (r == XDP_PASS)
			return chain_next(ctx, c, STAGE_SYNPROXY);
		return chain_claim(STAGE_SYNPROXY, r);
	}
	if (p->l4_proto != IPPROTO_TCP)
		return chain_next(ctx, c, STAGE_SYNPROXY);
	__builtin_memset(sk, 0, sizeof(*sk));
	__builtin_memcpy(sk->addr, p->daddr, 16);
	sk->port = p->dport;
	sk->proto = IPPROTO_TCP;
	svc = bpf_map_lookup_elem(&sp_services, sk);
	if (p->frag) {
		/* A fragment has no port to match unless it is the first; a
		 * first fragment to a service is dropped (a handshake is never
		 * fragmented, and TCP with DF never needs to be). */
		if (p->frag == 1 && svc) {
			sp_count(SP_FRAGMENT);
			return chain_claim(STAGE_SYNPROXY, XDP_DROP);
		}
		return chain_next(ctx, c, STAGE_SYNPROXY);
	}
	if (!svc) {
		r = from_backend(ctx, p, scr);
		if (r == XDP_PASS)
			return chain_next(ctx, c, STAGE_SYNPROXY);
	} else {
		/* A VIP under election is served only by its owner: the
		 * other host drops what reaches it (a stale neighbour entry),
		 * and the client's retransmission finds the owner. With the
		 * gate before this stage the gate has decided already; on an
		 * interface without it, the proxy asks the gate map itself. */
		struct vip_entry *ve;

		if (c->vip == CHAIN_VIP_NOT_OWNED) {
			sp_count(SP_NOT_OWNER);
			return chain_claim(STAGE_SYNPROXY, XDP_DROP);
		}
		if (c->vip == CHAIN_VIP_UNKNOWN) {
			ve = bpf_map_lookup_elem(&vip_gate, sk->addr);
			if (ve && !ve->owned) {
				sp_count(SP_NOT_OWNER);
				return chain_claim(STAGE_SYNPROXY, XDP_DROP);
			}
		}
		r = from_client(ctx, p, svc, scr);
	}
	if (r != FWD_PENDING)
		return chain_claim(STAGE_SYNPROXY, r);
	j = &scr->job;
	if (j->opts && xlate_opts(ctx, j->where, j->tsval_add, j->tsecr_add, j->sack_add))
		return chain_claim(STAGE_SYNPROXY, XDP_DROP);
	return chain_claim(STAGE_SYNPROXY, fwd_xdp(ctx, j->l3_off, j->v4, j->saddr, j->daddr, j->vlan_depth));
}

/* ---- TC ingress: the backend's SYN-ACK ---------------------------------- */

__attribute__((noinline)) int hs_write_skb(struct __sk_buff *skb, __u32 l3_off)
{
	struct scratch *s = scratch(1);
	__u32 len;

	if (!s)
		return -1;
	len = hs_build(s);
	l3_off &= 0x3f;
	if (len > HS_MAX || len < 40)
		return -1;
	if (bpf_skb_change_tail(skb, l3_off + len, 0))
		return -1;
	return bpf_skb_store_bytes(skb, l3_off, s->buf, len, 0);
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
		 * client was told cfg_wscale whenever it offered. */
		if (cws != COOKIE_WS_NONE && c->bwscale != COOKIE_WS_NONE) {
			c->fwd_shl = c->fwd_shr = cws;
			c->rev_shl = c->bwscale;
		} else {
			c->fwd_shl = cws == COOKIE_WS_NONE ? 0 : cws;
			c->fwd_shr = 0;
			c->rev_shl = 0;
		}
		c->rev_shr = cws == COOKIE_WS_NONE ? 0 : cfg_wscale;
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

SEC("tc")
int tc_synproxy(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct synack s;
	struct conn_key k;
	struct svc_key bk;
	struct conn_val *c;
	struct tcphdr *th;
	struct ethhdr *eth;
	struct opt_walk w;
	__u32 n, l4;

	/* Handshake segments are small: the headers are in the linear part
	 * once pulled. */
	bpf_skb_pull_data(skb, skb->len < 160 ? skb->len : 160);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (parse_frame(&s.p, data, data_end) != PARSE_IP || s.p.l4_proto != IPPROTO_TCP || s.p.frag)
		return TC_NEXT;
	l4 = s.p.l4_off & 0x1ff;
	th = data + l4;
	eth = data;
	if ((void *)(th + 1) > data_end || (void *)(eth + 1) > data_end)
		return TC_NEXT;
	if (!th->syn || !th->ack || th->rst || th->fin)
		return TC_NEXT;
	c = rev_lookup(&s.p, &k, &bk);
	if (!c)
		return TC_NEXT;
	if (bpf_ntohl(th->ack_seq) != c->client_isn + 1) {
		sp_count(SP_BAD_ACK);
		return TC_ACT_SHOT;
	}
	s.seq = bpf_ntohl(th->seq);
	s.window = bpf_ntohs(th->window);
	s.v4 = s.p.eth_proto == ETH_P_IP;
	__builtin_memcpy(s.smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(s.dmac, eth->h_dest, ETH_ALEN);
	n = opts_len(th);
	opt_walk_init(&w, n);
	if (n > 0 && n <= 40 && bpf_skb_load_bytes(skb, l4 + 20, w.buf, ((n - 1) & 63) + 1) == 0)
		bpf_loop(40, opt_step, &w, 0);
	s.o = w.o;
	return backend_synack(skb, &s, c, &k);
}

/* ---- Idle expiry (BPF_PROG_TYPE_SYSCALL, run by the daemon) ------------ */

struct expire_args {
	__u64 now;            /* TAI ns */
	__u64 syn_sent_ns;    /* timeouts by state */
	__u64 established_ns;
	__u64 closing_ns;
	__u32 short_lived;    /* out: entries left in a state with a short timeout */
	__u32 pad;
};

struct expire_ctx {
	struct expire_args a;
	__u32 deleted;
	__u32 short_lived;
};

static long expire_one(void *map, struct conn_key *k, struct conn_val *v, struct expire_ctx *x)
{
	__u64 t = v->state == CONN_ESTABLISHED ? x->a.established_ns : v->state == CONN_SYN_SENT ? x->a.syn_sent_ns : x->a.closing_ns;

	if (x->a.now > v->last_ns && x->a.now - v->last_ns > t) {
		if (bpf_map_delete_elem(&sp_conns, k) == 0) {
			sync_mark_deleted(SYNC_MAP_CONN, k, sizeof(*k));
			x->deleted++;
		}
		return 0;
	}
	if (v->state != CONN_ESTABLISHED)
		x->short_lived++;
	return 0;
}

/* sp_expire deletes the entries idle longer than their state allows
 * (each deletion replicated like any other) and returns how many. It
 * tells the daemon how many entries are left in a short-timeout state:
 * a sweep walks every bucket of the table, so with none the daemon
 * sweeps less often. */
SEC("syscall")
int sp_expire(struct expire_args *a)
{
	struct expire_ctx x = {};

	x.a = *a;
	bpf_for_each_map_elem(&sp_conns, expire_one, &x, 0);
	a->short_lived = x.short_lived;
	return x.deleted;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
