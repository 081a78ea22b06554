/* SPDX-License-Identifier: GPL-2.0 */
/* Is this destination possibly a VIP? A 16-bit fold of the address picks one bit
 * of `vip_filter`; the daemon sets the bit of every VIP (abi.vip_filter_bit is
 * the same fold). A clear bit is a certain "no", read with one array access and
 * no hashing, which keeps non-VIP traffic cheap; a set bit is only a "maybe"
 * (two addresses can share a bit), settled by the service or VIP lookup. */
#ifndef CAROM_VIP_FILTER_H
#define CAROM_VIP_FILTER_H

#include "maps.h"

static __always_inline __u32 vip_filter_bit(const struct carom_addr *a)
{
	__u32 x = a->w[0] ^ a->w[1] ^ a->w[2] ^ a->w[3];

	x ^= x >> 16;
	return x & (CAROM_VIP_FILTER_BITS - 1);
}

static __always_inline int maybe_vip(const struct carom_addr *a)
{
	__u32 bit = vip_filter_bit(a);
	__u32 word = bit / 64;
	__u64 *w = bpf_map_lookup_elem(&vip_filter, &word);

	return w && (*w & (1ULL << (bit % 64)));
}

#endif
