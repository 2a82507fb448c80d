/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sync.h: what a replicated state entry embeds, and mark_dirty().
 *
 * Every replicated value starts with struct sync_hdr. A program that changes
 * an entry calls sync_mark(); one that deletes it calls sync_mark_deleted().
 *
 * Dirty rings: one BPF ring buffer per CPU, held in an array-of-maps indexed
 * by CPU id. A program only ever writes its own CPU's ring, so producers
 * never contend on a ring's lock, and it writes with BPF_RB_NO_WAKEUP: the
 * syncer drains on its timer, not per packet, so no wakeup is ever owed.
 * (A single shared ringbuf would serialise every CPU on its spinlock; a
 * perf buffer costs a wakeup decision per record.)
 *
 * "Queued" is an epoch rather than a flag: an entry is in a ring this round
 * when its queued_epoch equals sync_epoch. The syncer drains every ring and
 * then advances sync_epoch, which clears the flag of every drained entry at
 * once (no per-key write from user space, which could not be atomic), and
 * reads the values after that: a change made after the advance queues the
 * entry again, so nothing is lost and a hot entry costs one record a round.
 */
#pragma once

#include "common.h"

#define SYNC_KEY_MAX 48
#define SYNC_MAX_MAPS 32
#define SYNC_MAX_CPUS 512

struct sync_hdr {
	__u64 version;       /* bumped on every change; a peer never applies an older one */
	__u64 queued_epoch;  /* the drain epoch in which this entry went into a ring */
};

/* Registered maps: the id a program passes to sync_mark names the map to
 * the syncer and to the peer. Ids are part of the wire protocol: never
 * reuse one. */
enum sync_map_id {
	SYNC_MAP_TEST = 1, /* synctest.c's sync_test */
	SYNC_MAP_CONN = 2, /* synproxy.c's sp_conns */
	SYNC_MAP_ENDPOINT = 3,  /* migrate.c's endpoint locations (issue 13) */
	SYNC_MAP_MIGRATION = 4, /* migrate.c's migrations in progress (issue 13) */
	SYNC_MAP_SA = 5,        /* esp.c's SA replay state (issue 14) */
	SYNC_MAP_HEALTH = 6,    /* synproxy.c's sp_health: backend verdicts (issue 17) */
};

enum sync_op {
	SYNC_OP_UPSERT = 1,
	SYNC_OP_DELETE = 2,
};

/* One dirty-ring record: which entry of which registered map changed. */
struct sync_rec {
	__u32 map_id;
	enum sync_op op;
	__u32 key_len;
	__u8 key[SYNC_KEY_MAX];
};

/* Never read: keep struct sync_rec and the map ids in BTF, so bpf2go
 * emits their Go types and constants. */
const volatile struct sync_rec sync_rec_layout = {};
const volatile enum sync_map_id sync_map_id_layout = 0;

struct sync_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16); /* the loader sizes the real rings */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SYNC_MAX_CPUS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct sync_ring);
} sync_rings SEC(".maps");

/* sync_epoch[0]: the current drain epoch, advanced by the syncer. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sync_epoch SEC(".maps");

/* Records that found their ring full, per registered map: the syncer
 * rescans a map whose count moved. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYNC_MAX_MAPS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sync_overflow SEC(".maps");

static __always_inline void sync_count_overflow(__u32 map_id)
{
	__u64 *n = bpf_map_lookup_elem(&sync_overflow, &map_id);

	if (n)
		*n += 1;
}

static __always_inline int sync_push(__u32 map_id, enum sync_op op, const void *key, const __u32 key_len)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct sync_rec *rec;
	void *ring;

	ring = bpf_map_lookup_elem(&sync_rings, &cpu);
	if (!ring) {
		sync_count_overflow(map_id);
		return -1;
	}
	/* Written in place in the ring: no copy, and no record-sized
	 * buffer on the caller's stack (the SYN proxy needs every byte). */
	rec = bpf_ringbuf_reserve(ring, sizeof(*rec), 0);
	if (!rec) {
		sync_count_overflow(map_id);
		return -1;
	}
	rec->map_id = map_id;
	rec->op = op;
	rec->key_len = key_len;
	__builtin_memset(rec->key, 0, sizeof(rec->key));
	/* key_len is a sizeof() at every call site: a constant copy. */
	__builtin_memcpy(rec->key, key, key_len);
	bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
	return 0;
}

/* sync_mark records that the entry h (the value of key in registered map
 * map_id) changed: it bumps the version and, unless the entry is already
 * queued this epoch, queues it on this CPU's ring. */
static __always_inline void sync_mark(__u32 map_id, struct sync_hdr *h, const void *key, __u32 key_len)
{
	__u32 zero = 0;
	__u64 *ep = bpf_map_lookup_elem(&sync_epoch, &zero);
	__u64 epoch, seen;

	__sync_fetch_and_add(&h->version, 1);
	if (!ep)
		return;
	epoch = *(volatile __u64 *)ep;
	seen = *(volatile __u64 *)&h->queued_epoch;
	if (seen == epoch)
		return;
	/* Only the CPU that moves the epoch forward pushes the record. */
	if (__sync_val_compare_and_swap(&h->queued_epoch, seen, epoch) != seen)
		return;
	sync_push(map_id, SYNC_OP_UPSERT, key, key_len);
}

/* sync_mark_deleted records a deletion: a tombstone, every time. */
static __always_inline void sync_mark_deleted(__u32 map_id, const void *key, __u32 key_len)
{
	sync_push(map_id, SYNC_OP_DELETE, key, key_len);
}

/* SYNC_ACCESSORS: in-kernel batched reads and writes of a registered map,
 * for the syncer. One syscall per value was most of the primary's CPU at a
 * million changes a second, and the standby's version check cost a lookup
 * (or a user-space record) per entry. Instead the syncer writes up to
 * SYNC_IO_MAX keys (and values) into an I/O buffer map, runs one of these
 * BPF_PROG_TYPE_SYSCALL programs (BPF_PROG_TEST_RUN), and reads the buffer
 * back: three syscalls per SYNC_IO_MAX entries.
 *
 *   sync_read_<map>:  found[i] = 1 and vals[i] = the value of keys[i], or
 *                     found[i] = 0 when there is none (a tombstone).
 *   sync_write_<map>: for each (keys[i], vals[i]): skipped when the entry
 *                     holds the same or a newer version (found[i] = 2),
 *                     else written with queued_epoch 0 (found[i] = 1;
 *                     3 when the update failed). Returns applied | failed << 16.
 *
 * The buffer's layout is fixed so the syncer needs only the key and value
 * sizes: n at 0, flags at 4, keys at 8, found after SYNC_IO_MAX keys, then the values
 * (8-aligned, as SYNC_IO_MAX is a multiple of 8).
 */
#define SYNC_IO_MAX 1024

/* SYNC_WRITE_HOOK(name) runs after a replicated value was written into a
 * map on this host: a feature that caches what it derives from its maps
 * defines it before including this header (migrate.c bumps mig_gen). */
#ifndef SYNC_WRITE_HOOK
#define SYNC_WRITE_HOOK(name) do { } while (0)
#endif
/* SYNC_DELETED(name): sync_deleted_<map>, a program the syncer runs after
 * it deleted replicated entries of the map (from user space: a deletion
 * has no in-kernel write for SYNC_WRITE_HOOK to follow). It runs the
 * feature's SYNC_WRITE_HOOK; a map without it is deleted from as before. */
#define SYNC_DELETED(name)                                                            \
	SEC("syscall")                                                                \
	int sync_deleted_##name(void *ctx)                                            \
	{                                                                             \
		SYNC_WRITE_HOOK(name);                                                \
		return 0;                                                             \
	}
#define SYNC_IO_FORCE 1 /* a resync: the primary's values win whatever their versions */

/* The loops run under bpf_loop: the verifier checks one step, not 1024
 * (a 6.1 verifier gives up on the unrolled walk). */
#define SYNC_ACCESSORS(name, key_t, val_t)                                              \
	struct sync_io_##name {                                                       \
		__u32 n;                                                              \
		__u32 flags; /* SYNC_IO_FORCE: write whatever the versions */         \
		key_t keys[SYNC_IO_MAX];                                              \
		__u32 found[SYNC_IO_MAX];                                             \
		val_t vals[SYNC_IO_MAX];                                              \
	};                                                                            \
	struct {                                                                      \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                     \
		__uint(max_entries, 2); /* [0] reads, [1] writes */                   \
		__type(key, __u32);                                                   \
		__type(value, struct sync_io_##name);                                 \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                                  \
	} sync_io_##name SEC(".maps");                                                \
                                                                                      \
	struct sync_step_##name {                                                     \
		struct sync_io_##name *io;                                            \
		__u32 applied, failed;                                                \
	};                                                                            \
                                                                                      \
	static long sync_read_step_##name(__u32 i, void *arg)                         \
	{                                                                             \
		struct sync_step_##name *st = arg;                                    \
		struct sync_io_##name *io = st->io;                                   \
		val_t *v;                                                             \
                                                                                      \
		if (!io || i >= SYNC_IO_MAX)                                          \
			return 1;                                                     \
		v = bpf_map_lookup_elem(&name, &io->keys[i]);                         \
		if (v) {                                                              \
			__builtin_memcpy(&io->vals[i], v, sizeof(val_t));             \
			io->found[i] = 1;                                             \
		} else {                                                              \
			io->found[i] = 0;                                             \
		}                                                                     \
		return 0;                                                             \
	}                                                                             \
                                                                                      \
	SEC("syscall")                                                                \
	int sync_read_##name(void *ctx)                                               \
	{                                                                             \
		__u32 slot = 0;                                                       \
		struct sync_step_##name st = {};                                      \
                                                                                      \
		st.io = bpf_map_lookup_elem(&sync_io_##name, &slot);                  \
		if (!st.io)                                                           \
			return -1;                                                    \
		bpf_loop(st.io->n < SYNC_IO_MAX ? st.io->n : SYNC_IO_MAX,             \
			 sync_read_step_##name, &st, 0);                              \
		return 0;                                                             \
	}                                                                             \
                                                                                      \
	static long sync_write_step_##name(__u32 i, void *arg)                        \
	{                                                                             \
		struct sync_step_##name *st = arg;                                    \
		struct sync_io_##name *io = st->io;                                   \
		val_t *cur;                                                           \
                                                                                      \
		if (!io || i >= SYNC_IO_MAX)                                          \
			return 1;                                                     \
		cur = bpf_map_lookup_elem(&name, &io->keys[i]);                       \
		if (cur && !(io->flags & SYNC_IO_FORCE) &&                            \
		    ((struct sync_hdr *)cur)->version >=                              \
			    ((struct sync_hdr *)&io->vals[i])->version) {             \
			io->found[i] = 2;                                             \
			return 0;                                                     \
		}                                                                     \
		((struct sync_hdr *)&io->vals[i])->queued_epoch = 0;                  \
		if (bpf_map_update_elem(&name, &io->keys[i], &io->vals[i], BPF_ANY)) { \
			io->found[i] = 3;                                             \
			st->failed++;                                                 \
		} else {                                                              \
			io->found[i] = 1;                                             \
			st->applied++;                                                \
			SYNC_WRITE_HOOK(name);                                        \
		}                                                                     \
		return 0;                                                             \
	}                                                                             \
                                                                                      \
	SEC("syscall")                                                                \
	int sync_write_##name(void *ctx)                                              \
	{                                                                             \
		__u32 slot = 1;                                                       \
		struct sync_step_##name st = {};                                      \
                                                                                      \
		st.io = bpf_map_lookup_elem(&sync_io_##name, &slot);                  \
		if (!st.io)                                                           \
			return -1;                                                    \
		bpf_loop(st.io->n < SYNC_IO_MAX ? st.io->n : SYNC_IO_MAX,             \
			 sync_write_step_##name, &st, 0);                             \
		return st.applied | st.failed << 16;                                  \
	}
