//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* chain.c: the entry of an interface's XDP chain (see include/chain.h).
 *
 * One copy is loaded per interface, with that interface's chain maps and
 * its stage bits as a load-time constant: changing which features run
 * there loads a new entry and swaps it in through the pinned XDP link, in
 * one atomic step.
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/chain.h"

/* Bit per configured slot (enum chain_stage), set by the loader. */
const volatile __u32 cfg_stages = 0;

SEC("xdp")
int xdp_chain(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct chain_ctx *c = chain_get();

	if (!c)
		return XDP_PASS;
	c->parsed = parse_frame(&c->p, data, data_end);
	c->stages = cfg_stages;
	c->vip = CHAIN_VIP_UNKNOWN;
	return chain_next(ctx, c, -1);
}

/* xdp_decline declines every packet: the benchmark fills slots with it to
 * measure what one more stage costs. cfg_slot is the slot it sits in. */
const volatile __s32 cfg_slot = 0;

SEC("xdp")
int xdp_decline(struct xdp_md *ctx)
{
	struct chain_ctx *c = chain_get();

	if (!c)
		return XDP_PASS;
	return chain_next(ctx, c, cfg_slot);
}

/* xdp_pass is the benchmark's anchor: the cheapest XDP program there is. */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
