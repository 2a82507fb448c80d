/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: incremental Internet checksum updates (RFC 1624, eqn. 3):
 *   HC' = ~(~HC + ~m + m')
 * in one's-complement arithmetic. Programs that rewrite headers in XDP use
 * these; TC programs may also use bpf_l3/l4_csum_replace. Values are in
 * network byte order throughout, which one's-complement sums tolerate.
 */
#pragma once

#include "common.h"

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* csum_replace2 updates *sum for a 16-bit field changing from old to new. */
static __always_inline void csum_replace2(__sum16 *sum, __be16 old, __be16 new)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~old;
	s += new;
	*sum = ~csum_fold32(s);
}

/* csum_replace4 updates *sum for a 32-bit field changing from old to new. */
static __always_inline void csum_replace4(__sum16 *sum, __be32 old, __be32 new)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~(old & 0xffff);
	s += (__u16)~(old >> 16);
	s += new & 0xffff;
	s += new >> 16;
	*sum = ~csum_fold32(s);
}

/* csum_replace16 updates *sum for a 128-bit field (an IPv6 address). */
static __always_inline void csum_replace16(__sum16 *sum, const __be32 *old, const __be32 *new)
{
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		csum_replace4(sum, old[i], new[i]);
}

/* csum_words is the ones'-complement sum of the first n (at most 15)
 * 32-bit words at w, plus seed, as a 32-bit partial sum: what
 * bpf_csum_diff(0, 0, w, 4 * n, seed) returns, up to the fold, without a
 * helper call (for a header, the call costs more than the adds). w is
 * program memory (stack or a map value), not the packet. */
static __always_inline __u32 csum_words(const __u32 *w, __u32 n, __u32 seed)
{
	__u64 s = seed;
	int i;

#pragma unroll
	for (i = 0; i < 15; i++)
		if (i < n)
			s += w[i];
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	return (__u32)s;
}
