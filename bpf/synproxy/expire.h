/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* expire.h: idle expiry of connection entries (sp_expire, a syscall
 * program the daemon runs).
 */
#ifndef SYNPROXY_EXPIRE_H
#define SYNPROXY_EXPIRE_H

struct expire_args {
	__u64 now;            /* TAI ns */
	__u64 syn_sent_ns;    /* timeouts by state */
	__u64 established_ns;
	__u64 closing_ns;
	__u32 short_lived;    /* out: entries left in a state with a short timeout */
	__u32 pad;
};

struct expire_ctx {
	struct expire_args a;
	__u32 deleted;
	__u32 short_lived;
};

static long expire_one(void *map, struct conn_key *k, struct conn_val *v, struct expire_ctx *x)
{
	__u64 t = v->state == CONN_ESTABLISHED ? x->a.established_ns : v->state == CONN_SYN_SENT ? x->a.syn_sent_ns : x->a.closing_ns;

	if (x->a.now > v->last_ns && x->a.now - v->last_ns > t) {
		if (bpf_map_delete_elem(&sp_conns, k) == 0) {
			sync_mark_deleted(SYNC_MAP_CONN, k, sizeof(*k));
			x->deleted++;
		}
		return 0;
	}
	if (v->state != CONN_ESTABLISHED)
		x->short_lived++;
	return 0;
}

#endif /* SYNPROXY_EXPIRE_H */
