/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* esp_sa.h: the SA replay state map, esp_sa (replicated as SYNC_MAP_SA).
 *
 * Shared by the ESP pre-filter stage (esp.c, which reads it per packet)
 * and the replay tracer (esptrace.c, which writes the kernel's verified
 * state into it). The layout is the one of h-sawin's esp.c (issue 14);
 * until both branches are merged it is written here too: at the merge,
 * esp.c includes this header instead of its own copy, so that the two
 * objects share the pinned map (same type, key, value and size).
 */
#pragma once

#include "common.h"
#include "sync.h"

#ifndef IPPROTO_ESP
#define IPPROTO_ESP 50
#endif

#define ESP_WIN_MAX 4096                 /* the largest window the stage judges */
#define ESP_BMP_WORDS (ESP_WIN_MAX / 32) /* the kernel's bmp is __u32 words */

enum sa_encap {
	SA_ENCAP_NONE = 0, /* ESP over IP (protocol 50) */
	SA_ENCAP_UDP = 1,  /* ESP in UDP, port 4500 (RFC 3948) */
};

enum sa_flags {
	SA_F_ESN = 1,     /* extended (64-bit) sequence numbers */
	SA_F_REPLACE = 2, /* esp_sa_put only, never stored: a new SA under the key (XFRM_MSG_NEWSA) */
};

struct sa_key {
	__u8 daddr[16]; /* IPv4-mapped for IPv4, as parse.h stores it */
	__be32 spi;     /* as on the wire */
	__u8 proto;     /* IPPROTO_ESP */
	__u8 encap;     /* enum sa_encap */
	__u16 pad;
};

struct sa_val {
	struct sync_hdr sync;
	/* Inbound, as the kernel verified it (XFRMA_REPLAY_ESN_VAL): the
	 * highest authenticated sequence number and the window behind it. */
	__u32 seq;     /* low 32 bits */
	__u32 seq_hi;  /* high 32 bits (ESN; 0 otherwise) */
	__u32 window;  /* replay window in packets, 1..ESP_WIN_MAX; 0: not judged */
	__u32 flags;   /* enum sa_flags */
	/* Outbound, for the standby's takeover (the kernel's oseq/oseq_hi). */
	__u32 oseq;
	__u32 oseq_hi;
	/* Counted by the stage; they ride along with the state. */
	__u64 drop_replay;
	__u64 drop_stale;
	__u64 passed;
	/* The kernel's bitmap: the bit of sequence number s is bit
	 * (s - 1) % window of the ring, bit b of word b / 32. */
	__u32 bmp[ESP_BMP_WORDS];
};

/* Not preallocated: a value replaced whole (bpf_map_update_elem) is
 * linked in and the old one freed after RCU, so the stage reads either
 * the old state or the new one, never a torn mix. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sa_key);
	__type(value, struct sa_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} esp_sa SEC(".maps");
