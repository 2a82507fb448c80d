/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* hsiphash.h: HalfSipHash-2-4 with a 32-bit output (Aumasson & Bernstein),
 * over a message of whole 32-bit little-endian words. The SYN cookie's MAC.
 * syncookie/cookie.go is the Go twin, checked against the reference test
 * vectors; the fixture tests check that both agree on every cookie.
 */
#pragma once

#include "common.h"

static __always_inline __u32 hsip_rotl(__u32 x, int b)
{
	return (x << b) | (x >> (32 - b));
}

#define HSIP_ROUND(v0, v1, v2, v3)                                             \
	do {                                                                   \
		v0 += v1;                                                      \
		v1 = hsip_rotl(v1, 5);                                         \
		v1 ^= v0;                                                      \
		v0 = hsip_rotl(v0, 16);                                        \
		v2 += v3;                                                      \
		v3 = hsip_rotl(v3, 8);                                         \
		v3 ^= v2;                                                      \
		v0 += v3;                                                      \
		v3 = hsip_rotl(v3, 7);                                         \
		v3 ^= v0;                                                      \
		v2 += v1;                                                      \
		v1 = hsip_rotl(v1, 13);                                        \
		v1 ^= v2;                                                      \
		v2 = hsip_rotl(v2, 16);                                        \
	} while (0)

/* hsiphash_words hashes n little-endian words (n * 4 bytes) under the
 * 64-bit key k0 | k1 << 32 (the reference reads its 8 key bytes as two
 * little-endian words). */
static __always_inline __u32 hsiphash_words(const __u32 *m, const int n, __u32 k0, __u32 k1)
{
	__u32 v0 = k0, v1 = k1, v2 = 0x6c796765 ^ k0, v3 = 0x74656462 ^ k1;
	__u32 b = (__u32)(n * 4) << 24;
	int i;

#pragma unroll
	for (i = 0; i < n; i++) {
		v3 ^= m[i];
		HSIP_ROUND(v0, v1, v2, v3);
		HSIP_ROUND(v0, v1, v2, v3);
		v0 ^= m[i];
	}
	v3 ^= b;
	HSIP_ROUND(v0, v1, v2, v3);
	HSIP_ROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	HSIP_ROUND(v0, v1, v2, v3);
	HSIP_ROUND(v0, v1, v2, v3);
	HSIP_ROUND(v0, v1, v2, v3);
	HSIP_ROUND(v0, v1, v2, v3);
	return v1 ^ v3;
}
