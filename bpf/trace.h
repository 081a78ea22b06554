/* SPDX-License-Identifier: GPL-2.0 */
/* `carom trace`: sampled decisions, written by the program itself into the
 * `trace_events` ring buffer (tcpdump cannot see frames XDP forwards).
 *
 * Off (node_cfg.trace_one_in == 0) it costs one test of a field of node_cfg,
 * which the program has already read for may_schedule(): carom.bpf.c calls
 * trace_decision() only when that field is set. On, every VIP decision taken
 * after node_cfg was read (the same set the model traces: not ARP/NDP, not
 * non-VIP traffic, not frames that fail the IP header checks) is matched
 * against the filter in node_cfg (an address and a port, either end), and one
 * match in trace_one_in (a per-CPU countdown in trace_state) is copied: the
 * tuple, the reason, the service and real, and the first CAROM_TRACE_SNAP bytes
 * of the frame as it leaves (after the DSR MAC rewrite). A full ring loses the
 * record and counts it (trace_dropped). src/carom/model/forward.py mirrors the
 * record; the daemon reads the ring (src/carom/daemon/trace_task.py). */
#ifndef CAROM_TRACE_H
#define CAROM_TRACE_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "ifmac.h"

/* The tuple of the record: the packet's, with its protocol, and the ports read from the frame
 * when the decision came before the transport header was parsed (a backup's
 * pass, say), so a port filter and the printed line see them too. */
static __always_inline void trace_key(void *data, void *end, const struct packet *p,
				      struct flow_key *key)
{
	__u32 off = p->l4_off;
	__u16 *ports;

	*key = p->flow;
	key->proto = p->l4_proto; /* the key's is set with the ports (parse_l4) */
	if (key->sport || key->dport || p->fragment ||
	    (p->l4_proto != IPPROTO_TCP && p->l4_proto != IPPROTO_UDP))
		return;
	if (off > IPV6_EXT_OFF_LIMIT || off + 4 > p->l4_end)
		return;
	off &= IPV6_EXT_OFF_MASK; /* a no-op that gives the verifier a range (parse.h) */
	ports = data + off;
	if ((void *)(ports + 2) > end)
		return;
	key->sport = ports[0];
	key->dport = ports[1];
}

static __always_inline int trace_wanted(const struct node_cfg *cfg, const struct flow_key *key)
{
	if (cfg->trace_family &&
	    (cfg->trace_family != key->family ||
	     !(same_addr6((const __u8 *)cfg->trace_addr.w, (const __u8 *)key->src.w) ||
	       same_addr6((const __u8 *)cfg->trace_addr.w, (const __u8 *)key->dst.w))))
		return 0;
	if (cfg->trace_port && cfg->trace_port != key->sport && cfg->trace_port != key->dport)
		return 0;
	return 1;
}

static __always_inline void trace_decision(struct xdp_md *ctx, const struct node_cfg *cfg,
					   const struct packet *p, __u32 reason, __u32 svc_id,
					   __u32 real_id)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct trace_event *ev;
	struct flow_key key;
	__u32 zero = 0, len, cap, *skip;

	trace_key(data, end, p, &key);
	if (!trace_wanted(cfg, &key))
		return;
	skip = bpf_map_lookup_elem(&trace_state, &zero);
	if (!skip)
		return;
	/* A countdown left by an earlier, sparser trace is not honoured. */
	if (*skip && *skip < cfg->trace_one_in) {
		*skip -= 1;
		return;
	}
	*skip = cfg->trace_one_in - 1;
	ev = bpf_ringbuf_reserve(&trace_events, sizeof(*ev), 0);
	if (!ev) {
		count(CAROM_CNT_TRACE_DROPPED);
		return;
	}
	len = end - data;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->key = key;
	ev->svc_id = svc_id;
	ev->real_id = real_id;
	ev->ifindex = ctx->ingress_ifindex;
	ev->reason = reason;
	ev->len = len;
	/* The copy's length must be provably 1..CAROM_TRACE_SNAP (a power of two):
	 * a constant, or a shorter frame's length masked. */
	if (len >= CAROM_TRACE_SNAP) {
		cap = CAROM_TRACE_SNAP;
		if (bpf_xdp_load_bytes(ctx, 0, ev->data, CAROM_TRACE_SNAP))
			cap = 0;
	} else {
		cap = len & (CAROM_TRACE_SNAP - 1);
		if (!cap || bpf_xdp_load_bytes(ctx, 0, ev->data, cap))
			cap = 0;
	}
	ev->caplen = cap;
	bpf_ringbuf_submit(ev, 0);
	count(CAROM_CNT_TRACE_SAMPLED);
}

#endif
