/* SPDX-License-Identifier: GPL-2.0 */
/* Header parsing. Each step returns 0 to continue or the counter id of the
 * verdict it reached (see stats.h finish()). Family-generic: IPv4 and IPv6
 * fill the same struct packet, so nothing after parsing cares which it was. */
#ifndef CAROM_PARSE_H
#define CAROM_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "structs.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define IP6_FRAG_OFFSET_MASK 0xfff8
#define IP6_FRAG_MF 0x0001
/* Longest IPv6 extension chain we walk through (bytes after the fixed header). */
#define IPV6_EXT_MAX_BYTES 512
/* Largest transport-header offset we accept, and a mask covering it. */
#define IPV6_EXT_OFF_LIMIT (14 + 40 + IPV6_EXT_MAX_BYTES)
#define IPV6_EXT_OFF_MASK 0x3ff

struct ipv6_ext {
	__u8 nexthdr;
	__u8 hdrlen;
	__u16 rest;
};

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* What the rest of the program needs to know about a frame. */
struct packet {
	struct flow_key flow; /* ports filled by parse_l4 */
	__u32 l3_off;
	__u32 l4_off;         /* start of the transport header */
	__u32 l4_end;         /* end of the IP payload (tot_len), <= frame end */
	__u8 l4_proto;
	__u8 fragment;        /* any fragment: no trustworthy ports */
	__u8 tcp_flags;
	__u8 ttl;             /* IPv4 TTL or IPv6 hop limit (loop guard, sched.h) */
};

static __always_inline int parse_eth(void *data, void *end, struct packet *p, __u16 *eth_proto)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return CAROM_CNT_DROP_SHORT_ETH;
	*eth_proto = eth->h_proto;
	p->l3_off = sizeof(*eth);
	return 0;
}

static __always_inline int parse_ipv4(void *data, void *end, struct packet *p)
{
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u32 hlen, tot;

	if ((void *)(ip + 1) > end)
		return CAROM_CNT_DROP_TRUNC_L3;
	if (ip->version != 4)
		return CAROM_CNT_DROP_BAD_L3;
	if (ip->ihl < 5)
		return CAROM_CNT_DROP_BAD_IHL;
	hlen = ip->ihl * 4;
	if ((void *)ip + hlen > end)
		return CAROM_CNT_DROP_TRUNC_L3;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen)
		return CAROM_CNT_DROP_BAD_L3;
	if ((void *)ip + tot > end)
		return CAROM_CNT_DROP_TRUNC_L3;

	p->flow.family = CAROM_FAMILY_IPV4;
	p->flow.src.w[0] = ip->saddr;
	p->flow.dst.w[0] = ip->daddr;
	p->l4_proto = ip->protocol;
	p->ttl = ip->ttl;
	p->l4_off = sizeof(struct ethhdr) + hlen;
	p->l4_end = sizeof(struct ethhdr) + tot;
	p->fragment = (bpf_ntohs(ip->frag_off) & (IP_MF | IP_OFFSET)) != 0;
	return 0;
}

static __always_inline int parse_ipv6(void *data, void *end, struct packet *p)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	__u32 plen;

	if ((void *)(ip6 + 1) > end)
		return CAROM_CNT_DROP_TRUNC_L3;
	if (ip6->version != 6)
		return CAROM_CNT_DROP_BAD_L3;
	plen = bpf_ntohs(ip6->payload_len);
	if ((void *)(ip6 + 1) + plen > end)
		return CAROM_CNT_DROP_TRUNC_L3;

	p->flow.family = CAROM_FAMILY_IPV6;
	__builtin_memcpy(&p->flow.src, &ip6->saddr, 16);
	__builtin_memcpy(&p->flow.dst, &ip6->daddr, 16);
	p->l4_proto = ip6->nexthdr;
	p->ttl = ip6->hop_limit;
	p->l4_off = sizeof(struct ethhdr) + sizeof(*ip6);
	p->l4_end = p->l4_off + plen;
	return 0;
}

/* Walks IPv6 extension headers (hop-by-hop, routing, destination options,
 * fragment) to the transport header. Only called for VIP traffic. */
static __always_inline int skip_ipv6_ext(void *data, void *end, struct packet *p)
{
	__u32 off = p->l4_off;
	__u8 next = p->l4_proto;

#pragma unroll
	for (int i = 0; i < CAROM_MAX_IPV6_EXT_HDRS; i++) {
		if (off > IPV6_EXT_OFF_LIMIT)
			return CAROM_CNT_DROP_IPV6_EXT;
		/* No-op after the check above, but the mask gives the verifier a
		 * constant range for `data + off` (it loses the compare otherwise). */
		off &= IPV6_EXT_OFF_MASK;
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
			struct ipv6_ext *ext = data + off;

			if ((void *)(ext + 1) > end || off + sizeof(*ext) > p->l4_end)
				return CAROM_CNT_DROP_TRUNC_L3;
			next = ext->nexthdr;
			off += (ext->hdrlen + 1) * 8;
		} else if (next == IPPROTO_FRAGMENT) {
			struct ipv6_frag *fh = data + off;

			if ((void *)(fh + 1) > end || off + sizeof(*fh) > p->l4_end)
				return CAROM_CNT_DROP_TRUNC_L3;
			next = fh->nexthdr;
			off += sizeof(*fh);
			/* An atomic fragment (offset 0, no MF) carries the whole datagram. */
			if (bpf_ntohs(fh->frag_off) & (IP6_FRAG_OFFSET_MASK | IP6_FRAG_MF))
				p->fragment = 1;
			/* After a non-first fragment's header comes payload, not headers:
			 * stop here, the fragment policy decides. */
			if (bpf_ntohs(fh->frag_off) & IP6_FRAG_OFFSET_MASK) {
				p->l4_off = off;
				p->l4_proto = next;
				return 0;
			}
		} else {
			break;
		}
	}
	if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	    next == IPPROTO_FRAGMENT)
		return CAROM_CNT_DROP_IPV6_EXT;
	if (off > IPV6_EXT_OFF_LIMIT)
		return CAROM_CNT_DROP_IPV6_EXT;
	if (off > p->l4_end)
		return CAROM_CNT_DROP_TRUNC_L3;
	p->l4_off = off;
	p->l4_proto = next;
	return 0;
}

/* Transport header: ports, and TCP flags for SYN rescheduling. */
static __always_inline int parse_l4(void *data, void *end, struct packet *p)
{
	__u32 off = p->l4_off;

	/* Bounded by parse_ipv4 (<= 74) and skip_ipv6_ext (<= IPV6_EXT_OFF_LIMIT);
	 * the mask restates that for the verifier. */
	if (off > IPV6_EXT_OFF_LIMIT)
		return CAROM_CNT_DROP_IPV6_EXT;
	off &= IPV6_EXT_OFF_MASK;

	if (p->l4_proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + off;
		__u32 doff;

		if ((void *)(tcp + 1) > end || off + sizeof(*tcp) > p->l4_end)
			return CAROM_CNT_DROP_TRUNC_L4;
		doff = tcp->doff * 4;
		if (doff < sizeof(*tcp))
			return CAROM_CNT_DROP_BAD_L4;
		if (off + doff > p->l4_end)
			return CAROM_CNT_DROP_TRUNC_L4;
		p->flow.sport = tcp->source;
		p->flow.dport = tcp->dest;
		p->tcp_flags = ((__u8 *)tcp)[13];
	} else {
		struct udphdr *udp = data + off;
		__u32 ulen;

		if ((void *)(udp + 1) > end || off + sizeof(*udp) > p->l4_end)
			return CAROM_CNT_DROP_TRUNC_L4;
		ulen = bpf_ntohs(udp->len);
		if (ulen < sizeof(*udp))
			return CAROM_CNT_DROP_BAD_L4;
		if (off + ulen > p->l4_end)
			return CAROM_CNT_DROP_TRUNC_L4;
		p->flow.sport = udp->source;
		p->flow.dport = udp->dest;
	}
	p->flow.proto = p->l4_proto;
	return 0;
}

#endif
