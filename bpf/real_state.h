/* SPDX-License-Identifier: GPL-2.0 */
/* Reals that are down for a service (health checks, issue 10; a dead director
 * at takeover, issue 9). The control plane takes such a real out of the
 * service's Maglev row (no new flows) and, unless the service keeps the flows
 * of down reals, sets its bit in `real_down`: a connection-table, pending or
 * persistence hit on it is then rescheduled through Maglev at the flow's next
 * packet (the client gets a quick reset from a live real instead of a black
 * hole), the entry re-pointed and a REPOINT event written (sched.h).
 *
 * Per (service, real), not per real: reals are shared by services and a real
 * may fail one service's check and pass another's. The bitmap is only read for
 * a service flagged CAROM_SVC_REAL_DOWN, so the usual case (every real up) costs
 * one test of a flag already in a register. src/carom/model/forward.py mirrors
 * this. */
#ifndef CAROM_REAL_STATE_H
#define CAROM_REAL_STATE_H

#include "consts.h"
#include "maps.h"

static __always_inline int real_down_for(const struct node_cfg *cfg, const struct svc_info *svc,
					 __u32 real_id)
{
	__u32 words = cfg->real_down_words, word;
	__u64 *w;

	if (!(svc->flags & CAROM_SVC_REAL_DOWN) || real_id / 64 >= words)
		return 0;
	word = svc->id * words + real_id / 64;
	w = bpf_map_lookup_elem(&real_down, &word);
	return w && ((*w >> (real_id % 64)) & 1);
}

#endif
