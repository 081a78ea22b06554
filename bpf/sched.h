/* SPDX-License-Identifier: GPL-2.0 */
/* Choosing the real server: connection table, then the pending cache of flows
 * seen once, then client persistence, then the service's Maglev row. The order
 * makes an established flow immune to changes of the server set; only a new
 * flow consults Maglev.
 *
 * A new flow is not inserted into the LRU conn_table: its choice goes into a
 * slot of the per-CPU `pending` cache, and the flow enters conn_table with its
 * second packet (conn_confirmed). A flood of spoofed SYNs, each one packet of a
 * flow that never continues, thus only overwrites pending slots and cannot
 * evict established flows; the LRU insert (the costliest step of a new flow) is
 * paid once per real flow, by its second packet.
 *
 * Loop guard (field note 2): both tables keep the TTL / hop limit of the flow's
 * first packet. A packet of the flow that arrives with a lower one has been
 * routed back to us after we forwarded it (a real that lost its VIP sends it
 * back, directly or through its router): it is dropped and counted as a loop
 * instead of being forwarded again. A new flow from a real's MAC is a loop too. */
#ifndef CAROM_SCHED_H
#define CAROM_SCHED_H

#include "conn_events.h"
#include "real_state.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"

#define NSEC_PER_SEC 1000000000ULL
/* last_seen is refreshed at most once a second per flow, to spare a write (and a
 * cache-line bounce between CPUs) on every packet. */
#define LAST_SEEN_GRANULARITY_NS NSEC_PER_SEC

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Time since `then`. The clock is per CPU and coarse (clock.h): an entry written
 * on another CPU may carry a reading a tick newer than ours, which must count as
 * age 0, not wrap around to "idle for centuries". */
static __always_inline __u64 age_of(__u64 now, __u64 then)
{
	return now > then ? now - then : 0;
}

static __always_inline struct real_info *usable_real(__u32 real_id)
{
	struct real_info *real;

	if (!real_id)
		return 0;
	real = bpf_map_lookup_elem(&reals, &real_id);
	/* `reals` is an array: an id never written reads as zeros, family 0. */
	if (!real || !real->family || (real->flags & CAROM_REAL_UNUSABLE))
		return 0;
	return real;
}

static __always_inline void persist_key_of(const struct packet *p, const struct svc_info *svc,
					   struct persist_key *pk)
{
	__builtin_memset(pk, 0, sizeof(*pk));
	pk->client = p->flow.src;
	pk->svc_id = svc->id;
	pk->family = p->flow.family;
}

/* A real server's MAC as a frame's source: VIP traffic coming back from a real. */
static __always_inline int from_real(const __u8 *src_mac)
{
	struct mac_key mk = {};

	__builtin_memcpy(mk.mac, src_mac, 6);
	return bpf_map_lookup_elem(&real_macs, &mk) != 0;
}

/* A packet of a known flow with a lower TTL than the flow's first packet. */
static __always_inline int looped(const struct packet *p, __u8 first_ttl)
{
	return first_ttl && p->ttl < first_ttl;
}

static __always_inline int same_flow(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/* Persistence or Maglev for a flow without a usable entry. Returns 0 with *rid
 * and *real set, or the counter id of a drop. */
static __always_inline int choose(const struct packet *p, const struct svc_info *svc,
				  const struct node_cfg *cfg, __u32 fhash, __u64 now,
				  __u32 *rid, struct real_info **real)
{
	struct persist_key pk;
	struct persist_val *pv;
	struct flow_key hkey;
	__u32 idx, *slot;

	if (svc->flags & CAROM_SVC_PERSIST) {
		persist_key_of(p, svc, &pk);
		pv = bpf_map_lookup_elem(&persist_table, &pk);
		if (pv && age_of(now, pv->last_seen_ns) <= (__u64)svc->persist_timeout_s * NSEC_PER_SEC) {
			*real = usable_real(pv->real_id);
			if (*real && !real_down_for(cfg, svc, pv->real_id)) {
				*rid = pv->real_id;
				pv->last_seen_ns = now;
				count(CAROM_CNT_PERSIST_HIT);
				return 0;
			}
		}
		/* Persistent services hash on the client address alone (and the VIP),
		 * so every director agrees on a client's real even without state. */
		hkey = p->flow;
		hkey.sport = 0;
		hkey.dport = 0;
		fhash = flow_hash(&hkey);
	}
	if (!cfg->maglev_size)
		return CAROM_CNT_DROP_NO_REAL;
	idx = svc->id * cfg->maglev_size + fhash % cfg->maglev_size;
	slot = bpf_map_lookup_elem(&maglev, &idx);
	if (!slot)
		return CAROM_CNT_DROP_NO_REAL;
	*rid = *slot;
	*real = usable_real(*rid);
	if (!*real)
		return CAROM_CNT_DROP_NO_REAL;
	count(CAROM_CNT_NEW_FLOW);
	return 0;
}

/* The flow's second packet: into conn_table, and its client into persist_table. */
static __always_inline void confirm(const struct packet *p, const struct svc_info *svc,
				   const struct pending_conn *pend, __u64 now)
{
	struct conn_val cv = { .real_id = pend->real_id, .ttl = pend->ttl, .last_seen_ns = now };

	bpf_map_update_elem(&conn_table, &p->flow, &cv, BPF_ANY);
	conn_event(&p->flow, &cv, CAROM_CONN_EVENT_NEW);
	if (svc->flags & CAROM_SVC_PERSIST) {
		struct persist_key pk;
		struct persist_val *pv, nv = { .real_id = pend->real_id, .last_seen_ns = now };

		persist_key_of(p, svc, &pk);
		pv = bpf_map_lookup_elem(&persist_table, &pk);
		if (pv && pv->real_id == pend->real_id)
			pv->last_seen_ns = now;
		else
			bpf_map_update_elem(&persist_table, &pk, &nv, BPF_ANY);
	}
	count(CAROM_CNT_CONN_CONFIRMED);
}

/* Returns 0 with *real_id, *real and *via (CAROM_VIA_*, stats.h) set, or the
 * counter id of a drop. `now` is coarse_now() (clock.h). */
static __always_inline int schedule(const struct packet *p, const struct svc_info *svc,
				    const struct node_cfg *cfg, const __u8 *src_mac, __u64 now,
				    __u32 *real_id, struct real_info **real, __u32 *via)
{
	int syn = p->l4_proto == IPPROTO_TCP &&
		  (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	__u64 idle = p->l4_proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns;
	struct pending_conn *pend;
	struct persist_key pk;
	struct persist_val *pv;
	struct conn_val *conn;
	__u32 fhash, pslot, rid = 0;
	int rc;

	conn = bpf_map_lookup_elem(&conn_table, &p->flow);
	if (conn) {
		if (looped(p, conn->ttl))
			return CAROM_CNT_DROP_LOOP;
		if (syn) {
			count(CAROM_CNT_SYN_RESCHEDULE);
		} else if (idle && age_of(now, conn->last_seen_ns) > idle) {
			count(CAROM_CNT_CONN_EXPIRED);
		} else {
			*real = usable_real(conn->real_id);
			if (*real && real_down_for(cfg, svc, conn->real_id)) {
				count(CAROM_CNT_CONN_REAL_DOWN);
			} else if (*real) {
				*real_id = conn->real_id;
				*via = CAROM_VIA_CONN_HIT;
				count(CAROM_CNT_CONN_HIT);
				if (age_of(now, conn->last_seen_ns) > LAST_SEEN_GRANULARITY_NS) {
					conn->last_seen_ns = now;
					if (svc->flags & CAROM_SVC_PERSIST) {
						persist_key_of(p, svc, &pk);
						pv = bpf_map_lookup_elem(&persist_table, &pk);
						if (pv && pv->real_id == *real_id)
							pv->last_seen_ns = now;
					}
				}
				return 0;
			} else {
				count(CAROM_CNT_CONN_REAL_GONE);
			}
		}
		/* Rescheduled in place: the entry keeps its LRU slot. It is this
		 * node's decision now, no longer a synced one. */
		if (from_real(src_mac))
			return CAROM_CNT_DROP_LOOP;
		rc = choose(p, svc, cfg, flow_hash(&p->flow), now, &rid, real);
		if (rc)
			return rc;
		conn->real_id = rid;
		conn->flags = 0;
		conn->ttl = p->ttl;
		conn->last_seen_ns = now;
		conn_event(&p->flow, conn, CAROM_CONN_EVENT_REPOINT);
		*real_id = rid;
		*via = CAROM_VIA_NEW;
		return 0;
	}

	fhash = flow_hash(&p->flow);
	pslot = fhash & (CAROM_PENDING_SLOTS - 1);
	pend = bpf_map_lookup_elem(&pending, &pslot);
	if (!pend)
		return CAROM_CNT_DROP_NO_REAL; /* unreachable: the slot is in range */
	if (pend->real_id && same_flow(&pend->key, &p->flow) &&
	    (!idle || age_of(now, pend->seen_ns) <= idle)) {
		if (looped(p, pend->ttl))
			return CAROM_CNT_DROP_LOOP;
		*real = usable_real(pend->real_id);
		if (!syn && *real && !real_down_for(cfg, svc, pend->real_id)) {
			*real_id = pend->real_id;
			*via = CAROM_VIA_OTHER;
			confirm(p, svc, pend, now);
			return 0;
		}
		/* A SYN again (a retransmission), or its real gone or down: a new flow. */
	}

	/* A new flow. One from a real's MAC is a loop (field note 2); only new
	 * flows pay this lookup, known flows are guarded by their TTL. */
	if (from_real(src_mac))
		return CAROM_CNT_DROP_LOOP;
	rc = choose(p, svc, cfg, fhash, now, &rid, real);
	if (rc)
		return rc;
	pend->key = p->flow;
	pend->real_id = rid;
	pend->ttl = p->ttl;
	pend->seen_ns = now;
	*real_id = rid;
	*via = CAROM_VIA_NEW;
	return 0;
}

#endif
