//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* esp.c: the ESP anti-replay pre-filter (chain slot 2) and the SA replay
 * state it reads (esp_sa, replicated as SYNC_MAP_SA).
 *
 * esp_sa holds, per inbound SA, the replay state the kernel has verified
 * (RFC 4303 section 3.4.3, Appendix A2): the highest authenticated
 * sequence number (ESN: high and low 32 bits), the window size and its
 * bitmap, in the kernel's own layout (struct xfrm_replay_state_esn's bmp,
 * a ring of bits indexed like xfrm_replay_check_bmp/_esn), and the
 * outbound sequence for the standby. Only user space writes it, from the
 * kernel's XFRM state, through esp_sa_put (a syscall program that never
 * moves an SA backwards and marks the entry for the sync). The packet
 * path only reads it: a packet is unauthenticated here, so a forged huge
 * sequence number moves nothing.
 *
 * The stage drops ESP (IP protocol 50, or UDP 4500 per RFC 3948) whose
 * sequence number the kernel would refuse before decrypting: inside the
 * window with its bit set (a replay), or below the window (too old). It
 * runs the kernel's own pre-ICV check on a state that can only lag the
 * kernel's, so it never drops a packet the kernel would accept; the
 * argument, and its one bound (ESN), is in docs/sa.md.
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/chain.h"
#include "include/sync.h"
#include "include/esp_sa.h"

#define ESP_NATT_PORT 4500 /* RFC 3948 */

/* Global reasons, per CPU (tandem status). */
enum esp_stat {
	ESP_STAT_NO_SA = 0,     /* ESP to an SA esp_sa does not hold: passed */
	ESP_STAT_PASS = 1,      /* judged, passed to the kernel */
	ESP_STAT_REPLAY = 2,    /* dropped: in the window, already received */
	ESP_STAT_STALE = 3,     /* dropped: below the window (or sequence 0) */
	ESP_STAT_UNJUDGED = 4,  /* the SA's state is not judged (window 0, too large, near an ESN wrap) */
	ESP_STAT_IKE = 5,       /* UDP 4500 with the non-ESP marker: IKE */
	ESP_STAT_KEEPALIVE = 6, /* UDP 4500, one byte 0xff: NAT keepalive */
	ESP_STAT_SHORT = 7,     /* too short for an ESP header: the kernel's */
	ESP_STAT_MAX = 8,
};

enum esp_verdict {
	ESP_PASS = 0,
	ESP_REPLAY = 1,
	ESP_STALE = 2,
	ESP_UNJUDGED = 3,
};

/* esp_sa_put's answer (its return value). */
enum sa_put_result {
	SA_PUT_NEW = 0,       /* the entry was made */
	SA_PUT_ADVANCED = 1,  /* the window moved forward or gained bits, or oseq rose */
	SA_PUT_UNCHANGED = 2, /* nothing newer than what the entry holds */
	SA_PUT_REPLACED = 3,  /* window size or ESN flag differ: a new SA under the key */
	SA_PUT_EINVAL = -1,   /* a window above ESP_WIN_MAX, or no arguments */
	SA_PUT_EFAIL = -2,    /* the map update failed (full) */
};

/* Never read: keep the layouts in BTF for bpf2go. */
const volatile enum esp_stat esp_stat_layout = 0;
const volatile enum esp_verdict esp_verdict_layout = 0;
const volatile enum sa_put_result sa_put_result_layout = 0;
const volatile enum sa_flags sa_flags_layout = 0;
const volatile enum sa_encap sa_encap_layout = 0;


/* No SYNC_ACCESSORS on purpose: their I/O buffer holds SYNC_IO_MAX values
 * (618 KB for this 576-byte value) and is copied in and out whole on
 * every run, ~270 us a tick even for one changed SA, where the syncer's
 * fallback (a lookup per changed entry; a batch scan when a large share
 * changed) takes 4-17 us for 1-10 changed SAs (docs/sa.md, Cost). */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ESP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} esp_stats SEC(".maps");

/* sa_check is the kernel's pre-decryption replay check
 * (xfrm_replay_check_bmp, and _esn with the high bits inferred per RFC
 * 4303 A2.2), on the state v: ESP_REPLAY or ESP_STALE where the kernel
 * refuses the packet, ESP_PASS where it goes on to the ICV check. */
static __always_inline int sa_check(const struct sa_val *v, __u32 seq)
{
	__u32 w = v->window, top = v->seq, diff, pos, bitnr;

	if (w == 0 || w > ESP_WIN_MAX)
		return ESP_UNJUDGED; /* the kernel checks nothing at 0 */
	if (!(v->flags & SA_F_ESN)) {
		/* 32-bit sequence numbers never wrap: the SA is rekeyed first. */
		if (seq == 0)
			return ESP_STALE;
		if (seq > top)
			return ESP_PASS;
		diff = top - seq;
		if (diff >= w)
			return ESP_STALE;
	} else {
		__u32 bottom = top - w + 1, hi = v->seq_hi;
		__u64 t, s;

		/* The kernel places the bits of a window that spans a 2^32
		 * boundary with (seq - 1) % w on the low bits, which is only
		 * continuous across the boundary when w divides 2^32. */
		if ((w & (w - 1)) && (top < w || top > (__u32)0 - w))
			return ESP_UNJUDGED;
		/* xfrm_replay_check_esn refuses this one outright. */
		if (seq == 0 && hi == 0 && top == w - 1)
			return ESP_STALE;
		/* RFC 4303 A2.2: the high bits of seq, from the window. */
		if (top >= w - 1) {
			if (seq < bottom)
				hi++; /* case A: above the window, next subspace */
		} else if (seq >= bottom) {
			if (hi == 0)
				return ESP_PASS; /* before the SA's first packet: no bit can be set */
			hi--; /* case B: the window's part in the previous subspace */
		}
		t = (__u64)v->seq_hi << 32 | top;
		s = (__u64)hi << 32 | seq;
		if (s > t)
			return ESP_PASS;
		if (t - s >= w)
			return ESP_STALE; /* not reached: inference lands in the window or above */
		diff = (__u32)(t - s);
	}
	/* A division costs more than the rest of the check: windows are
	 * mostly powers of two. */
	pos = w & (w - 1) ? (top - 1) % w : (top - 1) & (w - 1);
	bitnr = pos >= diff ? pos - diff : w - (diff - pos);
	if (v->bmp[(bitnr >> 5) & (ESP_BMP_WORDS - 1)] & (1u << (bitnr & 31)))
		return ESP_REPLAY;
	return ESP_PASS;
}

struct esp_hdr {
	__be32 spi;
	__be32 seq;
};

/* esp_judge finds the ESP header of a parsed frame, its SA, and judges
 * its sequence number. Anything it cannot judge is passed. */
static __always_inline int esp_judge(struct xdp_md *ctx, const struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct sa_key k = {};
	struct esp_hdr *eh;
	struct sa_val *v;
	__u32 off = p->l4_off;
	int verdict;

	/* Fragments are the kernel's: it reassembles before XFRM sees them. */
	if (p->frag || off == 0)
		return ESP_PASS;
	k.proto = IPPROTO_ESP;
	/* Headers this deep (many IPv6 extension headers) are the kernel's;
	 * the mask below tells the verifier the offset's bound. */
	if (off > 0x1ff - sizeof(struct udphdr))
		return ESP_PASS;
	if (p->l4_proto == IPPROTO_UDP && p->dport == bpf_htons(ESP_NATT_PORT)) {
		__u8 *b;

		k.encap = SA_ENCAP_UDP;
		off += sizeof(struct udphdr);
		if (p->l4_len == sizeof(struct udphdr) + 1) {
			b = data + (off & 0x1ff);
			if ((void *)(b + 1) > data_end)
				return ESP_PASS;
			if (*b == 0xff)
				count_percpu(&esp_stats, ESP_STAT_KEEPALIVE, 1);
			else
				count_percpu(&esp_stats, ESP_STAT_SHORT, 1);
			return ESP_PASS;
		}
	} else if (p->l4_proto != IPPROTO_ESP) {
		return ESP_PASS;
	}
	eh = data + (off & 0x1ff);
	/* The header must be in the frame and in the IP payload (not in
	 * the link layer's padding). */
	if ((void *)(eh + 1) > data_end || off - p->l4_off + sizeof(*eh) > p->l4_len) {
		count_percpu(&esp_stats, ESP_STAT_SHORT, 1);
		return ESP_PASS;
	}
	/* RFC 3948: SPI 0 is the non-ESP marker (IKE on port 4500); over
	 * IP no SA has SPI 0 either (RFC 4303 reserves 1..255, 0 for local). */
	if (eh->spi == 0) {
		count_percpu(&esp_stats, ESP_STAT_IKE, 1);
		return ESP_PASS;
	}
	__builtin_memcpy(k.daddr, p->daddr, 16);
	k.spi = eh->spi;
	v = bpf_map_lookup_elem(&esp_sa, &k);
	if (!v) {
		count_percpu(&esp_stats, ESP_STAT_NO_SA, 1);
		return ESP_PASS;
	}
	verdict = sa_check(v, bpf_ntohl(eh->seq));
	switch (verdict) {
	case ESP_REPLAY:
		__sync_fetch_and_add(&v->drop_replay, 1);
		count_percpu(&esp_stats, ESP_STAT_REPLAY, 1);
		break;
	case ESP_STALE:
		__sync_fetch_and_add(&v->drop_stale, 1);
		count_percpu(&esp_stats, ESP_STAT_STALE, 1);
		break;
	case ESP_UNJUDGED:
		__sync_fetch_and_add(&v->passed, 1);
		count_percpu(&esp_stats, ESP_STAT_UNJUDGED, 1);
		break;
	default:
		__sync_fetch_and_add(&v->passed, 1);
		count_percpu(&esp_stats, ESP_STAT_PASS, 1);
	}
	return verdict;
}

/* xdp_esp is the ESP stage of the chain (slot 2): it claims replayed and
 * stale ESP with XDP_DROP and declines everything else. */
SEC("xdp")
int xdp_esp(struct xdp_md *ctx)
{
	struct chain_ctx *c = chain_get();
	int v;

	if (!c)
		return XDP_PASS;
	if (c->parsed == PARSE_IP) {
		v = esp_judge(ctx, &c->p);
		if (v == ESP_REPLAY || v == ESP_STALE)
			return chain_claim(STAGE_ESP, XDP_DROP);
	}
	return chain_next(ctx, c, STAGE_ESP);
}

/* ---- user-space writes: esp_sa_put, esp_sa_del ---------------------- */

/* esp_sa_args[0]: the key and the kernel-verified snapshot to put (its
 * sync header and counters are ignored), or the key to delete. */
struct sa_put {
	struct sa_key key;
	struct sa_val val;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sa_put);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} esp_sa_args SEC(".maps");

static __always_inline __u64 seq64(__u32 hi, __u32 lo)
{
	return (__u64)hi << 32 | lo;
}

/* esp_sa_put writes a kernel-verified snapshot into esp_sa, never moving
 * an SA backwards: a newer top replaces the inbound window, the same top
 * adds the snapshot's bits, an older one leaves it; the outbound sequence
 * only rises. SA_F_REPLACE (a new SA in the kernel under a key esp_sa
 * still holds: deleted and added again with the same SPI) takes the
 * snapshot whole. What changed is marked for the sync (sync_mark: a version
 * bump and a dirty-ring record), so user-space writes replicate through
 * the same path as the packet programs'. The value is replaced whole
 * (see esp_sa), keeping its counters and sync header. */
SEC("syscall")
int esp_sa_put(void *ctx)
{
	__u32 zero = 0, i;
	struct sa_put *a = bpf_map_lookup_elem(&esp_sa_args, &zero);
	struct sa_val *cur, *nv;
	int res = SA_PUT_NEW, changed = 0, replace;

	if (!a || a->val.window > ESP_WIN_MAX)
		return SA_PUT_EINVAL;
	replace = a->val.flags & SA_F_REPLACE;
	a->val.flags &= ~SA_F_REPLACE;
	a->val.sync.version = 0;
	a->val.sync.queued_epoch = 0;
	a->val.drop_replay = a->val.drop_stale = a->val.passed = 0;
	cur = bpf_map_lookup_elem(&esp_sa, &a->key);
	if (cur) {
		a->val.sync = cur->sync;
		a->val.drop_replay = cur->drop_replay;
		a->val.drop_stale = cur->drop_stale;
		a->val.passed = cur->passed;
		if (replace || cur->window != a->val.window || (cur->flags ^ a->val.flags) & SA_F_ESN) {
			res = SA_PUT_REPLACED;
		} else {
			__u64 ct = seq64(cur->seq_hi, cur->seq), nt = seq64(a->val.seq_hi, a->val.seq);

			if (nt > ct) {
				changed = 1;
			} else {
				/* Same top: the bits only add up (a bit never clears
				 * while its number is in the window). Older top:
				 * keep ours whole. */
				a->val.seq = cur->seq;
				a->val.seq_hi = cur->seq_hi;
				for (i = 0; i < ESP_BMP_WORDS; i++) {
					__u32 b = cur->bmp[i];

					if (nt == ct && (a->val.bmp[i] | b) != b)
						changed = 1;
					a->val.bmp[i] = nt == ct ? a->val.bmp[i] | b : b;
				}
			}
			if (seq64(a->val.oseq_hi, a->val.oseq) > seq64(cur->oseq_hi, cur->oseq))
				changed = 1;
			else {
				a->val.oseq = cur->oseq;
				a->val.oseq_hi = cur->oseq_hi;
			}
			if (!changed)
				return SA_PUT_UNCHANGED;
			res = SA_PUT_ADVANCED;
		}
	}
	if (bpf_map_update_elem(&esp_sa, &a->key, &a->val, BPF_ANY))
		return SA_PUT_EFAIL;
	nv = bpf_map_lookup_elem(&esp_sa, &a->key);
	if (nv)
		sync_mark(SYNC_MAP_SA, &nv->sync, &a->key, sizeof(a->key));
	return res;
}

/* esp_sa_del removes the SA of esp_sa_args[0].key (deleted or rekeyed in
 * the kernel) and records the tombstone for the sync. Returns 0, or -1
 * when there was none. */
SEC("syscall")
int esp_sa_del(void *ctx)
{
	__u32 zero = 0;
	struct sa_put *a = bpf_map_lookup_elem(&esp_sa_args, &zero);

	if (!a)
		return -1;
	if (bpf_map_delete_elem(&esp_sa, &a->key))
		return -1;
	sync_mark_deleted(SYNC_MAP_SA, &a->key, sizeof(a->key));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
