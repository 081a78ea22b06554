/* SPDX-License-Identifier: GPL-2.0 */
/* A VIP frame this node may not schedule (lease.h said no: a backup, a cluster
 * node still starting, or an active node whose daemon's lease ran out). It is
 * the local stack's, as every director is also a real server with the VIPs on
 * lo, except when handing it over would reset a flow the stack does not serve:
 *
 *   - from a peer director's MAC: scheduled to us as a real, the stack's;
 *   - its conn_table entry names this node (CAROM_REAL_LOCAL): the stack's;
 *   - its entry names another real: held (dropped, DROP_AWAIT_ACTIVE). The
 *     client retransmits until an active director forwards it per the synced
 *     table; our stack would answer it with a reset (no socket for it here);
 *   - no entry, on a cluster node that knows no active director yet
 *     (CAROM_ROLE_UNDECIDED: its daemon is starting, an election is seconds
 *     away): held, a SYN as well as any other packet. A SYN the stack accepted
 *     now would open a connection no director scheduled, which the active
 *     elected next may send elsewhere (reset); a later packet without entry
 *     would be reset unless the flow is ours. Held, both reach the new active,
 *     which places them (its synced table, or Maglev over identical tables);
 *   - no entry anywhere else: the stack's, as before. On a backup an active
 *     exists and schedules new flows to us, and our entry (made at a flow's
 *     second packet, then synced) comes after its SYN: were the active's MAC
 *     not recognised, holding would black-hole them. On an active node whose
 *     lease ran out the daemon is frozen or dead: a peer, if there is one,
 *     takes over within a second, and a lone director has no other forwarder,
 *     so its stack serving new connections beats holding them for a daemon
 *     that may not come back. A SYN and the packets after it are treated
 *     alike: a connection the stack accepted has no entry either.
 *
 * Malformed frames, fragments and other protocols pass as before: only a
 * TCP/UDP tuple can name a flow. This runs only on the not-allowed path, so it
 * costs the active node's packets nothing. src/carom/model/forward.py mirrors it. */
#ifndef CAROM_HOLD_H
#define CAROM_HOLD_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include "consts.h"
#include "maps.h"
#include "parse.h"
#include "lease.h"

/* `pass` is may_schedule()'s reason; returns it or CAROM_CNT_DROP_AWAIT_ACTIVE. */
static __always_inline int hold_or_pass(void *data, void *end, struct packet *p,
					const struct node_cfg *cfg, int pass)
{
	struct ethhdr *eth = data;
	struct conn_val *conn;
	struct real_info *real;

	if (cfg->peer_mac_count && from_peer_director(cfg, eth->h_source))
		return pass;
	if (p->flow.family == CAROM_FAMILY_IPV6 && skip_ipv6_ext(data, end, p))
		return pass;
	if (p->fragment || (p->l4_proto != IPPROTO_TCP && p->l4_proto != IPPROTO_UDP))
		return pass;
	if (parse_l4(data, end, p))
		return pass;
	conn = bpf_map_lookup_elem(&conn_table, &p->flow);
	if (!conn)
		return cfg->role == CAROM_ROLE_UNDECIDED ? CAROM_CNT_DROP_AWAIT_ACTIVE : pass;
	real = bpf_map_lookup_elem(&reals, &conn->real_id);
	if (real && (real->flags & CAROM_REAL_LOCAL))
		return pass;
	return CAROM_CNT_DROP_AWAIT_ACTIVE;
}

#endif
