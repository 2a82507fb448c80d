/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* cookie.h: tandem's SYN cookie. The ISN we answer a SYN with is
 *
 *   bits 31..8: the top 24 bits of the low word of a SipHash-2-4 MAC,
 *               keyed with a secret the two hosts of a pair share, over
 *               the flow (client and VIP address and port), the client's
 *               ISN and the low byte;
 *   bits  7..0: what the client asked for, so a client without timestamps
 *               keeps its options (the kernel's raw cookie helpers drop
 *               them): [slot:1][sack:1][mss index:2][wscale:4], wscale 15
 *               meaning "no window scaling".
 *
 * The slot names which of the two secrets made the cookie: the secret
 * rotates into the other slot, so cookies made just before a rotation
 * still validate (overlap) and cookies two rotations old do not (expiry).
 *
 * SipHash-2-4 (64-bit words), not HalfSipHash-2-4 (32-bit), which the
 * cookie used before: the same PRF the kernel's own syncookies use, and
 * on a 64-bit machine the cheaper of the two by its word size: an IPv4
 * flow's 17 bytes are 10 rounds instead of 16 (IPv6's 41 bytes 16
 * instead of 28), the largest part of a SYN's cost before
 * (docs/synproxy.md, "Benchmarks"). Its key is the period's 8-byte key
 * twice: the map and the key schedule stay as they are, and the MAC's
 * strength stays what the 64-bit key gives (a key lives 128 s).
 */
#pragma once

#include "common.h"
#include "hsiphash.h"

#define COOKIE_WS_NONE 15
#define COOKIE_MSS_IDX_MAX 3

/* The MSS values a cookie can carry; the index is the largest not above
 * the client's MSS (536 when the client's is lower or absent). */
#define COOKIE_MSS0 536
#define COOKIE_MSS1 1220
#define COOKIE_MSS2 1440
#define COOKIE_MSS3 1460

static __always_inline __u16 cookie_mss_of(__u32 i)
{
	switch (i & 3) {
	case 1:
		return COOKIE_MSS1;
	case 2:
		return COOKIE_MSS2;
	case 3:
		return COOKIE_MSS3;
	}
	return COOKIE_MSS0;
}

struct cookie_keys {
	__u32 slot;      /* the slot new cookies use */
	__u32 pad;
	__u32 key[2][2]; /* two 8-byte keys, as little-endian words */
};

struct cookie_opts {
	__u16 mss;   /* the client's MSS option, 0: none */
	__u8 wscale; /* the client's window scale, COOKIE_WS_NONE: none */
	__u8 sack;   /* the client offered SACK */
};

static __always_inline __u32 cookie_mss_index(__u16 mss)
{
	__u32 i = 0;

	if (mss >= COOKIE_MSS1)
		i = 1;
	if (mss >= COOKIE_MSS2)
		i = 2;
	if (mss >= COOKIE_MSS3)
		i = 3;
	return i;
}

static __always_inline __u32 cookie_data(__u32 slot, const struct cookie_opts *o)
{
	__u32 ws = o->wscale > 14 ? COOKIE_WS_NONE : o->wscale;

	return (slot & 1) << 7 | (o->sack ? 1 : 0) << 6 | cookie_mss_index(o->mss) << 4 | ws;
}

/* The flow hash's message (flow_mac): 32-bit words. */
struct flow_msg {
	__u32 m[11];
};

/* is_v4_mapped: a is ::ffff:a.b.c.d, how the proxy holds IPv4 addresses. */
static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const void *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* flow_hash6 and flow_hash4 are global functions: the verifier checks
 * each once, not at every call site with every state the caller carries. */
__attribute__((noinline)) __u32 flow_hash6(const struct flow_msg *msg, __u32 k0, __u32 k1)
{
	if (!msg)
		return 0;
	return hsiphash_words(msg->m, 11, k0, k1);
}

__attribute__((noinline)) __u32 flow_hash4(const struct flow_msg *msg, __u32 k0, __u32 k1)
{
	if (!msg)
		return 0;
	return hsiphash_words(msg->m, 5, k0, k1);
}

/* flow_mac is HalfSipHash-2-4 under key over saddr daddr sport(2)
 * dport(2) isn(4, as on the wire) data(4, little-endian): 11 words for
 * IPv6, 5 for IPv4 (addresses of 4 bytes). The backend choice's hash
 * (handshake.h, flow_hash), which the cookie's MAC was before it became
 * SipHash: kept, so every flow keeps its backend. */
static __always_inline __u32 flow_mac(const __u32 *key, const __u8 *saddr, const __u8 *daddr, __be16 sport, __be16 dport, __be32 client_isn, __u32 data)
{
	struct flow_msg msg;

	if (is_v4_mapped(saddr)) {
		__builtin_memcpy(&msg.m[0], saddr + 12, 4);
		__builtin_memcpy(&msg.m[1], daddr + 12, 4);
		__builtin_memcpy((__u8 *)&msg.m[2], &sport, 2);
		__builtin_memcpy((__u8 *)&msg.m[2] + 2, &dport, 2);
		__builtin_memcpy(&msg.m[3], &client_isn, 4);
		msg.m[4] = data;
		return flow_hash4(&msg, key[0], key[1]);
	}
	__builtin_memcpy(&msg.m[0], saddr, 16);
	__builtin_memcpy(&msg.m[4], daddr, 16);
	__builtin_memcpy((__u8 *)&msg.m[8], &sport, 2);
	__builtin_memcpy((__u8 *)&msg.m[8] + 2, &dport, 2);
	__builtin_memcpy(&msg.m[9], &client_isn, 4);
	msg.m[10] = data;
	return flow_hash6(&msg, key[0], key[1]);
}

/* The cookie's message: 64-bit little-endian words, the last byte (the
 * cookie's data) in SipHash's final block. */
struct cookie_msg {
	__u64 m[5];
};

/* cookie_hash6 and cookie_hash4: SipHash-2-4 of a flow's 5 (IPv6) or 2
 * (IPv4) words and the final block b, under k0 = k1 = k. Global
 * functions, checked once each; two lengths, not one: an IPv4 flow hashes
 * its 4-byte addresses, not their IPv4-mapped form. */
__attribute__((noinline)) __u32 cookie_hash6(const struct cookie_msg *msg, __u64 k, __u64 b)
{
	if (!msg)
		return 0;
	return (__u32)siphash_words(msg->m, 5, b, k, k);
}

__attribute__((noinline)) __u32 cookie_hash4(const struct cookie_msg *msg, __u64 k, __u64 b)
{
	if (!msg)
		return 0;
	return (__u32)siphash_words(msg->m, 2, b, k, k);
}

/* cookie_mac: the message is saddr daddr sport(2) dport(2) client_isn(4,
 * as on the wire) data(1): 41 bytes for IPv6, 17 for IPv4 (addresses of 4
 * bytes; saddr and daddr are IPv4-mapped then). key is the slot's two
 * words, the 8 key bytes as little-endian words. */
static __always_inline __u32 cookie_mac(const __u32 *key, const __u8 *saddr, const __u8 *daddr, __be16 sport, __be16 dport, __be32 client_isn, __u32 data)
{
	__u64 k = (__u64)key[1] << 32 | key[0];
	struct cookie_msg msg;

	if (is_v4_mapped(saddr)) {
		__builtin_memcpy(&msg.m[0], saddr + 12, 4);
		__builtin_memcpy((__u8 *)&msg.m[0] + 4, daddr + 12, 4);
		__builtin_memcpy(&msg.m[1], &sport, 2);
		__builtin_memcpy((__u8 *)&msg.m[1] + 2, &dport, 2);
		__builtin_memcpy((__u8 *)&msg.m[1] + 4, &client_isn, 4);
		return cookie_hash4(&msg, k, (__u64)17 << 56 | (data & 0xff));
	}
	__builtin_memcpy(&msg.m[0], saddr, 16);
	__builtin_memcpy(&msg.m[2], daddr, 16);
	__builtin_memcpy(&msg.m[4], &sport, 2);
	__builtin_memcpy((__u8 *)&msg.m[4] + 2, &dport, 2);
	__builtin_memcpy((__u8 *)&msg.m[4] + 4, &client_isn, 4);
	return cookie_hash6(&msg, k, (__u64)41 << 56 | (data & 0xff));
}

/* cookie_make returns the ISN for a SYN from saddr:sport to daddr:dport. */
static __always_inline __u32 cookie_make(const struct cookie_keys *k, const __u8 *saddr, const __u8 *daddr, __be16 sport, __be16 dport, __be32 client_isn, const struct cookie_opts *o)
{
	__u32 slot = k->slot & 1;
	__u32 data = cookie_data(slot, o);

	return (cookie_mac(k->key[slot], saddr, daddr, sport, dport, client_isn, data) & 0xffffff00) | data;
}

/* cookie_make_msg is cookie_make for a message the caller filled (the
 * flow's words as cookie_mac lays them out, read straight from the
 * frame: syn_fast), v4 saying which length. */
static __always_inline __u32 cookie_make_msg(const struct cookie_keys *k, const struct cookie_msg *msg, int v4, const struct cookie_opts *o)
{
	__u32 slot = k->slot & 1;
	__u32 data = cookie_data(slot, o);
	__u64 key = (__u64)k->key[slot][1] << 32 | k->key[slot][0];
	__u32 mac;

	if (v4)
		mac = cookie_hash4(msg, key, (__u64)17 << 56 | data);
	else
		mac = cookie_hash6(msg, key, (__u64)41 << 56 | data);
	return (mac & 0xffffff00) | data;
}

/* cookie_check validates the cookie a client echoes (its ACK's ack - 1)
 * and, when it is ours, fills o with what the client asked for. */
static __always_inline int cookie_check(const struct cookie_keys *k, const __u8 *saddr, const __u8 *daddr, __be16 sport, __be16 dport, __be32 client_isn, __u32 cookie, struct cookie_opts *o)
{
	__u32 data = cookie & 0xff;
	__u32 slot = data >> 7;

	if (((cookie_mac(k->key[slot], saddr, daddr, sport, dport, client_isn, data) ^ cookie) & 0xffffff00) != 0)
		return 0;
	o->wscale = data & 0xf;
	o->mss = cookie_mss_of(data >> 4);
	o->sack = (data >> 6) & 1;
	return 1;
}
