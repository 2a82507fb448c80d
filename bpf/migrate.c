//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* migrate.c: migration redirects (issue 13; docs/migration.md).
 *
 * mig_endpoints maps an endpoint's address to its location: the host that
 * serves it, a next hop on an attached segment. The stage forwards the
 * endpoint's packets there (bpf_fib_lookup on the hop gives the interface
 * and MACs from this host's FIB and neighbour table, so the replicated
 * record means the same on both gateways; what it said is kept for a
 * second per hop in mig_nexthops). mig_state holds the endpoints
 * that are moving: MIGRATING -> the source; BLACKOUT -> held; SWITCHED ->
 * the held packets first, then the destination; ABORTED (with packets
 * still held) -> the held packets, then the source.
 *
 * The hold: XDP cannot keep a packet, so a held packet is copied into a
 * ring buffer (mig_hold, one for the host: reservation order is the order
 * the daemon reads) and dropped; at the switch the daemon re-injects the
 * copies, in order: xdp_mig_flush (BPF_PROG_TEST_RUN) decides the hop and
 * rewrites the frame as the stage would, a packet socket sends it. While a flush
 * runs, new packets of the endpoint are held too, behind the old ones, so
 * none overtakes: mig_val.hold carries MIG_FLUSHING with the count of
 * packets given to the hold, and the daemon clears the bit (mig_ctl,
 * MIG_OP_FLUSHED) only when everything held was flushed or counted lost,
 * with a compare-and-swap the datapath's own compare-and-swap races
 * against.
 *
 * Both maps are replicated by the state sync. The daemon writes them only
 * through mig_ctl, a syscall program that writes in place and calls
 * sync_mark like the datapath would: one mechanism for every change.
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/csum.h"
#include "include/chain.h"

/* A replicated write (the standby applying the owner's change) bumps the
 * forward cache's generation, as mig_ctl's own writes do (mig_gen_bump). */
static __always_inline void mig_gen_bump(void);
#define SYNC_WRITE_HOOK(name) mig_gen_bump()
#include "include/sync.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define MIG_ENDPOINTS_MAX 65536
#define MIG_MAX 4096
#define MIG_QUEUE_MAX 8
#define MIG_FRAME_MAX 2048
#define MIG_FLUSHING (1ull << 63)

enum mig_state_id {
	MIG_NONE = 0,
	MIG_MIGRATING = 1,
	MIG_BLACKOUT = 2,
	MIG_SWITCHED = 3,
	MIG_DONE = 4,
	MIG_ABORTED = 5,
};

/* How a location is reached (docs/migration.md, "Routed locations"). */
enum mig_encap {
	MIG_ENCAP_NONE = 0, /* the hop is on an attached segment: MACs rewritten */
	MIG_ENCAP_IPIP = 1, /* routed: an IP-in-IP header to the hop (a host that
			     * decapsulates), sent via the FIB towards it */
};

/* A location: the host that serves the endpoint, and how it is reached. */
struct mig_loc {
	__u8 hop[16]; /* IPv6, or IPv4-mapped; all zero: none */
	__u32 encap;  /* enum mig_encap */
};

struct mig_key {
	__u8 addr[16]; /* the endpoint, IPv6 or IPv4-mapped (as vip_gate) */
};

/* The record's forward cache (mig_fast_forward): what the stage found for
 * an endpoint at generation gen (mig_cache_gen). Local to this host: it
 * rides in the replicated record, but the peer's copy never matches this
 * host's generation (mig_gen starts at a random value), so it is found
 * stale there. */
struct mig_fwd_cache {
	__u64 gen;   /* mig_gen when filled; 0: empty */
	__u64 stamp; /* bpf_ktime_get_coarse_ns() of the FIB lookup (never compared) */
	__u32 ifindex;
	__u8 dmac[6];
	__u8 smac[6];
	__u8 has_state; /* mig_state had an entry for the endpoint */
	__u8 pad[7];
};

struct ep_val {
	struct sync_hdr sync;
	struct mig_loc loc;
	struct mig_fwd_cache fwd; /* local: see above */
};

struct mig_val {
	struct sync_hdr sync;
	__u32 state;   /* enum mig_state_id */
	__u32 nqueued; /* queued location updates, oldest first */
	struct mig_loc from, to;
	struct mig_loc queued[MIG_QUEUE_MAX];
	/* MIG_FLUSHING | packets given to the hold (tickets); the datapath
	 * moves it, the daemon clears the bit when the flush has caught up. */
	__u64 hold;
	__u64 flushed;  /* held packets re-injected (the daemon adds) */
	__u64 overflow; /* held packets dropped: the hold was full (the newest) */
	__u64 lost;     /* held packets a daemon restart or failover lost */
};

enum mig_stat {
	MIG_STAT_FORWARD = 0,  /* to the endpoint's location (not migrating, or done) */
	MIG_STAT_SOURCE = 1,   /* migrating or aborted: to the source */
	MIG_STAT_DEST = 2,     /* switched: to the destination */
	MIG_STAT_HELD = 3,     /* into the hold */
	MIG_STAT_OVERFLOW = 4, /* the hold was full (packets, bytes) or the frame too big */
	MIG_STAT_NO_ROUTE = 5, /* the hop has no route, or no neighbour entry yet */
	MIG_STAT_TTL = 6,      /* TTL expired: passed to the stack (ICMP) */
	MIG_STAT_FLUSHED = 7,  /* held packets re-injected (the daemon's count, through mig_ctl) */
	MIG_STAT_LOST = 8,     /* held packets a daemon restart lost (the daemon's count) */
	MIG_STAT_MAX = 9,
};

/* One held packet in mig_hold. */
struct mig_hold_rec {
	struct mig_key ep;
	__u32 ifindex; /* where it came in */
	__u32 len;
	__u8 data[MIG_FRAME_MAX];
};

enum mig_op {
	MIG_OP_EP_SET = 1,  /* endpoints[key].loc = loc */
	MIG_OP_EP_DEL = 2,
	MIG_OP_PUT = 3,     /* state[key]: state, from, to, queued (counters kept) */
	MIG_OP_DEL = 4,
	MIG_OP_FLUSHED = 5, /* state[key].flushed += n; clear MIG_FLUSHING when caught up */
	MIG_OP_LOST = 6,    /* state[key].lost += n (held packets a restart lost); clear as FLUSHED */
	MIG_OP_TOUCH = 7,   /* mark state[key] for the sync: its counters go to the peer */
	MIG_OP_ADOPT = 8,   /* state[key].hold += what this host held as the standby (mig_standby) */
	MIG_OP_ROLE = 9,    /* mig_role = n (0 owner, 1 standby) */
};

#define MIG_CMD_HOLD 1 /* MIG_OP_PUT: set MIG_FLUSHING (blackout: hold from now on) */

/* mig_ctl's argument (BPF_PROG_TEST_RUN ctx_in; copied back with ret). */
struct mig_cmd {
	__u32 op;    /* enum mig_op */
	__u32 flags; /* MIG_CMD_* */
	struct mig_key key;
	struct mig_loc loc;
	__u32 state;
	__u32 nqueued;
	struct mig_loc from, to;
	struct mig_loc queued[MIG_QUEUE_MAX];
	__u64 n;
	__s32 ret; /* 0, or -errno; MIG_OP_FLUSHED: 1 when the flush caught up */
	__u32 pad;
};

/* Never read: keep the layouts in BTF for bpf2go. */
const volatile struct mig_hold_rec mig_hold_rec_layout = {};
const volatile struct mig_cmd mig_cmd_layout = {};
const volatile enum mig_state_id mig_state_id_layout = 0;
const volatile enum mig_op mig_op_layout = 0;
const volatile enum mig_stat mig_stat_layout = 0;
const volatile enum mig_encap mig_encap_layout = 0;

/* Load-time: held packets per endpoint at most (the bytes are bounded by
 * the ring's size). */
const volatile __u64 cfg_hold_packets = 65536;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MIG_ENDPOINTS_MAX);
	__type(key, struct mig_key);
	__type(value, struct ep_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MIG_MAX);
	__type(key, struct mig_key);
	__type(value, struct mig_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_state SEC(".maps");

SYNC_ACCESSORS(mig_endpoints, struct mig_key, struct ep_val)
SYNC_ACCESSORS(mig_state, struct mig_key, struct mig_val)
/* The sync deletes replicated entries from user space: these run after,
 * so no forward cache outlives its record (mig_gen_bump). */
SYNC_DELETED(mig_endpoints)
SYNC_DELETED(mig_state)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24); /* the loader sets --migrate-hold-bytes */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_hold SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mig_hold_rec);
} mig_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MIG_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_stats SEC(".maps");

/* What a FIB lookup said about a hop, for a while: a lookup costs more
 * than the rest of the stage (~120 ns IPv4, ~240 ns IPv6 here), and every
 * packet to an endpoint needs one. Local to this host, never replicated;
 * an entry older than cfg_nexthop_ns is looked up again. */
struct mig_nexthop {
	__u64 stamp; /* bpf_ktime_get_coarse_ns() of the lookup */
	__u32 ifindex;
	__u8 dmac[6];
	__u8 smac[6];
	__u16 pad;
};

const volatile __u64 cfg_nexthop_ns = 1000000000ull;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct mig_loc);
	__type(value, struct mig_nexthop);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_nexthops SEC(".maps");

/* mig_gen: the forward cache's generation. mig_ctl bumps it on every
 * write to mig_endpoints or mig_state, and so does every replicated write
 * (SYNC_WRITE_HOOK): a cache filled before the change is stale after it.
 * It starts at a random value (the first bump or fill sets it), so a
 * cache copied from the peer never matches. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_gen SEC(".maps");

static __always_inline __u64 *mig_gen_ptr(void)
{
	__u32 zero = 0;
	__u64 *g = bpf_map_lookup_elem(&mig_gen, &zero);

	if (g && *(volatile __u64 *)g == 0)
		__sync_val_compare_and_swap(g, 0, ((__u64)bpf_get_prandom_u32() << 32) | 1);
	return g;
}

static __always_inline void mig_gen_bump(void)
{
	__u64 *g = mig_gen_ptr();

	if (g)
		__sync_fetch_and_add(g, 1);
}

/* mig_nh_gen[0]: the next-hop generation. The daemon adds one whenever
 * the routes, neighbours, addresses or links change (loader.WatchNextHops,
 * as for the SYN proxy's sp_nh_gen; every second instead when it cannot
 * watch): a forward cache filled before the change is stale after it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_nh_gen SEC(".maps");

/* mig_cache_gen is the generation a forward cache entry must carry to be
 * used: mig_gen (the records) plus mig_nh_gen (the FIB and neighbours).
 * Both only grow, so the sum moves whenever either does. 0: none (no
 * cache is used or filled). */
static __always_inline __u64 mig_cache_gen(void)
{
	__u32 zero = 0, *nh = bpf_map_lookup_elem(&mig_nh_gen, &zero);
	__u64 *g = mig_gen_ptr();

	if (!g || !nh)
		return 0;
	return *(volatile __u64 *)g + *(volatile __u32 *)nh;
}

/* ---- The per-CPU forward cache (mig_fast) -----------------------------------
 * In front of everything: an exact-match cache per CPU, direct-mapped by a
 * hash of the destination (as Open vSwitch's exact-match cache sits in
 * front of its classifier). A slot names one endpoint that is not moving,
 * at a segment hop, with what its record's forward cache (below) said:
 * the egress interface and both MACs, for a generation (mig_cache_gen). A
 * hit forwards without the endpoint's hash lookup (~15-20 ns of the
 * stage's cost here, the largest left once the clock read was gone); a
 * miss costs the probe and goes on as before. A slot is written only by
 * the CPU that owns it, in XDP (softirq: one packet at a time per CPU),
 * so it is never torn; a write to the records, a replicated write or
 * delete, or a routing change moves the generation and every slot is
 * stale at once. */
#define MIG_FAST_BITS 10

struct mig_fast {
	__u64 addr[2]; /* the endpoint (struct mig_key) */
	__u64 gen;     /* mig_cache_gen() when filled; 0: empty */
	__u64 mac_lo;  /* the Ethernet header's first 12 bytes: dmac, smac */
	__u32 mac_hi;
	__u32 ifindex;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << MIG_FAST_BITS);
	__type(key, __u32);
	__type(value, struct mig_fast);
} mig_fast SEC(".maps");

/* Load-time: 0 leaves mig_fast out (the verifier prunes it), so the
 * benchmark can measure what a miss then costs. */
const volatile __u32 cfg_fast = 1;

static __always_inline struct mig_fast *mig_fast_slot(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;
	__u32 slot = ((w[0] ^ w[1] ^ w[2] ^ w[3]) * 0x9e3779b1u) >> (32 - MIG_FAST_BITS);

	return bpf_map_lookup_elem(&mig_fast, &slot);
}

static __always_inline int loc_none(const struct mig_loc *l)
{
	const __u64 *w = (const __u64 *)l->hop;

	return w[0] == 0 && w[1] == 0;
}

/* ---- Routed locations (MIG_ENCAP_IPIP) -------------------------------------
 * A routed location is a host reached through routers: the frame gets an
 * outer IP header to it (IP-in-IP: IPv4 protocol 4 or 41 by the inner
 * family, or the same next headers in IPv6, by the host's family), source
 * this host's address for that family (cfg_encap_src4/6, --migrate-encap-src),
 * TTL 64, and goes to the FIB's next hop towards the host; the host's
 * kernel decapsulates it (tunl0, sit0, ip6tnl0) and delivers the inner
 * packet. The inner TTL was decremented as for a segment hop. Kept apart
 * from the segment path: mig_forward branches here on loc->encap only. */
const volatile __u32 cfg_encap_src4 = 0;     /* network order; 0: none */
const volatile __u32 cfg_encap_src6[4] = {}; /* all zero: none */

static __always_inline int mig_loc_v4(const struct mig_loc *loc)
{
	const __u32 *hop = (const __u32 *)loc->hop;

	return hop[0] == 0 && hop[1] == 0 && hop[2] == bpf_htonl(0xffff);
}

static __always_inline int mig_encap_out(struct xdp_md *ctx, const struct mig_loc *loc, const struct mig_nexthop *nh,
					 __u16 inner_proto, __u32 stat)
{
	const __u32 *hop = (const __u32 *)loc->hop;
	__u8 proto = inner_proto == ETH_P_IP ? 4 : 41;
	__u32 inner = ctx->data_end - ctx->data - sizeof(struct ethhdr);
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u32 ifindex = nh->ifindex;
	void *data, *data_end;
	struct ethhdr *eth;

	__builtin_memcpy(dmac, nh->dmac, ETH_ALEN);
	__builtin_memcpy(smac, nh->smac, ETH_ALEN);
	if (mig_loc_v4(loc)) {
		struct iphdr o = {}, *ip;

		if (!cfg_encap_src4)
			goto no_src;
		o.version = 4;
		o.ihl = 5;
		o.tot_len = bpf_htons(inner + sizeof(o));
		o.ttl = 64;
		o.protocol = proto;
		o.saddr = cfg_encap_src4;
		o.daddr = hop[3];
		o.check = ~csum_fold32(csum_words((const __u32 *)&o, 5, 0));
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(o)))
			goto drop;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
		ip = data + sizeof(*eth);
		if ((void *)(ip + 1) > data_end)
			goto drop;
		__builtin_memcpy(ip, &o, sizeof(o));
		eth->h_proto = bpf_htons(ETH_P_IP);
	} else {
		struct ipv6hdr *ip6;

		if (!(cfg_encap_src6[0] | cfg_encap_src6[1] | cfg_encap_src6[2] | cfg_encap_src6[3]))
			goto no_src;
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(*ip6)))
			goto drop;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
		ip6 = data + sizeof(*eth);
		if ((void *)(ip6 + 1) > data_end)
			goto drop;
		*(__u32 *)ip6 = bpf_htonl(6 << 28);
		ip6->payload_len = bpf_htons(inner);
		ip6->nexthdr = proto;
		ip6->hop_limit = 64;
		/* word by word: a memcpy would read the initializer, not the
		 * loader's value (the volatile qualifier cast away) */
		((__u32 *)&ip6->saddr)[0] = cfg_encap_src6[0];
		((__u32 *)&ip6->saddr)[1] = cfg_encap_src6[1];
		((__u32 *)&ip6->saddr)[2] = cfg_encap_src6[2];
		((__u32 *)&ip6->saddr)[3] = cfg_encap_src6[3];
		__builtin_memcpy(&ip6->daddr, loc->hop, 16);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
	}
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	count_percpu(&mig_stats, stat, 1);
	return bpf_redirect(ifindex, 0);
no_src:
	count_percpu(&mig_stats, MIG_STAT_NO_ROUTE, 1);
drop:
	return XDP_DROP;
}

/* mig_ttl_dec takes one hop off the packet after the Ethernet header in
 * place (IPv4 with its checksum, or IPv6): -1 to go on, or the verdict
 * (a packet at its last hop goes to the stack, which answers ICMP). */
static __always_inline int mig_ttl_dec(void *data, void *data_end, __u16 eth_proto)
{
	if (eth_proto == ETH_P_IP) {
		struct iphdr *ip = data + sizeof(struct ethhdr);

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		if (ip->ttl <= 1) {
			count_percpu(&mig_stats, MIG_STAT_TTL, 1);
			return XDP_PASS;
		}
		/* ttl and protocol share a 16-bit word of the checksum */
		csum_replace2(&ip->check, bpf_htons(ip->ttl << 8), bpf_htons((ip->ttl - 1) << 8));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		if (ip6->hop_limit <= 1) {
			count_percpu(&mig_stats, MIG_STAT_TTL, 1);
			return XDP_PASS;
		}
		ip6->hop_limit--;
	}
	return -1;
}

/* mig_forward sends the frame to the host at loc: the hop's interface and
 * MACs from the FIB and neighbour table, the TTL decremented, redirected.
 * Only untagged frames reach it (the stage declines tagged ones). */
static __always_inline int mig_forward(struct xdp_md *ctx, const struct pkt *p, const struct mig_loc *loc, __u32 stat)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct mig_nexthop *nh, fresh = {};
	__u64 now = bpf_ktime_get_coarse_ns();

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	nh = bpf_map_lookup_elem(&mig_nexthops, loc);
	if (!nh || now - nh->stamp > cfg_nexthop_ns) {
		struct bpf_fib_lookup fib = {};
		const __u32 *hop = (const __u32 *)loc->hop;

		if (hop[0] == 0 && hop[1] == 0 && hop[2] == bpf_htonl(0xffff)) {
			fib.family = AF_INET;
			fib.ipv4_dst = hop[3];
		} else {
			fib.family = AF_INET6;
			__builtin_memcpy(fib.ipv6_dst, loc->hop, 16);
		}
		fib.ifindex = ctx->ingress_ifindex;
		if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS) {
			count_percpu(&mig_stats, MIG_STAT_NO_ROUTE, 1);
			return XDP_DROP;
		}
		fresh.stamp = now;
		fresh.ifindex = fib.ifindex;
		__builtin_memcpy(fresh.dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(fresh.smac, fib.smac, ETH_ALEN);
		bpf_map_update_elem(&mig_nexthops, loc, &fresh, BPF_ANY);
		nh = &fresh;
	}
	int ret = mig_ttl_dec(data, data_end, p->eth_proto);

	if (ret >= 0)
		return ret;
	if (loc->encap)
		return mig_encap_out(ctx, loc, nh, p->eth_proto, stat);
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	count_percpu(&mig_stats, stat, 1);
	return bpf_redirect(nh->ifindex, 0);
}

/* mig_fast_forward: an endpoint that is not moving, in one lookup (its
 * record's). The record's forward cache says, for the current
 * mig_cache_gen, that there is no migration record and where the location
 * is (the FIB's answer); then the frame is rewritten and redirected
 * without looking at mig_state or mig_nexthops, and this CPU's mig_fast
 * slot is filled from it. Returns -1 when the cache cannot answer (a
 * migration exists, the cache is stale, the hop has no route): the caller
 * goes the full way. It fills the cache when it finds no migration
 * record. */
static __always_inline int mig_fast_forward(struct xdp_md *ctx, const struct pkt *p, struct ep_val *ep)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct mig_fwd_cache *fc = &ep->fwd;
	struct mig_fast *fs;
	__u64 gen = mig_cache_gen();
	int fresh;

	/* A routed location pushes an outer header (mig_encap_out): the
	 * full way. The cache holds segment hops only. */
	if (!gen || ep->loc.encap)
		return -1;
	/* The generation before the record: a change bumps it after writing. */
	fresh = *(volatile __u64 *)&fc->gen == gen;
	/* A moving endpoint: the caller looks its record up. */
	if (fresh && fc->has_state)
		return -1;
	if (!fresh) {
		struct bpf_fib_lookup fib = {};
		const __u32 *hop = (const __u32 *)ep->loc.hop;

		if (bpf_map_lookup_elem(&mig_state, p->daddr)) {
			fc->has_state = 1;
			*(volatile __u64 *)&fc->gen = gen;
			return -1;
		}
		if (loc_none(&ep->loc))
			return -1;
		if (hop[0] == 0 && hop[1] == 0 && hop[2] == bpf_htonl(0xffff)) {
			fib.family = AF_INET;
			fib.ipv4_dst = hop[3];
		} else {
			fib.family = AF_INET6;
			__builtin_memcpy(fib.ipv6_dst, ep->loc.hop, 16);
		}
		fib.ifindex = ctx->ingress_ifindex;
		if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
			return -1;
		fc->ifindex = fib.ifindex;
		__builtin_memcpy(fc->dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(fc->smac, fib.smac, ETH_ALEN);
		fc->has_state = 0;
		fc->stamp = bpf_ktime_get_coarse_ns(); /* for the curious: when */
		/* the generation last: a reader that sees it sees the rest */
		*(volatile __u64 *)&fc->gen = gen;
	}
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (cfg_fast && (fs = mig_fast_slot(p->daddr))) {
		fs->addr[0] = ((const __u64 *)p->daddr)[0];
		fs->addr[1] = ((const __u64 *)p->daddr)[1];
		/* dmac and smac are adjacent: dmac, smac[0..1] */
		__builtin_memcpy(&fs->mac_lo, (const __u8 *)fc + offsetof(struct mig_fwd_cache, dmac), 8);
		__builtin_memcpy(&fs->mac_hi, fc->smac + 2, 4);
		fs->ifindex = fc->ifindex;
		fs->gen = gen;
	}
	int ret = mig_ttl_dec(data, data_end, p->eth_proto);

	if (ret >= 0)
		return ret;
	__builtin_memcpy(eth->h_dest, fc->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fc->smac, ETH_ALEN);
	count_percpu(&mig_stats, MIG_STAT_FORWARD, 1);
	return bpf_redirect(fc->ifindex, 0);
}

/* mig_fast_hit forwards from this CPU's mig_fast slot for the
 * destination: the TTL, the 12 bytes of MACs in two stores, the redirect.
 * -1: no slot for it (the caller goes on). */
static __always_inline int mig_fast_hit(struct xdp_md *ctx, const struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const __u64 *a = (const __u64 *)p->daddr;
	__u32 zero = 0, *nh;
	struct mig_fast *fs;
	__u64 *g;
	int ret;

	if (!cfg_fast || !(fs = mig_fast_slot(p->daddr)))
		return -1;
	if (fs->addr[0] != a[0] || fs->addr[1] != a[1])
		return -1;
	/* mig_cache_gen without its first-use set-up: a filled slot's
	 * generation is never 0, an empty slot's always is. */
	g = bpf_map_lookup_elem(&mig_gen, &zero);
	nh = bpf_map_lookup_elem(&mig_nh_gen, &zero);
	if (!g || !nh || !fs->gen || fs->gen != *(volatile __u64 *)g + *(volatile __u32 *)nh)
		return -1;
	if (data + sizeof(struct ethhdr) > data_end)
		return XDP_DROP;
	ret = mig_ttl_dec(data, data_end, p->eth_proto);
	if (ret >= 0)
		return ret;
	*(__u64 *)data = fs->mac_lo;
	*(__u32 *)(data + 8) = fs->mac_hi;
	count_percpu(&mig_stats, MIG_STAT_FORWARD, 1);
	return bpf_redirect(fs->ifindex, 0);
}

/* mig_hold_one copies the frame into the hold; the ticket is taken. */
static __always_inline int mig_hold_one(struct xdp_md *ctx, struct mig_val *m, const struct mig_key *key, __u64 ticket)
{
	__u32 zero = 0, len = ctx->data_end - ctx->data;
	struct mig_hold_rec *r;

	if ((ticket & ~MIG_FLUSHING) - m->flushed - m->overflow - m->lost >= cfg_hold_packets)
		goto full;
	r = bpf_map_lookup_elem(&mig_scratch, &zero);
	if (!r || len == 0 || len > MIG_FRAME_MAX)
		goto full;
	__builtin_memcpy(&r->ep, key, sizeof(*key));
	r->ifindex = ctx->ingress_ifindex;
	/* identity on 1..MIG_FRAME_MAX; the mask is the verifier's bound */
	len = ((len - 1) & (MIG_FRAME_MAX - 1)) + 1;
	r->len = len;
	if (bpf_xdp_load_bytes(ctx, 0, r->data, len))
		goto full;
	if (bpf_ringbuf_output(&mig_hold, r, offsetof(struct mig_hold_rec, data) + len, 0))
		goto full;
	count_percpu(&mig_stats, MIG_STAT_HELD, 1);
	return XDP_DROP;
full:
	/* The hold drops the newest: what is already held stays in order. */
	__sync_fetch_and_add(&m->overflow, 1);
	count_percpu(&mig_stats, MIG_STAT_OVERFLOW, 1);
	return XDP_DROP;
}

/* mig_take_ticket: while MIG_FLUSHING is set, a packet joins the hold
 * (returns 1, *ticket set); once the daemon cleared it, the packet goes
 * on (0). The CAS orders this packet against the daemon's clear. */
static __always_inline int mig_take_ticket(struct mig_val *m, __u64 *ticket)
{
	for (int i = 0; i < 8; i++) {
		__u64 old = *(volatile __u64 *)&m->hold;

		if (!(old & MIG_FLUSHING))
			return 0;
		if (__sync_val_compare_and_swap(&m->hold, old, old + 1) == old) {
			*ticket = old;
			return 1;
		}
	}
	/* Lost the race eight times in a row: hold it regardless. */
	*ticket = __sync_fetch_and_add(&m->hold, 1);
	return 1;
}

/* ---- The standby's hold -------------------------------------------------------
 * mig_state is the owner's: the sync overwrites this host's copy with each
 * of the owner's changes, so tickets the stage took there on the standby
 * (frames flooded to it while the owner dies, say) vanished from the count
 * while their frames sat in this host's ring: the new owner's Held and
 * Lost undercounted. On the standby (mig_role, the daemon's role) the
 * stage counts what it holds in mig_standby, local and never replicated;
 * the daemon adds it to the record when this host becomes the owner
 * (MIG_OP_ADOPT). The owner's own tickets reach the peer with the record:
 * its daemon marks a holding record for the sync every few milliseconds
 * (MIG_OP_TOUCH). Only migration states reach this code. */
struct mig_standby_val {
	__u64 tickets;  /* packets given to the hold (held or dropped) */
	__u64 overflow; /* of those, dropped: the hold was full */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); /* 0: the owner (or no pair), 1: the standby */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_role SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MIG_MAX);
	__type(key, struct mig_key);
	__type(value, struct mig_standby_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_standby SEC(".maps");

static __always_inline int mig_is_standby(void)
{
	__u32 zero = 0, *r = bpf_map_lookup_elem(&mig_role, &zero);

	return r && *r;
}

/* mig_hold_standby holds the frame as mig_hold_one does, counting it in
 * mig_standby instead of the replicated record. */
static __always_inline int mig_hold_standby(struct xdp_md *ctx, const struct mig_key *key)
{
	struct mig_standby_val *s, fresh = {};
	__u32 zero = 0, len = ctx->data_end - ctx->data;
	struct mig_hold_rec *r;

	s = bpf_map_lookup_elem(&mig_standby, key);
	if (!s) {
		bpf_map_update_elem(&mig_standby, key, &fresh, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&mig_standby, key);
		if (!s)
			goto drop;
	}
	if (__sync_fetch_and_add(&s->tickets, 1) >= cfg_hold_packets)
		goto full;
	r = bpf_map_lookup_elem(&mig_scratch, &zero);
	if (!r || len == 0 || len > MIG_FRAME_MAX)
		goto full;
	__builtin_memcpy(&r->ep, key, sizeof(*key));
	r->ifindex = ctx->ingress_ifindex;
	len = ((len - 1) & (MIG_FRAME_MAX - 1)) + 1;
	r->len = len;
	if (bpf_xdp_load_bytes(ctx, 0, r->data, len))
		goto full;
	if (bpf_ringbuf_output(&mig_hold, r, offsetof(struct mig_hold_rec, data) + len, 0))
		goto full;
	count_percpu(&mig_stats, MIG_STAT_HELD, 1);
	return XDP_DROP;
full:
	__sync_fetch_and_add(&s->overflow, 1);
drop:
	count_percpu(&mig_stats, MIG_STAT_OVERFLOW, 1);
	return XDP_DROP;
}

/* mig_ctl_standby: the daemon's ops on the local standby state. */
static __always_inline void mig_ctl_standby(struct mig_cmd *cmd, const struct mig_key *key)
{
	struct mig_standby_val *sv;
	struct mig_val *m;
	__u32 zero = 0, role = cmd->n ? 1 : 0;
	__u64 t, o;

	if (cmd->op == MIG_OP_ROLE) {
		bpf_map_update_elem(&mig_role, &zero, &role, BPF_ANY);
		return;
	}
	/* MIG_OP_ADOPT: n = the tickets moved into the record */
	cmd->n = 0;
	m = bpf_map_lookup_elem(&mig_state, key);
	sv = bpf_map_lookup_elem(&mig_standby, key);
	if (!sv)
		return;
	t = __sync_lock_test_and_set(&sv->tickets, 0);
	o = __sync_lock_test_and_set(&sv->overflow, 0);
	if (!m || !t)
		return;
	/* The frames are in this host's ring: the flush must run for them. */
	__sync_fetch_and_or(&m->hold, MIG_FLUSHING);
	__sync_fetch_and_add(&m->hold, t);
	if (o)
		__sync_fetch_and_add(&m->overflow, o);
	cmd->n = t;
	sync_mark(SYNC_MAP_MIGRATION, &m->sync, key, sizeof(*key));
}

SEC("xdp")
int xdp_migrate(struct xdp_md *ctx)
{
	struct chain_ctx *c = chain_get();
	struct ep_val *ep;
	struct mig_val *m;
	__u64 ticket;
	int ret;

	if (!c)
		return XDP_PASS;
	/* Not IP, tagged, or (gate in monitor mode) a VIP this host does not
	 * own: not ours to forward. */
	if (c->parsed != PARSE_IP || c->p.vlan_depth || c->vip == CHAIN_VIP_NOT_OWNED)
		return chain_next(ctx, c, STAGE_MIGRATE);
	ret = mig_fast_hit(ctx, &c->p);
	if (ret >= 0)
		return chain_claim(STAGE_MIGRATE, ret);
	ep = bpf_map_lookup_elem(&mig_endpoints, c->p.daddr);
	if (!ep)
		return chain_next(ctx, c, STAGE_MIGRATE);
	ret = mig_fast_forward(ctx, &c->p, ep);
	if (ret >= 0)
		return chain_claim(STAGE_MIGRATE, ret);
	m = bpf_map_lookup_elem(&mig_state, c->p.daddr);
	if (!m)
		return chain_claim(STAGE_MIGRATE, mig_forward(ctx, &c->p, &ep->loc, MIG_STAT_FORWARD));
	switch (m->state) {
	case MIG_MIGRATING:
		return chain_claim(STAGE_MIGRATE, mig_forward(ctx, &c->p, &m->from, MIG_STAT_SOURCE));
	case MIG_BLACKOUT:
		if (mig_is_standby())
			return chain_claim(STAGE_MIGRATE, mig_hold_standby(ctx, (struct mig_key *)c->p.daddr));
		ticket = __sync_fetch_and_add(&m->hold, 1);
		return chain_claim(STAGE_MIGRATE, mig_hold_one(ctx, m, (struct mig_key *)c->p.daddr, ticket));
	case MIG_SWITCHED:
	case MIG_ABORTED:
		if ((m->hold & MIG_FLUSHING) && mig_is_standby())
			return chain_claim(STAGE_MIGRATE, mig_hold_standby(ctx, (struct mig_key *)c->p.daddr));
		if (mig_take_ticket(m, &ticket))
			return chain_claim(STAGE_MIGRATE, mig_hold_one(ctx, m, (struct mig_key *)c->p.daddr, ticket));
		if (m->state == MIG_SWITCHED)
			return chain_claim(STAGE_MIGRATE, mig_forward(ctx, &c->p, &m->to, MIG_STAT_DEST));
		return chain_claim(STAGE_MIGRATE, mig_forward(ctx, &c->p, &m->from, MIG_STAT_SOURCE));
	}
	return chain_claim(STAGE_MIGRATE, mig_forward(ctx, &c->p, &ep->loc, MIG_STAT_FORWARD));
}

/* xdp_mig_flush decides where a held frame goes and rewrites it, as the
 * stage would (BPF_PROG_TEST_RUN; the daemon sends the result, and gives
 * the endpoint's other held frames the same MACs): to the destination
 * once switched, else (aborted, or the record gone) to the source. */
SEC("xdp")
int xdp_mig_flush(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ep_val *ep;
	struct mig_val *m;
	struct pkt p;

	if (parse_frame(&p, data, data_end) != PARSE_IP || p.vlan_depth)
		return XDP_DROP;
	m = bpf_map_lookup_elem(&mig_state, p.daddr);
	if (m && m->state == MIG_SWITCHED)
		return mig_forward(ctx, &p, &m->to, MIG_STAT_DEST);
	if (m && (m->state == MIG_ABORTED || m->state == MIG_BLACKOUT || m->state == MIG_MIGRATING))
		return mig_forward(ctx, &p, &m->from, MIG_STAT_SOURCE);
	ep = bpf_map_lookup_elem(&mig_endpoints, p.daddr);
	if (!ep || loc_none(&ep->loc))
		return XDP_DROP;
	return mig_forward(ctx, &p, &ep->loc, MIG_STAT_FORWARD);
}

/* mig_ctl: every write the daemon makes to the replicated maps, marked
 * for the sync as the datapath's own writes are. */
SEC("syscall")
int mig_ctl(struct mig_cmd *cmd)
{
	struct mig_key key;
	struct ep_val *ep, fresh_ep = {};
	struct mig_val *m, fresh_m = {};
	__u64 old, target;

	__builtin_memcpy(&key, &cmd->key, sizeof(key));
	cmd->ret = 0;
	switch (cmd->op) {
	case MIG_OP_EP_SET:
		ep = bpf_map_lookup_elem(&mig_endpoints, &key);
		if (!ep) {
			if (bpf_map_update_elem(&mig_endpoints, &key, &fresh_ep, BPF_NOEXIST) &&
			    !bpf_map_lookup_elem(&mig_endpoints, &key)) {
				cmd->ret = -28; /* ENOSPC */
				return 0;
			}
			ep = bpf_map_lookup_elem(&mig_endpoints, &key);
			if (!ep) {
				cmd->ret = -2;
				return 0;
			}
		}
		__builtin_memcpy(&ep->loc, &cmd->loc, sizeof(ep->loc));
		sync_mark(SYNC_MAP_ENDPOINT, &ep->sync, &key, sizeof(key));
		mig_gen_bump();
		return 0;
	case MIG_OP_EP_DEL:
		if (bpf_map_delete_elem(&mig_endpoints, &key)) {
			cmd->ret = -2;
			return 0;
		}
		sync_mark_deleted(SYNC_MAP_ENDPOINT, &key, sizeof(key));
		mig_gen_bump();
		return 0;
	case MIG_OP_PUT:
		m = bpf_map_lookup_elem(&mig_state, &key);
		if (!m) {
			if (bpf_map_update_elem(&mig_state, &key, &fresh_m, BPF_NOEXIST) &&
			    !bpf_map_lookup_elem(&mig_state, &key)) {
				cmd->ret = -28;
				return 0;
			}
			m = bpf_map_lookup_elem(&mig_state, &key);
			if (!m) {
				cmd->ret = -2;
				return 0;
			}
		}
		/* the counters are the datapath's: written only atomically */
		m->nqueued = cmd->nqueued;
		__builtin_memcpy(&m->from, &cmd->from, sizeof(m->from));
		__builtin_memcpy(&m->to, &cmd->to, sizeof(m->to));
		__builtin_memcpy(m->queued, cmd->queued, sizeof(m->queued));
		if (cmd->flags & MIG_CMD_HOLD)
			__sync_fetch_and_or(&m->hold, MIG_FLUSHING);
		/* the state last: the datapath reads it first */
		__sync_lock_test_and_set(&m->state, cmd->state);
		sync_mark(SYNC_MAP_MIGRATION, &m->sync, &key, sizeof(key));
		mig_gen_bump();
		return 0;
	case MIG_OP_DEL:
		if (bpf_map_delete_elem(&mig_state, &key)) {
			cmd->ret = -2;
			return 0;
		}
		sync_mark_deleted(SYNC_MAP_MIGRATION, &key, sizeof(key));
		mig_gen_bump();
		return 0;
	case MIG_OP_FLUSHED:
	case MIG_OP_LOST:
		m = bpf_map_lookup_elem(&mig_state, &key);
		if (!m) {
			cmd->ret = -2;
			return 0;
		}
		if (cmd->n && cmd->op == MIG_OP_FLUSHED) {
			__sync_fetch_and_add(&m->flushed, cmd->n);
			count_percpu(&mig_stats, MIG_STAT_FLUSHED, cmd->n);
		}
		if (cmd->n && cmd->op == MIG_OP_LOST) {
			__sync_fetch_and_add(&m->lost, cmd->n);
			count_percpu(&mig_stats, MIG_STAT_LOST, cmd->n);
		}
		/* Caught up when every ticket is flushed, dropped or lost; the
		 * CAS fails if a packet took a ticket meanwhile (it is then
		 * held, and the daemon flushes it on its next round). */
		old = *(volatile __u64 *)&m->hold;
		target = m->flushed + m->overflow + m->lost;
		if (!(old & MIG_FLUSHING)) {
			cmd->ret = 1;
		} else if ((old & ~MIG_FLUSHING) <= target &&
			   __sync_val_compare_and_swap(&m->hold, old, old & ~MIG_FLUSHING) == old) {
			cmd->ret = 1;
		}
		sync_mark(SYNC_MAP_MIGRATION, &m->sync, &key, sizeof(key));
		return 0;
	case MIG_OP_TOUCH:
		m = bpf_map_lookup_elem(&mig_state, &key);
		if (!m) {
			cmd->ret = -2;
			return 0;
		}
		sync_mark(SYNC_MAP_MIGRATION, &m->sync, &key, sizeof(key));
		return 0;
	case MIG_OP_ADOPT:
	case MIG_OP_ROLE:
		mig_ctl_standby(cmd, &key);
		return 0;
	}
	cmd->ret = -22; /* EINVAL */
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
