//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* chainbench.c: test-only. The alternative to the chain that issue 12
 * rejects, built only to measure it: one monolithic XDP program that
 * parses the frame as the chain's entry does, then calls each configured
 * stage as a noinline bpf-to-bpf function instead of tail-calling it.
 * BenchmarkXDPChain runs it beside the chain with the same number of
 * declining stages, so docs/chain.md can say what a tail-call hop costs
 * against a function call. The loader never loads it.
 *
 * It also holds the chain as it was first written (xdp_entry_indirect,
 * xdp_decline_indirect): chain_next with one bpf_tail_call in a loop,
 * which clang compiles to one call site with a variable key; the x86-64
 * JIT emits that as an indirect jump (a retpoline where those are on),
 * where chain.h's constant key per call site becomes a direct jump.
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/chain.h"

/* Bit per stage function to call (0..6), set by the benchmark. */
const volatile __u32 cfg_stages = 0;

#define DECLINE (-1)

/* A stage that declines: it reads the context the entry parsed (as every
 * chain stage does first) and passes. The test on c keeps the compiler
 * from folding the call away; no benchmark frame matches it. Seven
 * copies, one per stage, as a monolith would hold seven features. */
#define STAGE(n)                                                                 \
	static __attribute__((noinline)) int stage_##n(struct xdp_md *ctx, struct chain_ctx *c) \
	{                                                                        \
		if (c->parsed == PARSE_IP && c->p.l4_proto == 253 + (n & 1))     \
			return XDP_DROP;                                         \
		return DECLINE;                                                  \
	}
STAGE(0)
STAGE(1)
STAGE(2)
STAGE(3)
STAGE(4)
STAGE(5)
STAGE(6)

#define STEP(n)                                          \
	if (cfg_stages & (1u << n)) {                    \
		r = stage_##n(ctx, c);                   \
		if (r != DECLINE)                        \
			return chain_claim(n, r);        \
	}

SEC("xdp")
int xdp_mono(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct chain_ctx *c = chain_get();
	int r;

	if (!c)
		return XDP_PASS;
	c->parsed = parse_frame(&c->p, data, data_end);
	c->stages = cfg_stages;
	c->vip = CHAIN_VIP_UNKNOWN;
	STEP(0)
	STEP(1)
	STEP(2)
	STEP(3)
	STEP(4)
	STEP(5)
	STEP(6)
	/* what the chain's entry counts when no stage claimed the packet */
	chain_count(STAGE_END, 0);
	return XDP_PASS;
}

/* chain_next_indirect is chain.h's chain_next with one tail call in a
 * loop: clang merges the unrolled calls into one site, key in a register. */
static __always_inline int chain_next_indirect(struct xdp_md *ctx, struct chain_ctx *c, int after)
{
	__u32 rest = c->stages;
	__u32 i;

	if (after >= 0)
		rest &= ~((2u << after) - 1);
#pragma unroll
	for (i = 0; i < CHAIN_SLOTS; i++) {
		if (rest & (1u << i)) {
			bpf_tail_call(ctx, &chain_progs, i);
			chain_count(i, 1);
			return XDP_PASS;
		}
	}
	chain_count(STAGE_END, 0);
	return XDP_PASS;
}

/* xdp_entry_indirect is chain.c's xdp_chain with chain_next_indirect. */
SEC("xdp")
int xdp_entry_indirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct chain_ctx *c = chain_get();

	if (!c)
		return XDP_PASS;
	c->parsed = parse_frame(&c->p, data, data_end);
	c->stages = cfg_stages;
	c->vip = CHAIN_VIP_UNKNOWN;
	return chain_next_indirect(ctx, c, -1);
}

/* xdp_decline_indirect is chain.c's xdp_decline with chain_next_indirect. */
const volatile __s32 cfg_slot = 0;

SEC("xdp")
int xdp_decline_indirect(struct xdp_md *ctx)
{
	struct chain_ctx *c = chain_get();

	if (!c)
		return XDP_PASS;
	return chain_next_indirect(ctx, c, cfg_slot);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
