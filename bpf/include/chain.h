/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* chain.h: one XDP datapath per interface, several features on it.
 *
 * An interface's XDP hook runs one entry program (chain.c). It parses the
 * frame once into the per-CPU chain context and tail-calls the first
 * configured stage; a stage either claims the packet (returns its verdict)
 * or declines it and tail-calls the next configured stage. The stages are
 * the features' own programs, one bpf2go object each, in the slots of the
 * interface's program array (chain_progs), in a fixed order:
 *
 *   slot 0 gate      the VIP gate: a VIP this host does not own is dropped
 *                    before any other feature can serve it
 *   slot 1 migrate   migration redirects (before the services: a moving
 *                    endpoint's packets go where the endpoint is)
 *   slot 2 esp       the ESP anti-replay pre-filter
 *   slot 3 synproxy  the SYN proxy (serves owned services, translates flows)
 *   slot 7 synctest  test-only: drives the state sync with UDP commands
 *
 * Tail calls are made only from a program's own frame (the inline
 * chain_next below, called from a SEC("xdp") function), never from a
 * subprogram: the verifier caps at 256 bytes the stack of frames that
 * reach a tail call from a subprogram, and the SYN proxy needs more.
 *
 * Each interface has its own chain_progs, chain_ctx, chain_stats and
 * chain_info; the loader hands them to every program it loads for that
 * interface (map replacement), so a stage program references exactly one
 * chain. A missed tail call (an empty slot the entry said was configured)
 * is counted against that slot and answered with XDP_PASS.
 */
#pragma once

#include "common.h"
#include "parse.h"

#define CHAIN_SLOTS 8

/* The chain's layout version: bumped whenever struct chain_ctx or the
 * calling convention changes. The loader swaps single slots only between
 * programs of the same version; otherwise it builds a new chain and swaps
 * the root. */
enum chain_abi { CHAIN_ABI = 1 };

enum chain_stage {
	STAGE_GATE = 0,
	STAGE_MIGRATE = 1,
	STAGE_ESP = 2,
	STAGE_SYNPROXY = 3,
	STAGE_SYNCTEST = 7,
	/* chain_stats slot for packets no stage claimed (passed to the stack) */
	STAGE_END = CHAIN_SLOTS,
};

/* What the gate decided for the destination, for the stages after it. */
enum chain_vip {
	CHAIN_VIP_UNKNOWN = 0, /* no gate stage on this interface */
	CHAIN_VIP_NONE = 1,    /* not a VIP under the gate */
	CHAIN_VIP_OWNED = 2,
	CHAIN_VIP_NOT_OWNED = 3, /* only reaches later stages in monitor mode */
};

struct chain_ctx {
	struct pkt p;   /* parse_frame's result, valid when parsed == PARSE_IP */
	__s32 parsed;   /* enum parse_result */
	__u32 stages;   /* bit per configured slot, from the entry */
	__u32 vip;      /* enum chain_vip */
	__u32 pad;
};

struct chain_stat {
	__u64 claimed; /* packets this stage answered */
	__u64 missed;  /* tail calls into this slot that found no program */
};

struct chain_info {
	__u32 abi;    /* CHAIN_ABI of the programs in chain_progs */
	__u32 stages; /* the entry's stage bits */
};

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, CHAIN_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} chain_progs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct chain_ctx);
} chain_ctx_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CHAIN_SLOTS + 1);
	__type(key, __u32);
	__type(value, struct chain_stat);
} chain_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct chain_info);
} chain_info_map SEC(".maps");

static __always_inline struct chain_ctx *chain_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&chain_ctx_map, &zero);
}

static __always_inline void chain_count(__u32 slot, int missed)
{
	struct chain_stat *s = bpf_map_lookup_elem(&chain_stats, &slot);

	if (!s)
		return;
	if (missed)
		s->missed++;
	else
		s->claimed++;
}

/* chain_claim records that the stage in slot answered the packet. */
static __always_inline int chain_claim(__u32 slot, int verdict)
{
	chain_count(slot, 0);
	return verdict;
}

/* chain_next passes the packet to the first configured stage after slot
 * `after` (-1: the first stage), or to the stack when none is left.
 * Inline on purpose: the tail call must sit in the program's own frame.
 *
 * One tail call per slot, each with a constant key (bpf_tail_call_static):
 * the verifier then tracks each call site's slot and the x86-64 JIT emits
 * a direct jump, patched when the slot's program changes. A loop over
 * bpf_tail_call lets clang merge the eight calls into one site with a
 * variable key, which the JIT must emit as an indirect jump (a retpoline
 * where those are on): BenchmarkXDPChain measured ~24 ns per declining
 * stage that way against ~6 ns direct (docs/chain.md, Cost). */
#define CHAIN_TRY(i)                                               \
	if (rest & (1u << (i))) {                                  \
		bpf_tail_call_static(ctx, &chain_progs, (i));      \
		chain_count((i), 1);                               \
		return XDP_PASS;                                   \
	}
static __always_inline int chain_next(struct xdp_md *ctx, struct chain_ctx *c, int after)
{
	__u32 rest = c->stages;

	if (after >= 0)
		rest &= ~((2u << after) - 1);
	_Static_assert(CHAIN_SLOTS == 8, "chain_next tries slots 0..7");
	CHAIN_TRY(0)
	CHAIN_TRY(1)
	CHAIN_TRY(2)
	CHAIN_TRY(3)
	CHAIN_TRY(4)
	CHAIN_TRY(5)
	CHAIN_TRY(6)
	CHAIN_TRY(7)
	chain_count(STAGE_END, 0);
	return XDP_PASS;
}
#undef CHAIN_TRY

/* Never read: keep the layouts in BTF for bpf2go. */
const volatile enum chain_stage chain_stage_layout = 0;
const volatile enum chain_abi chain_abi_layout = 0;
const volatile enum chain_vip chain_vip_layout = 0;
