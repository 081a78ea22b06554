/* SPDX-License-Identifier: GPL-2.0 */
/* Choosing the real server: connection table, then client persistence, then
 * the service's Maglev row. The order makes an established flow immune to
 * changes of the server set; only a new flow consults Maglev. */
#ifndef CAROM_SCHED_H
#define CAROM_SCHED_H

#include "clock.h"
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

/* Returns 0 with *real_id and *real set, or the counter id of a drop. */
/* A real server's MAC as a frame's source: VIP traffic coming back from a real. */
static __always_inline int from_real(const __u8 *src_mac)
{
	struct mac_key mk = {};

	__builtin_memcpy(mk.mac, src_mac, 6);
	return bpf_map_lookup_elem(&real_macs, &mk) != 0;
}

static __always_inline int schedule(const struct packet *p, const struct svc_info *svc,
				    const struct node_cfg *cfg, const __u8 *src_mac,
				    __u32 *real_id, struct real_info **real)
{
	__u64 now = coarse_now();
	int syn = p->l4_proto == IPPROTO_TCP &&
		  (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	__u64 idle = p->l4_proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns;
	struct persist_key pk;
	struct persist_val *pv;
	struct conn_val *conn;
	struct flow_key hkey;
	__u32 idx, rid = 0;
	__u32 *slot;

	conn = bpf_map_lookup_elem(&conn_table, &p->flow);
	if (conn) {
		if (syn) {
			count(CAROM_CNT_SYN_RESCHEDULE);
		} else if (idle && now - conn->last_seen_ns > idle) {
			count(CAROM_CNT_CONN_EXPIRED);
		} else {
			*real = usable_real(conn->real_id);
			if (*real) {
				*real_id = conn->real_id;
				count(CAROM_CNT_CONN_HIT);
				if (now - conn->last_seen_ns > LAST_SEEN_GRANULARITY_NS) {
					conn->last_seen_ns = now;
					if (svc->flags & CAROM_SVC_PERSIST) {
						persist_key_of(p, svc, &pk);
						pv = bpf_map_lookup_elem(&persist_table, &pk);
						if (pv && pv->real_id == *real_id)
							pv->last_seen_ns = now;
					}
				}
				return 0;
			}
			count(CAROM_CNT_CONN_REAL_GONE);
		}
	}

	/* A new flow (or one rescheduled). Frames of established flows that come
	 * back are caught above; a new flow from a real's MAC is a loop (field
	 * note 2). Only new flows pay this lookup. */
	if (from_real(src_mac))
		return CAROM_CNT_DROP_LOOP;

	hkey = p->flow;
	if (svc->flags & CAROM_SVC_PERSIST) {
		persist_key_of(p, svc, &pk);
		pv = bpf_map_lookup_elem(&persist_table, &pk);
		if (pv && now - pv->last_seen_ns <= (__u64)svc->persist_timeout_s * NSEC_PER_SEC) {
			*real = usable_real(pv->real_id);
			if (*real) {
				rid = pv->real_id;
				pv->last_seen_ns = now;
				count(CAROM_CNT_PERSIST_HIT);
			}
		}
		/* Persistent services hash on the client address alone (and the VIP),
		 * so every director agrees on a client's real even without state. */
		hkey.sport = 0;
		hkey.dport = 0;
	}

	if (!rid) {
		if (!cfg->maglev_size)
			return CAROM_CNT_DROP_NO_REAL;
		idx = svc->id * cfg->maglev_size + flow_hash(&hkey) % cfg->maglev_size;
		slot = bpf_map_lookup_elem(&maglev, &idx);
		if (!slot)
			return CAROM_CNT_DROP_NO_REAL;
		rid = *slot;
		*real = usable_real(rid);
		if (!*real)
			return CAROM_CNT_DROP_NO_REAL;
		count(CAROM_CNT_NEW_FLOW);
		if (svc->flags & CAROM_SVC_PERSIST) {
			struct persist_val nv = { .real_id = rid, .last_seen_ns = now };

			bpf_map_update_elem(&persist_table, &pk, &nv, BPF_ANY);
		}
	}

	{
		struct conn_val cv = { .real_id = rid, .last_seen_ns = now };

		bpf_map_update_elem(&conn_table, &p->flow, &cv, BPF_ANY);
	}
	*real_id = rid;
	return 0;
}

#endif
