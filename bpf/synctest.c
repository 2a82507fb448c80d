//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* synctest.c: a test-only program that drives the state-sync engine with
 * real packets before the features exist. A UDP datagram to port 7777
 * carries commands; each inserts, updates or deletes entries of the
 * registered map sync_test, marking them dirty as a feature would.
 */
#include "include/common.h"
#include "include/parse.h"
#include "include/sync.h"

#define SYNCTEST_PORT 7777
#define CMD_MAX_KEYS 64

#define CMD_MAX_REPEAT 1024

enum synctest_op {
	ST_UPSERT = 1, /* value += delta for keys [key, key+count) */
	ST_DELETE = 2, /* delete keys [key, key+count) */
	ST_REPEAT = 3, /* value += delta for key, count times (a hot entry) */
};

struct synctest_cmd {
	enum synctest_op op;
	__u32 count; /* keys key .. key+count-1, at most CMD_MAX_KEYS; ST_REPEAT: times, at most CMD_MAX_REPEAT */
	__u32 key;
	__u32 pad;
	__u64 delta;
};

/* 0 turns mark_dirty off, so a benchmark can price it. */
const volatile __u32 cfg_mark = 1;

/* Never read: keeps the command layout in BTF for bpf2go. */
const volatile struct synctest_cmd synctest_cmd_layout = {};

struct synctest_val {
	struct sync_hdr sync;
	__u64 value;
	__u64 updates;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 21);
	__type(key, __u32);
	__type(value, struct synctest_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sync_test SEC(".maps");

SYNC_ACCESSORS(sync_test, __u32, struct synctest_val)

static __always_inline void apply_one(enum synctest_op op, __u32 key, __u64 delta)
{
	struct synctest_val *v, fresh = {};

	if (op == ST_DELETE) {
		if (bpf_map_delete_elem(&sync_test, &key) == 0 && cfg_mark)
			sync_mark_deleted(SYNC_MAP_TEST, &key, sizeof(key));
		return;
	}
	v = bpf_map_lookup_elem(&sync_test, &key);
	if (!v) {
		bpf_map_update_elem(&sync_test, &key, &fresh, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&sync_test, &key);
		if (!v)
			return;
	}
	__sync_fetch_and_add(&v->value, delta);
	__sync_fetch_and_add(&v->updates, 1);
	if (cfg_mark)
		sync_mark(SYNC_MAP_TEST, &v->sync, &key, sizeof(key));
}

struct repeat_ctx {
	__u32 key;
	__u64 delta;
};

static long repeat_one(__u32 i, void *data)
{
	struct repeat_ctx *rc = data;

	apply_one(ST_UPSERT, rc->key, rc->delta);
	return 0;
}

SEC("xdp")
int xdp_synctest(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct synctest_cmd *cmd;
	struct pkt p;
	__u32 i;

	if (parse_frame(&p, data, data_end) != PARSE_IP || p.l4_proto != IPPROTO_UDP || p.dport != bpf_htons(SYNCTEST_PORT))
		return XDP_PASS;
	cmd = data + (p.l4_off & 0x1ff) + sizeof(struct udphdr);
	if ((void *)(cmd + 1) > data_end)
		return XDP_DROP;
	if (cmd->op == ST_REPEAT) {
		struct repeat_ctx rc = {.key = cmd->key, .delta = cmd->delta};

		/* bpf_loop: the verifier checks the body once, not 1024 times. */
		bpf_loop(cmd->count < CMD_MAX_REPEAT ? cmd->count : CMD_MAX_REPEAT, repeat_one, &rc, 0);
		return XDP_DROP;
	}
	for (i = 0; i < CMD_MAX_KEYS; i++) {
		if (i >= cmd->count)
			break;
		apply_one(cmd->op, cmd->key + i, cmd->delta);
	}
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
