//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* chainbench.c: test-only. The alternative to the chain that issue 12
 * rejects, built only to measure it: one monolithic XDP program that
 * parses the frame as the chain's entry does, then calls each configured
 * stage as a noinline bpf-to-bpf function instead of tail-calling it.
 * BenchmarkXDPChain runs it beside the chain with the same number of
 * declining stages, so docs/chain.md can say what a tail-call hop costs
 * against a function call. The loader never loads it.
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
