/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maglev.h: the backend of a new flow (cookie_ack) comes from the
 * service's Maglev table, which the loader builds in Go from the healthy,
 * non-drained backends and their weights (lb.Build, docs/services.md),
 * and per-backend counters. A table is swapped whole: sp_maglev's slot
 * for the service is replaced by a new, filled inner map, so the datapath
 * sees the old table or the new one, never half of each. Established
 * connections never read it: their backend is in the entry.
 */
#ifndef SYNPROXY_MAGLEV_H
#define SYNPROXY_MAGLEV_H

/* Prime (every backend's permutation visits each slot), Katran's ring
 * size; lb.TableSize. */
#define SP_MAGLEV_SIZE 65537
/* A slot with no backend: every backend drained or down. */
#define SP_MAGLEV_NONE 0xffffffffU

struct sp_maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SP_MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32); /* the backend's idx in sp_backends */
};

/* By service id. An empty slot (a loader that wrote no table): the fixed
 * flow hash over the service's backends, as before tables. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SP_MAX_SERVICES);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct sp_maglev_table);
} sp_maglev SEC(".maps");

/* What the table is built from, per backend address:port (a backend
 * serves one VIP; keyed like sp_backend_rev, so it survives the backend
 * moving to another idx): the weight (0: drained) and the health verdict.
 * The programs never read it; it is the pinned state every writer of the
 * table (up, tandem service, the daemon's health checks) builds from. */
struct backend_cfg {
	__u32 weight;
	__u32 flags; /* BACKEND_F_* */
};

enum backend_flags {
	BACKEND_F_SET = 1,     /* the entry exists (a zero value is not "unset") */
	BACKEND_F_DOWN = 2,    /* the health checks say down */
	BACKEND_F_CHECKED = 4, /* the health checks have a verdict (up unless DOWN) */
};

/* Never read: keep the layout in BTF for bpf2go. */
const volatile enum backend_flags backend_flags_layout = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct backend_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_backend_cfg SEC(".maps");

/* Per backend (service id, idx), per CPU; the loader makes each entry
 * when it writes the backend (and zeroes it when another backend takes
 * the idx), the datapath only adds. */
struct backend_counters {
	__u64 conns; /* new connections: backend SYNs sent (first tries) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct backend_key);
	__type(value, struct backend_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sp_backend_stats SEC(".maps");

/* pick_backend returns the idx of the backend for a new flow of hash h to
 * service svc, or SP_MAGLEV_NONE when no backend takes new flows. */
static __always_inline __u32 pick_backend(const struct svc_val *svc, __u32 h)
{
	__u32 id = svc->id, slot;
	__u32 *e;
	void *tbl;

	tbl = bpf_map_lookup_elem(&sp_maglev, &id);
	if (!tbl)
		return svc->backends ? h % svc->backends : SP_MAGLEV_NONE;
	slot = h % SP_MAGLEV_SIZE;
	e = bpf_map_lookup_elem(tbl, &slot);
	if (!e)
		return SP_MAGLEV_NONE;
	return *e;
}

static __always_inline void backend_count_conn(__u32 svc, __u32 idx)
{
	struct backend_key k = {.svc = svc, .idx = idx};
	struct backend_counters *c = bpf_map_lookup_elem(&sp_backend_stats, &k);

	if (c)
		c->conns++;
}

#endif /* SYNPROXY_MAGLEV_H */
