/* SPDX-License-Identifier: GPL-2.0 */
/* The flow hash: MurmurHash3 (x86, 32-bit) over the ten 32-bit words of a
 * struct flow_key, read in host order. src/carom/sched/flowhash.py is the same
 * function; golden vectors in the tests pin both. Every director must compute
 * the same value, so the seed is a constant of the protocol, not a setting. */
#ifndef CAROM_HASH_H
#define CAROM_HASH_H

#include "structs.h"

#define CAROM_HASH_SEED 0x63a70b1dU

static __always_inline __u32 rotl32(__u32 x, __u32 r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 flow_hash(const struct flow_key *key)
{
	const __u32 *w = (const __u32 *)key;
	__u32 h = CAROM_HASH_SEED;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*key) / 4); i++) {
		__u32 k = w[i];

		k *= 0xcc9e2d51U;
		k = rotl32(k, 15);
		k *= 0x1b873593U;
		h ^= k;
		h = rotl32(h, 13);
		h = h * 5 + 0xe6546b64U;
	}
	h ^= sizeof(*key);
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

#endif
