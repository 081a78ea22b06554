/* SPDX-License-Identifier: GPL-2.0 */
/* May this node schedule VIP traffic now? Only an active node whose daemon keeps
 * its lease fresh, and never a frame a peer director sent (field notes 3 and 6).
 * Anything else goes to the local stack: every director is also a real server
 * with the VIPs on lo, so a frame the active scheduled to us is served here, and
 * a frozen daemon (SIGSTOP) stops its node scheduling within a lease.
 *
 * The lease is a CLOCK_MONOTONIC deadline in ns (time.monotonic_ns() in the
 * daemon, bpf_ktime_get_ns() here). It is compared with coarse_now() (clock.h),
 * the same clock read at most one tick (1/HZ s) earlier: the lease may thus be
 * honoured up to one tick past its deadline, never cut short. That spares a
 * clock read per packet; the ARP/NDP responder, off the hot path, reads the
 * clock itself (arp_responder.h). src/carom/model/forward.py mirrors this. */
#ifndef CAROM_LEASE_H
#define CAROM_LEASE_H

#include "consts.h"
#include "maps.h"
#include "ifmac.h"

/* 0 if the node may schedule, else the pass reason. */
static __always_inline int may_schedule(const struct node_cfg *cfg, __u64 now)
{
	__u32 zero = 0;
	__u64 *until;

	if (cfg->role != CAROM_ROLE_ACTIVE)
		return CAROM_CNT_PASS_BACKUP;
	until = bpf_map_lookup_elem(&lease, &zero);
	if (!until || now >= *until)
		return CAROM_CNT_PASS_LEASE_EXPIRED;
	return 0;
}

/* A frame sent by another director (node_cfg.peer_macs): in a role race both
 * may believe they are active; the one that scheduled the frame to us decided,
 * and scheduling it again here would be double scheduling. */
static __always_inline int from_peer_director(const struct node_cfg *cfg, const __u8 *src_mac)
{
	__u32 n = cfg->peer_mac_count;
	int hit = 0;

	/* No early return: clang unrolls only a loop with a single exit. */
#pragma unroll
	for (int i = 0; i < CAROM_MAX_PEER_MACS; i++)
		hit |= i < n && same_mac(src_mac, cfg->peer_macs[i].mac);
	return hit;
}

#endif
