/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* hsiphash.h: SipHash-2-4 (64-bit words; the SYN cookie's MAC) and
 * HalfSipHash-2-4 with a 32-bit output (32-bit words; the backend
 * choice's flow hash), Aumasson & Bernstein, over messages of whole
 * little-endian words. maps/cookie.go has the Go twins, checked against
 * the reference test vectors; the fixture tests check that both agree
 * on every cookie and every backend choice.
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

static __always_inline __u64 sip_rotl(__u64 x, int b)
{
	return (x << b) | (x >> (64 - b));
}

#define SIP_ROUND(v0, v1, v2, v3)                                              \
	do {                                                                   \
		v0 += v1;                                                      \
		v1 = sip_rotl(v1, 13);                                         \
		v1 ^= v0;                                                      \
		v0 = sip_rotl(v0, 32);                                         \
		v2 += v3;                                                      \
		v3 = sip_rotl(v3, 16);                                         \
		v3 ^= v2;                                                      \
		v0 += v3;                                                      \
		v3 = sip_rotl(v3, 21);                                         \
		v3 ^= v0;                                                      \
		v2 += v1;                                                      \
		v1 = sip_rotl(v1, 17);                                         \
		v1 ^= v2;                                                      \
		v2 = sip_rotl(v2, 32);                                         \
	} while (0)

/* siphash_words hashes n little-endian 64-bit words and the final block
 * b (the message's last len % 8 bytes, little-endian, with len << 56)
 * under the 128-bit key k0 | k1 << 64: SipHash-2-4 with a 64-bit output. */
static __always_inline __u64 siphash_words(const __u64 *m, const int n, __u64 b, __u64 k0, __u64 k1)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
	int i;

#pragma unroll
	for (i = 0; i < n; i++) {
		v3 ^= m[i];
		SIP_ROUND(v0, v1, v2, v3);
		SIP_ROUND(v0, v1, v2, v3);
		v0 ^= m[i];
	}
	v3 ^= b;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}
