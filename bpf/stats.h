/* SPDX-License-Identifier: GPL-2.0 */
/* Counters. Per-CPU maps, so increments need no atomics. */
#ifndef CAROM_STATS_H
#define CAROM_STATS_H

#include "maps.h"

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &idx);

	if (c)
		*c += 1;
}

/* How a packet's real was chosen (sched.h), for the per-service and per-real
 * flow counters: bumped on the traffic counter already looked up. */
#define CAROM_VIA_OTHER 0    /* a flow's confirmation (its second packet), an ICMP error */
#define CAROM_VIA_CONN_HIT 1 /* its conn_table entry */
#define CAROM_VIA_NEW 2      /* a new decision: Maglev or a persistence entry */

static __always_inline void count_traffic(void *map, __u32 idx, __u64 bytes, __u32 via)
{
	struct traffic_counter *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
		if (via == CAROM_VIA_CONN_HIT)
			c->conn_hits += 1;
		else if (via == CAROM_VIA_NEW)
			c->new_flows += 1;
	}
}

/* Every verdict goes through here: the reason's counter is its verdict's record.
 * Reasons up to PASS_LOCAL_REAL, PASS_NOT_OUR_MAC..PASS_ICMP_UNMATCHED and
 * PASS_LEASE_EXPIRED..PASS_PEER_DIRECTOR pass; TX_DSR and
 * TX_ARP_REPLY..TX_ICMP_ERROR transmit; the rest drop. */
static __always_inline int finish(__u32 reason)
{
	count(reason);
	if (reason <= CAROM_CNT_PASS_LOCAL_REAL ||
	    (reason >= CAROM_CNT_PASS_NOT_OUR_MAC && reason <= CAROM_CNT_PASS_ICMP_UNMATCHED) ||
	    (reason >= CAROM_CNT_PASS_LEASE_EXPIRED && reason <= CAROM_CNT_PASS_PEER_DIRECTOR))
		return XDP_PASS;
	if (reason == CAROM_CNT_TX_DSR ||
	    (reason >= CAROM_CNT_TX_ARP_REPLY && reason <= CAROM_CNT_TX_ICMP_ERROR))
		return XDP_TX;
	return XDP_DROP;
}

#endif
