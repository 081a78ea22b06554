/* SPDX-License-Identifier: GPL-2.0 */
/* Connection events for connection sync (docs/cluster.md): a record in the
 * `conn_events` ring buffer whenever conn_table gains an entry (NEW: a flow's
 * second packet confirmed it, TCP and UDP alike) or an entry is rescheduled in
 * place (REPOINT: a SYN reusing the tuple, an idle entry, its real gone or down;
 * the real may be the same one, which then renews the peers' copy). Only an
 * active node with a running lease schedules, so only it emits. A full ring
 * loses the record and counts it (conn_events_dropped); the flow is forwarded
 * all the same. src/carom/cluster/events.py reads the records. */
#ifndef CAROM_CONN_EVENTS_H
#define CAROM_CONN_EVENTS_H

#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "stats.h"

static __always_inline void conn_event(const struct flow_key *key, const struct conn_val *cv,
				       __u8 kind)
{
	struct conn_event ev = {
		.key = *key,
		.real_id = cv->real_id,
		.flags = cv->flags,
		.kind = kind,
		.ttl = cv->ttl,
	};

	if (bpf_ringbuf_output(&conn_events, &ev, sizeof(ev), 0))
		count(CAROM_CNT_CONN_EVENTS_DROPPED);
}

#endif
