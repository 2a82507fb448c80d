//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* vipgate.c: the VIP gate and per-VIP counters.
 *
 * vip_gate says, for each VIP, whether this host owns it. Ingress traffic
 * to a VIP this host does not own is dropped (gate_mode enforce) or only
 * counted (monitor), so exactly one host of a pair serves a VIP. Traffic to
 * owned VIPs is counted per VIP per CPU; egress traffic from a VIP is
 * counted on the way out. Frames whose headers are truncated or
 * inconsistent are counted and dropped; non-IP frames pass untouched.
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/gate.h"
#include "include/chain.h"

enum gate_mode {
	GATE_MONITOR = 0,
	GATE_ENFORCE = 1,
};

/* Reasons counted in the global stats map, one slot each. */
enum stat_reason {
	STAT_PASS_NON_IP = 0,
	STAT_PASS_NON_VIP = 1,
	STAT_PASS_VIP = 2,
	STAT_DROP_MALFORMED = 3,
	STAT_DROP_NOT_OWNER = 4,
	STAT_PASS_NOT_OWNER = 5, /* monitor mode: would have been dropped */
	STAT_TX_VIP = 6,
	STAT_MAX = 7,
};

struct vip_counters {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 drop_not_owner;
};

/* Load-time constants, set by the loader before the verifier sees them. */
const volatile enum gate_mode cfg_gate_mode = GATE_ENFORCE;


struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u32);
	__type(value, struct vip_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, enum stat_reason);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");


enum verdict { V_PASS, V_DROP };

/* gate_ingress judges one parsed ingress frame; both the XDP and the TC ingress
 * program call it so the two hooks cannot disagree. *vip tells the stages
 * after the gate what it decided (enum chain_vip). */
static __always_inline enum verdict gate_ingress(struct pkt *p, int parsed, __u64 len, __u32 *vip)
{
	struct vip_counters *vc;
	struct vip_entry *ve;

	switch (parsed) {
	case PARSE_NOT_IP:
		count_percpu(&stats, STAT_PASS_NON_IP, 1);
		return V_PASS;
	case PARSE_MALFORMED:
		count_percpu(&stats, STAT_DROP_MALFORMED, 1);
		return V_DROP;
	}

	ve = bpf_map_lookup_elem(&vip_gate, p->daddr);
	if (!ve) {
		*vip = CHAIN_VIP_NONE;
		count_percpu(&stats, STAT_PASS_NON_VIP, 1);
		return V_PASS;
	}
	vc = bpf_map_lookup_elem(&vip_stats, &ve->index);
	if (!ve->owned) {
		*vip = CHAIN_VIP_NOT_OWNED;
		if (vc)
			vc->drop_not_owner++;
		if (cfg_gate_mode == GATE_ENFORCE) {
			count_percpu(&stats, STAT_DROP_NOT_OWNER, 1);
			return V_DROP;
		}
		count_percpu(&stats, STAT_PASS_NOT_OWNER, 1);
		return V_PASS;
	}
	*vip = CHAIN_VIP_OWNED;
	if (vc) {
		vc->rx_packets++;
		vc->rx_bytes += len;
	}
	count_percpu(&stats, STAT_PASS_VIP, 1);
	return V_PASS;
}

/* xdp_vipgate is the gate's stage of the XDP chain (slot 0: its verdict
 * holds for every feature after it). It reads the frame the chain's entry
 * parsed; what it lets through goes on to the next stage. */
SEC("xdp")
int xdp_vipgate(struct xdp_md *ctx)
{
	struct chain_ctx *c = chain_get();

	if (!c)
		return XDP_PASS;
	if (gate_ingress(&c->p, c->parsed, ctx->data_end - ctx->data, &c->vip) == V_DROP)
		return chain_claim(STAGE_GATE, XDP_DROP);
	return chain_next(ctx, c, STAGE_GATE);
}

/* TC programs see only the linear part of an skb. When the headers the
 * parser wants are not all linear, pull them in (capped, so a jumbo frame is
 * not linearised whole) and parse again. The fast path never pulls. */
static __always_inline int parse_skb(struct pkt *p, struct __sk_buff *skb)
{
	int r = parse_frame(p, (void *)(long)skb->data, (void *)(long)skb->data_end);

	if (r != PARSE_MALFORMED)
		return r;
	if (bpf_skb_pull_data(skb, skb->len < 192 ? skb->len : 192) < 0)
		return r;
	return parse_frame(p, (void *)(long)skb->data, (void *)(long)skb->data_end);
}

SEC("tc")
int tc_vipgate_ingress(struct __sk_buff *skb)
{
	struct pkt p;
	__u32 vip;

	if (gate_ingress(&p, parse_skb(&p, skb), skb->len, &vip) == V_DROP)
		return TC_ACT_SHOT;
	return TC_NEXT;
}

SEC("tc")
int tc_vipgate_egress(struct __sk_buff *skb)
{
	struct vip_counters *vc;
	struct vip_entry *ve;
	struct pkt p;

	/* Egress frames come from our own stack; a parse failure here is
	 * not ours to police, so it is passed. */
	if (parse_skb(&p, skb) != PARSE_IP)
		return TC_NEXT;
	ve = bpf_map_lookup_elem(&vip_gate, p.saddr);
	if (!ve)
		return TC_NEXT;
	vc = bpf_map_lookup_elem(&vip_stats, &ve->index);
	if (vc) {
		vc->tx_packets++;
		vc->tx_bytes += skb->len;
	}
	count_percpu(&stats, STAT_TX_VIP, 1);
	return TC_NEXT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
