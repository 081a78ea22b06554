/* SPDX-License-Identifier: GPL-2.0 */
/* ICMP errors for VIP flows (field note 7). A router in front of a client
 * sends "fragmentation needed" / "packet too big" (or another error) about a
 * reply a real server sent from the VIP; it arrives here, at the VIP's owner.
 * The quoted header is the reply (VIP -> client): swapped, it is the client's
 * flow, and the error goes (DSR) to the real that owns that flow, whose stack
 * then lowers its path MTU. Never creates or refreshes state.
 * src/carom/model/icmp.py is the same decision in Python. */
#ifndef CAROM_ICMP_H
#define CAROM_ICMP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "hash.h"
#include "sched.h"
#include "ifmac.h"
#include "forward_dsr.h"

#define ICMP_HDR_LEN 8
#define QUOTE_PORTS_LEN 4 /* source and destination port: all we need of the quote */

static __always_inline int icmp_is_error(__u8 family, __u8 type)
{
	if (family == CAROM_FAMILY_IPV4) /* unreachable, time exceeded, parameter problem */
		return type == 3 || type == 11 || type == 12;
	/* unreachable, packet too big, time exceeded, parameter problem */
	return type >= 1 && type <= 4;
}

/* The client's flow (client -> VIP) from the quoted reply. 0 or a pass reason. */
static __always_inline int quoted_flow(void *data, void *end, const struct packet *p,
				       struct flow_key *fk)
{
	__u32 off = p->l4_off + ICMP_HDR_LEN;
	__u8 *ports;

	if (off > IPV6_EXT_OFF_LIMIT)
		return CAROM_CNT_PASS_ICMP_UNMATCHED;
	off &= IPV6_EXT_OFF_MASK;
	__builtin_memset(fk, 0, sizeof(*fk));
	if (p->flow.family == CAROM_FAMILY_IPV4) {
		struct iphdr *ip = data + off;
		__u32 hlen;

		if ((void *)(ip + 1) > end || off + sizeof(*ip) > p->l4_end)
			return CAROM_CNT_PASS_ICMP_UNMATCHED;
		if (ip->version != 4 || ip->ihl < 5 || ip->saddr != p->flow.dst.w[0] ||
		    (bpf_ntohs(ip->frag_off) & IP_OFFSET))
			return CAROM_CNT_PASS_ICMP_UNMATCHED;
		hlen = ip->ihl * 4;
		fk->proto = ip->protocol;
		fk->src.w[0] = ip->daddr;
		fk->dst.w[0] = ip->saddr;
		off += hlen;
	} else {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > end || off + sizeof(*ip6) > p->l4_end)
			return CAROM_CNT_PASS_ICMP_UNMATCHED;
		if (ip6->version != 6 || !same_addr6(ip6->saddr.in6_u.u6_addr8,
						     (const __u8 *)&p->flow.dst))
			return CAROM_CNT_PASS_ICMP_UNMATCHED;
		fk->proto = ip6->nexthdr; /* extension headers in a quote: not matched */
		__builtin_memcpy(&fk->src, &ip6->daddr, 16);
		__builtin_memcpy(&fk->dst, &ip6->saddr, 16);
		off += sizeof(*ip6);
	}
	if (fk->proto != IPPROTO_TCP && fk->proto != IPPROTO_UDP)
		return CAROM_CNT_PASS_ICMP_UNMATCHED;
	if (off > IPV6_EXT_OFF_LIMIT)
		return CAROM_CNT_PASS_ICMP_UNMATCHED;
	off &= IPV6_EXT_OFF_MASK;
	ports = data + off;
	if ((void *)(ports + QUOTE_PORTS_LEN) > end || off + QUOTE_PORTS_LEN > p->l4_end)
		return CAROM_CNT_PASS_ICMP_UNMATCHED;
	/* The reply went VIP:port -> client:port; the client's flow is the reverse. */
	__builtin_memcpy(&fk->dport, ports, 2);
	__builtin_memcpy(&fk->sport, ports + 2, 2);
	fk->family = p->flow.family;
	return 0;
}

/* The real that owns the flow: its connection entry, else the client's
 * persistence entry, else Maglev (what the flow's next packet would get). */
static __always_inline struct real_info *quoted_real(const struct flow_key *fk,
						     const struct svc_info *svc,
						     const struct node_cfg *cfg, __u32 *real_id)
{
	struct conn_val *conn = bpf_map_lookup_elem(&conn_table, fk);
	struct real_info *real;
	struct persist_key pk = {};
	struct persist_val *pv;
	struct flow_key hkey = *fk;
	__u32 idx, *slot;

	if (conn) {
		real = usable_real(conn->real_id);
		if (real && !real_down_for(cfg, svc, conn->real_id)) {
			*real_id = conn->real_id;
			return real;
		}
	}
	if (svc->flags & CAROM_SVC_PERSIST) {
		pk.client = fk->src;
		pk.svc_id = svc->id;
		pk.family = fk->family;
		pv = bpf_map_lookup_elem(&persist_table, &pk);
		if (pv) {
			real = usable_real(pv->real_id);
			if (real && !real_down_for(cfg, svc, pv->real_id)) {
				*real_id = pv->real_id;
				return real;
			}
		}
		hkey.sport = 0;
		hkey.dport = 0;
	}
	if (!cfg->maglev_size)
		return 0;
	idx = svc->id * cfg->maglev_size + flow_hash(&hkey) % cfg->maglev_size;
	slot = bpf_map_lookup_elem(&maglev, &idx);
	if (!slot)
		return 0;
	*real_id = *slot;
	return usable_real(*real_id);
}

/* A VIP packet whose transport is ICMP (IPv4) or ICMPv6 (IPv6), not a fragment. */
static __always_inline int icmp_error_forward(struct xdp_md *ctx, void *data, void *end,
					      const struct packet *p, const struct node_cfg *cfg)
{
	struct ethhdr *eth = data;
	__u32 off = p->l4_off, real_id = 0;
	struct svc_key sk = {};
	struct flow_key fk;
	struct svc_info *svc;
	struct real_info *real;
	struct mac_key mk = {};
	__u8 *type;
	int rc;

	if (off > IPV6_EXT_OFF_LIMIT)
		return CAROM_CNT_PASS_OTHER_PROTO;
	off &= IPV6_EXT_OFF_MASK;
	type = data + off;
	if ((void *)(type + ICMP_HDR_LEN) > end || off + ICMP_HDR_LEN > p->l4_end ||
	    !icmp_is_error(p->flow.family, *type))
		return CAROM_CNT_PASS_OTHER_PROTO;
	rc = quoted_flow(data, end, p, &fk);
	if (rc)
		return rc;

	sk.vip = fk.dst;
	sk.proto = fk.proto;
	sk.family = fk.family;
	sk.port = fk.dport;
	svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc) {
		sk.port = 0;
		svc = bpf_map_lookup_elem(&services, &sk);
		if (!svc)
			return CAROM_CNT_PASS_ICMP_UNMATCHED;
	}

	/* The same checks as any VIP frame we would forward. */
	if (eth->h_dest[0] & 1)
		return CAROM_CNT_DROP_GROUP_MAC;
	rc = addressed_to_us(ctx, eth);
	if (rc)
		return rc;
	__builtin_memcpy(mk.mac, eth->h_source, ETH_ALEN);
	if (bpf_map_lookup_elem(&real_macs, &mk))
		return CAROM_CNT_DROP_LOOP;

	real = quoted_real(&fk, svc, cfg, &real_id);
	if (!real)
		return CAROM_CNT_PASS_ICMP_UNMATCHED;
	count_traffic(&svc_stats, svc->id, ctx->data_end - ctx->data, CAROM_VIA_OTHER);
	count_traffic(&real_stats, real_id, ctx->data_end - ctx->data, CAROM_VIA_OTHER);
	if (real->flags & CAROM_REAL_LOCAL)
		return CAROM_CNT_PASS_LOCAL_REAL;
	if (real->method != CAROM_METHOD_DSR)
		return CAROM_CNT_DROP_UNSUPPORTED;
	forward_dsr(eth, real);
	return CAROM_CNT_TX_ICMP_ERROR;
}

#endif
