/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* health.h: the backends' health verdicts (issue 17), written by the
 * daemon's checks through sp_health_ctl and replicated by the state sync,
 * so a standby knows the owner's verdicts (docs/synproxy.md, "Health
 * checks"). No packet program reads them: the daemon turns them into the
 * service's backend choice.
 *
 * Keyed by addresses, not by sp_backends' (service id, index): the two
 * hosts of a pair number their services and backends independently, and
 * an index moves when the backend list changes.
 */
#ifndef SYNPROXY_HEALTH_H
#define SYNPROXY_HEALTH_H

struct health_key {
	__u8 vaddr[16]; /* the service's VIP, IPv4-mapped for IPv4 */
	__u8 baddr[16]; /* the backend's address, likewise */
	__be16 vport;
	__be16 bport;
	__u8 proto;
	__u8 pad[3];
};

struct health_val {
	struct sync_hdr sync;
	__u8 up;          /* 1: up, 0: down */
	__u8 pad[7];
	__u64 changed_ns; /* Unix ns (wall clock, for display): when the verdict changed */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct health_key);
	__type(value, struct health_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_health SEC(".maps");

SYNC_ACCESSORS(sp_health, struct health_key, struct health_val)

enum health_op {
	HEALTH_OP_SET = 1, /* up and changed_ns from the command */
	HEALTH_OP_DEL = 2,
};

/* sp_health_ctl's argument (BPF_PROG_TEST_RUN ctx_in, copied back). */
struct health_cmd {
	struct health_key key;
	__u32 op;   /* enum health_op */
	__u32 up;
	__u64 changed_ns;
	__s32 ret;  /* 1: written, 0: already so (nothing marked), < 0: -errno */
	__u32 pad;
};

/* Never read: keep the layout in BTF for bpf2go. */
const volatile enum health_op health_op_layout = 0;

/* sp_health_ctl: the daemon's one way to write sp_health, marked for the
 * sync like a packet program's write. A verdict equal to the one held is
 * not written again, so re-publishing (a restart, a takeover) sends
 * nothing; a changed one is updated in place, so its version moves on
 * from whatever the entry held (the peer's, when it came by the sync). */
SEC("syscall")
int sp_health_ctl(struct health_cmd *cmd)
{
	struct health_key key;
	struct health_val *v, fresh = {};

	__builtin_memcpy(&key, &cmd->key, sizeof(key));
	cmd->ret = 0;
	switch (cmd->op) {
	case HEALTH_OP_SET:
		v = bpf_map_lookup_elem(&sp_health, &key);
		if (v && v->up == !!cmd->up)
			return 0;
		if (!v) {
			if (bpf_map_update_elem(&sp_health, &key, &fresh, BPF_NOEXIST) &&
			    !bpf_map_lookup_elem(&sp_health, &key)) {
				cmd->ret = -28; /* ENOSPC */
				return 0;
			}
			v = bpf_map_lookup_elem(&sp_health, &key);
			if (!v) {
				cmd->ret = -2;
				return 0;
			}
		}
		v->changed_ns = cmd->changed_ns;
		v->up = !!cmd->up;
		sync_mark(SYNC_MAP_HEALTH, &v->sync, &key, sizeof(key));
		cmd->ret = 1;
		return 0;
	case HEALTH_OP_DEL:
		if (bpf_map_delete_elem(&sp_health, &key)) {
			cmd->ret = -2;
			return 0;
		}
		sync_mark_deleted(SYNC_MAP_HEALTH, &key, sizeof(key));
		cmd->ret = 1;
		return 0;
	}
	cmd->ret = -22; /* EINVAL */
	return 0;
}

#endif
