//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sync.c: the state sync's shared plumbing on its own, with no program.
 *
 * The Go side (maps/sync.go) takes the dirty ring's spec, the pin names of
 * sync_rings, sync_epoch and sync_overflow, and the record types (struct
 * sync_hdr, struct sync_rec, enum sync_op, enum sync_map_id) from this
 * object, so production code does not lean on a feature's object or on
 * the test-only synctest program. Every program that replicates state
 * includes include/sync.h and shares these maps by pin name.
 */
#include "include/common.h"
#include "include/sync.h"

/* Never read: keeps struct sync_hdr in BTF (sync.h keeps the record and
 * the map ids), so bpf2go emits its Go type. */
const volatile struct sync_hdr sync_hdr_layout = {};

char LICENSE[] SEC("license") = "Dual BSD/GPL";
