/* SPDX-License-Identifier: GPL-2.0 */
/* A coarse clock for idle and persistence timeouts. bpf_ktime_get_ns() costs
 * about 35 ns here, as much as a hash lookup; bpf_jiffies64() is inlined by the
 * verifier into one load. So each CPU keeps the last ktime reading with the
 * jiffy it was taken in, and reads the clock again only when the jiffy changes:
 * at most HZ clock reads per CPU per second, whatever the packet rate. The value
 * is CLOCK_MONOTONIC, at most one tick (1/HZ s) behind; every timeout it feeds
 * is a second or more. */
#ifndef CAROM_CLOCK_H
#define CAROM_CLOCK_H

#include <bpf/bpf_helpers.h>
#include "maps.h"

static __always_inline __u64 coarse_now(void)
{
	__u64 j = bpf_jiffies64();
	__u32 zero = 0;
	struct clock_cache *c = bpf_map_lookup_elem(&clock, &zero);

	if (!c)
		return bpf_ktime_get_ns();
	if (c->jiffies != j) {
		c->jiffies = j;
		c->ns = bpf_ktime_get_ns();
	}
	return c->ns;
}

#endif
