//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* esptrace.c: the kernel's verified SA replay state, copied into esp_sa
 * and marked dirty when it changes (issue 14, docs/sa.md "Kernel side").
 *
 * Two fexit programs, on the functions every ESP packet goes through
 * once its state changed (both in BTF on 6.1 and 6.18):
 *
 *   xfrm_replay_advance(x, net_seq): inbound, after the ICV verified the
 *     packet; it moves the window top or sets a bit. The tracer copies the
 *     SA's replay state (seq, seq_hi, window, bitmap) into esp_sa.
 *   xfrm_replay_overflow(x, skb): outbound, after the SA's sequence
 *     number was taken for a packet (0: sent). The tracer copies oseq.
 *
 * Only SAs esp_sa already holds are followed: user space puts the SAs its
 * filter selects (xfrm.Filter), so the others cost one hash lookup.
 *
 * The inbound state is written as a whole new value (bpf_map_update_elem
 * on the non-preallocated esp_sa), never field by field in place: the
 * XDP stage reads the entry concurrently, and a new top with the old
 * bitmap would make it drop packets the kernel accepts. The outbound
 * sequence is not read by the stage and is written in place, in one
 * 64-bit store. Either way the entry is marked after the write
 * (sync_mark), so a drain that takes the record reads the new value.
 *
 * Kernels that refuse fexit get the same body from kprobes on the same
 * functions; kernels without the functions fall back to XFRM aevents in
 * user space (tandem probe says which is used).
 */
#include "include/common.h"
#include "include/sync.h"
#include "include/esp_sa.h"

/* tandem is built for x86-64 (gen.go's include path): the kprobe
 * fallback reads its arguments from x86's registers. */
#ifndef __TARGET_ARCH_x86
#define __TARGET_ARCH_x86
#endif
#include <asm/ptrace.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/* The uapi structs are stable, but read them relocatably anyway: the
 * kernel structs that embed them are not. */
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
#include <linux/xfrm.h>

/* The parts of the kernel's structs the tracer reads, relocated by name
 * against the running kernel's BTF (libbpf drops the ___et). */
struct ns_common___et {
	unsigned int inum;
};

struct net___et {
	struct ns_common___et ns;
};

struct xfrm_state___et {
	struct {
		struct net___et *net;
	} xs_net;
	struct xfrm_id id;
	struct {
		__u8 replay_window;
		__u8 flags;
		__u16 family;
	} props;
	struct xfrm_replay_state replay;
	struct xfrm_replay_state_esn *replay_esn;
	struct xfrm_encap_tmpl *encap;
};
#pragma clang attribute pop

#ifndef AF_INET
#define AF_INET 2
#define AF_INET6 10
#endif

enum esptrace_stat {
	ESPTRACE_ADVANCE = 0,   /* inbound advances seen */
	ESPTRACE_IN_SYNCED = 1, /* ... of an SA in esp_sa: copied and marked */
	ESPTRACE_OUTBOUND = 2,  /* outbound sequence numbers taken */
	ESPTRACE_OUT_SYNCED = 3,
	ESPTRACE_TOO_WIDE = 4,  /* a window above ESP_WIN_MAX: copied with window 0 (not judged) */
	ESPTRACE_FAILED = 5,    /* the value could not be replaced */
	ESPTRACE_STAT_MAX = 6,
};

const volatile enum esptrace_stat esptrace_stat_layout = 0;

/* The network namespace (its inode number) whose SAs are followed; 0:
 * every namespace. SAs are keyed without one, and the two ends of an SA
 * share its key: a host with both ends (a test) must pick one. */
const volatile __u32 cfg_netns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ESPTRACE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} esptrace_stats SEC(".maps");

/* esptrace_paused[0] != 0: follow nothing. The standby pauses the
 * tracer: there only the sync's applier writes esp_sa (a local write
 * would bump an entry's version past the owner's, and the applier would
 * skip the owner's next delta as not newer). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} esptrace_paused SEC(".maps");

/* The new value is built here: it is larger than the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sa_val);
} esptrace_scratch SEC(".maps");

/* Every kernel read goes through BPF_CORE_READ (bpf_probe_read_kernel),
 * so one body serves both the fexit programs (whose arguments are BTF
 * pointers) and the kprobe fallback (whose are plain addresses). */
static __always_inline int sa_key_of(struct xfrm_state___et *x, struct sa_key *k)
{
	__u32 zero = 0, *paused = bpf_map_lookup_elem(&esptrace_paused, &zero);
	__u16 family;

	if (!paused || *paused)
		return 0;
	family = BPF_CORE_READ(x, props.family);

	if (cfg_netns && BPF_CORE_READ(x, xs_net.net, ns.inum) != cfg_netns)
		return 0;
	if (BPF_CORE_READ(x, id.proto) != IPPROTO_ESP)
		return 0;
	k->proto = IPPROTO_ESP;
	k->spi = BPF_CORE_READ(x, id.spi);
	k->encap = BPF_CORE_READ(x, encap) ? SA_ENCAP_UDP : SA_ENCAP_NONE;
	if (family == AF_INET) {
		__u32 a4 = BPF_CORE_READ(x, id.daddr.a4);

		k->daddr[10] = 0xff;
		k->daddr[11] = 0xff;
		__builtin_memcpy(&k->daddr[12], &a4, 4);
		return 1;
	}
	if (family == AF_INET6) {
		bpf_core_read(k->daddr, 16, &x->id.daddr.a6);
		return 1;
	}
	return 0;
}

/* trace_in copies x's inbound replay state after an advance. */
static __always_inline void trace_in(struct xfrm_state___et *x)
{
	struct xfrm_replay_state_esn *esn;
	struct sa_key k = {};
	struct sa_val *cur, *v;
	__u32 zero = 0;

	count_percpu(&esptrace_stats, ESPTRACE_ADVANCE, 1);
	if (!sa_key_of(x, &k))
		return;
	cur = bpf_map_lookup_elem(&esp_sa, &k);
	if (!cur)
		return;
	v = bpf_map_lookup_elem(&esptrace_scratch, &zero);
	if (!v)
		return;
	__builtin_memcpy(v, cur, sizeof(*v));
	v->flags = (BPF_CORE_READ(x, props.flags) & XFRM_STATE_ESN) ? SA_F_ESN : 0;
	esn = BPF_CORE_READ(x, replay_esn);
	if (esn) {
		__u32 n = BPF_CORE_READ(esn, bmp_len);

		v->seq = BPF_CORE_READ(esn, seq);
		v->seq_hi = BPF_CORE_READ(esn, seq_hi);
		v->window = BPF_CORE_READ(esn, replay_window);
		if (n > ESP_BMP_WORDS || v->window > ESP_WIN_MAX) {
			count_percpu(&esptrace_stats, ESPTRACE_TOO_WIDE, 1);
			v->window = 0;
		} else {
			bpf_probe_read_kernel(v->bmp, n * 4, &esn->bmp);
		}
	} else {
		/* Legacy state (window at most 32): bit d of the bitmap says
		 * seq - d arrived; put it in the ring layout, bit (seq-d-1) % w. */
		__u32 seq = BPF_CORE_READ(x, replay.seq), bits = BPF_CORE_READ(x, replay.bitmap);
		__u32 w = BPF_CORE_READ(x, props.replay_window), ring = 0;

		v->seq = seq;
		v->seq_hi = 0;
		v->window = w;
		if (w > 32)
			w = 32;
#pragma clang loop unroll(full)
		for (__u32 d = 0; d < 32; d++)
			if (d < w && d < seq && (bits & (1u << d)))
				ring |= 1u << ((seq - d - 1) % w);
		v->bmp[0] = ring;
	}
	v->sync.version++;
	if (bpf_map_update_elem(&esp_sa, &k, v, BPF_EXIST)) {
		count_percpu(&esptrace_stats, ESPTRACE_FAILED, 1);
		return;
	}
	/* Marked after the write: the drain reads at least this value. */
	cur = bpf_map_lookup_elem(&esp_sa, &k);
	if (cur)
		sync_mark(SYNC_MAP_SA, &cur->sync, &k, sizeof(k));
	count_percpu(&esptrace_stats, ESPTRACE_IN_SYNCED, 1);
}

/* trace_out copies x's outbound sequence number after one was taken. */
static __always_inline void trace_out(struct xfrm_state___et *x)
{
	struct xfrm_replay_state_esn *esn;
	struct sa_key k = {};
	struct sa_val *cur;
	__u64 o;

	count_percpu(&esptrace_stats, ESPTRACE_OUTBOUND, 1);
	if (!sa_key_of(x, &k))
		return;
	cur = bpf_map_lookup_elem(&esp_sa, &k);
	if (!cur)
		return;
	esn = BPF_CORE_READ(x, replay_esn);
	if (esn)
		o = (__u64)BPF_CORE_READ(esn, oseq_hi) << 32 | BPF_CORE_READ(esn, oseq);
	else
		o = BPF_CORE_READ(x, replay.oseq);
	/* oseq and oseq_hi are adjacent and 8-aligned: one store, so the
	 * drain never reads a wrapped low half with the old high half. */
	*(volatile __u64 *)&cur->oseq = o;
	sync_mark(SYNC_MAP_SA, &cur->sync, &k, sizeof(k));
	count_percpu(&esptrace_stats, ESPTRACE_OUT_SYNCED, 1);
}

SEC("fexit/xfrm_replay_advance")
int esptrace_advance(__u64 *ctx)
{
	trace_in((void *)ctx[0]);
	return 0;
}

SEC("fexit/xfrm_replay_overflow")
int esptrace_overflow(__u64 *ctx)
{
	/* xfrm_replay_overflow(x, skb) returned ctx[2]: 0 when a number was taken. */
	if ((int)ctx[2] == 0)
		trace_out((void *)ctx[0]);
	return 0;
}

/* The kprobe fallback, for kernels that refuse fexit (no trampolines, or
 * tracing programs forbidden) but allow kprobes: the entry probe keeps
 * the SA pointer per CPU, the return probe copies the state. Both
 * functions run with the SA's lock held and bottom halves off (inbound in
 * softirq, outbound under spin_lock_bh), so a CPU never enters one of
 * them twice before it returns: one slot per function and CPU suffices. */
enum { SLOT_ADVANCE = 0, SLOT_OVERFLOW = 1 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} esptrace_slot SEC(".maps");

static __always_inline void slot_put(__u32 i, __u64 x)
{
	__u64 *s = bpf_map_lookup_elem(&esptrace_slot, &i);

	if (s)
		*s = x;
}

static __always_inline __u64 slot_take(__u32 i)
{
	__u64 *s = bpf_map_lookup_elem(&esptrace_slot, &i), x = 0;

	if (s) {
		x = *s;
		*s = 0;
	}
	return x;
}

SEC("kprobe/xfrm_replay_advance")
int esptrace_k_advance(struct pt_regs *ctx)
{
	slot_put(SLOT_ADVANCE, PT_REGS_PARM1(ctx));
	return 0;
}

SEC("kretprobe/xfrm_replay_advance")
int esptrace_kr_advance(struct pt_regs *ctx)
{
	__u64 x = slot_take(SLOT_ADVANCE);

	if (x)
		trace_in((void *)x);
	return 0;
}

SEC("kprobe/xfrm_replay_overflow")
int esptrace_k_overflow(struct pt_regs *ctx)
{
	slot_put(SLOT_OVERFLOW, PT_REGS_PARM1(ctx));
	return 0;
}

SEC("kretprobe/xfrm_replay_overflow")
int esptrace_kr_overflow(struct pt_regs *ctx)
{
	__u64 x = slot_take(SLOT_OVERFLOW);

	if (x && (int)PT_REGS_RC(ctx) == 0)
		trace_out((void *)x);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
