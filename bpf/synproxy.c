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

/* The stages, in the order a packet meets them (docs/synproxy.md, "File
 * layout"). */
#include "synproxy/maps.h"
#include "synproxy/maglev.h"
#include "synproxy/tcpopt.h"
#include "synproxy/segment.h"
#include "synproxy/fwd.h"
#include "synproxy/handshake.h"
#include "synproxy/established.h"
#include "synproxy/icmp.h"
#include "synproxy/expire.h"
#include "synproxy/health.h"

/* sp_claim answers a frame the proxy handled: a rewritten segment left to
 * the kernel (FWD_KERNEL) is XDP_PASS to the hook, yet the proxy's. */
static __always_inline int sp_claim(int r)
{
	return chain_claim(STAGE_SYNPROXY, r == FWD_KERNEL ? XDP_PASS : r);
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

	/* The keys live in scratch memory, the parsed packet in the chain's
	 * context (read in place: a copy cost ~9 ns a segment): the deepest
	 * call chain under this frame needs almost all of the 512-byte stack
	 * on verifiers that round frames up (before 6.8). */
	if (!scr || !c)
		return XDP_PASS;
	if (c->parsed != PARSE_IP)
		return chain_next(ctx, c, STAGE_SYNPROXY); /* the gate judges what is not ours */
	p = &c->p;
	sk = &scr->sk;
	if ((p->l4_proto == IPPROTO_ICMP && p->eth_proto == ETH_P_IP) || (p->l4_proto == IPPROTO_ICMPV6 && p->eth_proto == ETH_P_IPV6)) {
		if (p->frag)
			return chain_next(ctx, c, STAGE_SYNPROXY);
		r = icmp_err(ctx, p);
		if (r == XDP_PASS)
			return chain_next(ctx, c, STAGE_SYNPROXY);
		return sp_claim(r);
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
		return sp_claim(r);
	j = &scr->job;
	if (j->opts && xlate_opts(ctx, j->where, j->tsval_add, j->tsecr_add, j->sack_add))
		return chain_claim(STAGE_SYNPROXY, XDP_DROP);
	return sp_claim(fwd_pending(ctx, j));
}

/* ---- TC ingress: the backend's SYN-ACK ---------------------------------- */

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
