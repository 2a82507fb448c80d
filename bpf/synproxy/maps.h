/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: the SYN proxy's maps, the structs and enums they hold (the Go
 * side's types come from these, through bpf2go's -type), the per-CPU
 * scratch memory of each stage, and the counters' helpers.
 */
#ifndef SYNPROXY_MAPS_H
#define SYNPROXY_MAPS_H

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
#define SP_WSCALE 7
/* An entry's last-seen time (TAI, comparable between the two hosts) is
 * refreshed, and the entry replicated again, at most this often. */
#define SP_TOUCH_NS 1000000000ULL

/* Load-time settings: the loader sets them from the proxy's options
 * (loader.ProxyOptions, docs/synproxy.md "Settings"); these are the
 * defaults. The MSS this proxy announces to clients, per family: lower it
 * when the path to the backends has a lower MTU (a tunnel). */
const volatile __u16 cfg_mss4 = 1460;
const volatile __u16 cfg_mss6 = 1440;
/* A backend SYN is sent again when the client's packets show it is still
 * waiting and this long has passed; after cfg_syn_tries SYNs the client
 * gets a RST (like the kernel's tcp_syn_retries). */
const volatile __u64 cfg_syn_retry_ns = 1000000000ULL;
const volatile __u32 cfg_syn_tries = 4;
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
	SP_BAD_ACK,         /* backend SYN-ACKs or ACKs that acknowledge nothing we sent (an ACK: a stale socket, answered with a RST) */
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
	__u32 backend;    /* index among the service's backends: its Maglev table's pick (maglev.h) */
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
	__u64 last_ns;    /* TAI, refreshed at most every SP_TOUCH_NS */
	__u64 syn_ns;     /* TAI, the last backend SYN */
	/* The next hop each way ([0] towards the backend, [1] towards the
	 * client), from the last FIB lookup (fwd.h, nh_resolve): valid while
	 * nh_gen is this host's current generation (nh_gen_now), which the
	 * daemon moves on every route, neighbour, address or link change.
	 * Not connection state: a copy from the peer carries the peer's
	 * generation, which never matches here. ifindex 0: none cached. */
	__u32 nh_gen;
	__u16 nh_mtu[2];
	__u32 nh_ifindex[2];
	__u8 nh_mac[2][12]; /* destination MAC, then source MAC */
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

/* sp_nh_gen[0]: the next-hop generation. The daemon adds one whenever
 * the routes, neighbours, addresses or links change (loader.WatchNextHops);
 * entries' cached next hops of another generation are looked up again. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_nh_gen SEC(".maps");

/* nh_gen_now is the generation a cached next hop must carry: the
 * daemon's count plus this host's token (tok, local_token's, which the
 * caller has at hand), so that an entry replicated from the peer (the
 * peer's token) never matches. 0: cache nothing. */
static __always_inline __u32 nh_gen_now(__u32 tok)
{
	__u32 zero = 0, *g = bpf_map_lookup_elem(&sp_nh_gen, &zero);

	return g && tok ? tok + *g : 0;
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
	__u16 l3_off, vlan_depth;
	__u8 v4, opts;
	__u8 nh;      /* 1: the next hop below is known (nh_resolve) */
	__u8 pad;
	__u32 ifindex;
	/* Destination MAC, then source MAC; word-aligned, like conn_val's
	 * nh_mac: copied as three words, not twelve bytes. */
	__u8 mac[12] __attribute__((aligned(4)));
};

#define FWD_PENDING 0x100
/* A segment the proxy rewrote and leaves to the kernel to forward (no
 * neighbour yet, VLAN-tagged): XDP_PASS to the hook, but claimed, unlike
 * the XDP_PASS of a frame that is not the proxy's (which goes on to the
 * next stage of the chain). */
#define FWD_KERNEL 0x101

/* Per-CPU scratch: the verifier's 512-byte stack cannot hold what the
 * stages work on next to their callers' frames (before 6.8 it rounds
 * every frame up). Each stage has a struct of its own with only the
 * fields it uses, and none is shared: stages on one call chain never
 * overwrite each other's, and no field means two things. Slot 0 is XDP's,
 * slot 1 TC's (which uses only seg). */
#define SCRATCH_STAGE __attribute__((aligned(8)))

/* segment.h's: the segment described, and its headers built. */
struct seg_scratch {
	struct hs h;      /* what hs_write_xdp/hs_write_skb write */
	__u8 buf[HS_MAX]; /* its IP and TCP headers */
	__u8 l2[64];      /* the Ethernet header and VLAN tags, moved when
			   * hs_write_xdp grows the frame at the front */
} SCRATCH_STAGE;

/* handshake.h's checksum check (tcp_csum_ok): the segment, 64 bytes at a
 * time. */
struct csum_scratch {
	__u8 seg[64];
} SCRATCH_STAGE;

/* cookie_ack's: the connection entry it makes. */
struct cookie_scratch {
	struct conn_val v;
} SCRATCH_STAGE;

/* conn_delete's: a copy of the key to delete. */
struct del_scratch {
	struct conn_key k;
} SCRATCH_STAGE;

/* icmp_err's. */
struct icmp_scratch {
	__u8 in[48], old[48]; /* a quoted header and TCP ports, seq */
	__u8 isrc[16], idst[16], osrc[16], odst[16];
	__u8 ip[20];       /* the outer IPv4 header */
	struct svc_key sk; /* the quoted flow's service, or its backend */
	struct conn_key k; /* the quoted flow's connection */
} SCRATCH_STAGE;

/* est_seg's: TAI as of this CPU's last jiffy (established.h, touch_now),
 * and local_token's value, which never changes once made (read here, not
 * from sp_local: one cache line less a segment). */
struct clock_scratch {
	__u64 jiffies; /* when tai was read */
	__u64 tai;
	__u32 tok;     /* local_token(), 0: not read yet */
	__u32 pad;
} SCRATCH_STAGE;

/* nh_resolve's FIB lookup: a struct bpf_fib_lookup (as words: bpf2go,
 * which makes a Go type of the scratch, refuses its unions). */
struct nh_scratch {
	__u64 f[(sizeof(struct bpf_fib_lookup) + 7) / 8];
} SCRATCH_STAGE;

/* A slot. Its own fields are the entry stage's (xdp_synproxy,
 * from_client, from_backend), which the program reads as scr->sk (bpf2go,
 * which makes a Go type of every map value, refuses an unnamed struct);
 * the other stages' are in their structs. The parsed packet is the
 * chain's (struct chain_ctx), read in place. */
struct scratch {
	/* What an established segment touches first, together: every
	 * cache line it reads is a cost (docs/synproxy.md "Benchmarks"). */
	struct svc_key sk;  /* its service */
	struct conn_key ck; /* its connection; cookie_ack's new entry's key */
	struct fwd_job job; /* the forward left pending (fwd.h) */
	struct clock_scratch clock;
	struct svc_key rk;  /* its backend (from_backend's reverse lookup) */
	struct seg_scratch seg;
	struct csum_scratch csum;
	struct cookie_scratch cookie;
	struct del_scratch del;
	struct icmp_scratch icmp;
	struct nh_scratch nh;
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

static __always_inline void conn_delete(const struct conn_key *k)
{
	/* A copy in scratch memory: verifiers before 6.2 refuse a global
	 * function's pointer argument as a map key, and the stack has no
	 * room left. */
	struct scratch *s = scratch(0);

	if (!s)
		return;
	s->del.k = *k;
	if (bpf_map_delete_elem(&sp_conns, &s->del.k) == 0)
		sync_mark_deleted(SYNC_MAP_CONN, &s->del.k, sizeof(s->del.k));
}

#endif /* SYNPROXY_MAPS_H */
