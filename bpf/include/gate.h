/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* gate.h: the VIP gate, one map shared by every program that serves a VIP.
 *
 * vip_gate says, for each VIP, whether this host owns it. It is pinned by
 * name, so vipgate.c and synproxy.c loaded under one root use the same
 * map: the daemon's election flips one entry and both datapaths follow.
 * A VIP with no entry is not under election (a single host serves it).
 */
#ifndef TANDEM_GATE_H
#define TANDEM_GATE_H

#define MAX_VIPS 1024

struct vip_key {
	__u8 addr[16]; /* IPv6, or IPv4-mapped IPv6 */
};

struct vip_entry {
	__u32 owned; /* 1: this host serves the VIP */
	__u32 index; /* slot in vip_stats, chosen by the loader */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, struct vip_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vip_gate SEC(".maps");

#endif
