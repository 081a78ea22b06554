/* SPDX-License-Identifier: GPL-2.0 */
/* VIP ownership: the active director answers ARP requests and IPv6 Neighbour
 * Solicitations for its VIPs itself, in XDP. The VIPs live on `lo` with the
 * real-server ARP settings on every node, so the kernel never answers for them;
 * this responder needs no address juggling on takeover and stops the instant the
 * node is not active or its daemon stops renewing the lease (the `lease` map).
 * src/carom/model/neighbour.py is the same decision in Python. */
#ifndef CAROM_ARP_RESPONDER_H
#define CAROM_ARP_RESPONDER_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "ifmac.h"

#define ARPHRD_ETHER_ 1
#define ARPOP_REQUEST_ 1
#define ARPOP_REPLY_ 2
#define ND_NEIGHBOR_SOLICIT 135
#define ND_NEIGHBOR_ADVERT 136
#define ND_OPT_SOURCE_LL 1
#define ND_OPT_TARGET_LL 2
#define ND_NA_FLAGS_SO 0x60000000 /* Solicited | Override */
#define ND_HOP_LIMIT 255
#define ND_NS_LEN 24              /* ICMPv6 NS without options */
#define ND_NS_LEN_SLLA 32         /* ... with one source link-layer address option */

/* ARP for Ethernet/IPv4; addresses as bytes, they are not aligned. */
struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

struct nd_msg {
	__u8 type;
	__u8 code;
	__be16 csum;
	__be32 flags; /* NA: R S O; NS: reserved */
	__u8 target[16];
	__u8 opt_type; /* only when the message carries one 8-byte option */
	__u8 opt_len;
	__u8 opt_mac[6];
};

/* Whether this node may answer for its VIPs now: active, and the daemon's lease
 * (bpf_ktime_get_ns clock) still running. Only this path reads the clock. */
static __always_inline int neigh_active(void)
{
	__u32 zero = 0;
	struct node_cfg *cfg = bpf_map_lookup_elem(&node_cfg, &zero);
	__u64 *until = bpf_map_lookup_elem(&lease, &zero);

	if (!cfg || cfg->role != CAROM_ROLE_ACTIVE || !until)
		return 0;
	return bpf_ktime_get_ns() < *until;
}

/* The checks every answer shares, in order: role and lease, our MAC known, the
 * request sent to a group address or to us. 0, or the pass reason. */
static __always_inline int neigh_may_answer(const struct xdp_md *ctx, const struct ethhdr *eth,
					    struct if_mac **own)
{
	if (!neigh_active())
		return CAROM_CNT_PASS_NEIGH_INACTIVE;
	*own = if_mac_of(ctx);
	if (!*own)
		return CAROM_CNT_PASS_NO_IF_MAC;
	if (!(eth->h_dest[0] & 1) && !same_mac(eth->h_dest, (*own)->mac))
		return CAROM_CNT_PASS_NOT_OUR_MAC;
	return 0;
}

/* An ARP frame (EtherType 0x0806). A who-has for a VIP becomes, in place, the
 * is-at from this interface's MAC; everything else is the kernel's. */
static __always_inline int arp_respond(struct xdp_md *ctx, void *data, void *end)
{
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *arp = data + sizeof(*eth);
	struct vip_key vk = {};
	struct if_mac *own = 0;
	__u8 vip[4];
	int rc;

	if ((void *)(arp + 1) > end)
		return CAROM_CNT_PASS_NOT_IP;
	if (arp->htype != bpf_htons(ARPHRD_ETHER_) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != 6 || arp->plen != 4 || arp->op != bpf_htons(ARPOP_REQUEST_))
		return CAROM_CNT_PASS_NOT_IP;
	__builtin_memcpy(&vk.addr.w[0], arp->tpa, 4);
	vk.family = CAROM_FAMILY_IPV4;
	if (!bpf_map_lookup_elem(&vip_addrs, &vk))
		return CAROM_CNT_PASS_NOT_VIP;
	/* Not answered: a probe (sender 0.0.0.0, address conflict detection), a
	 * gratuitous request (another host claiming the VIP: the daemon's business),
	 * a group sender MAC. */
	if (*(__u32 *)arp->spa == 0 || *(__u32 *)arp->spa == *(__u32 *)arp->tpa ||
	    (arp->sha[0] & 1) || (eth->h_source[0] & 1))
		return CAROM_CNT_PASS_NEIGH_IGNORED;
	rc = neigh_may_answer(ctx, eth, &own);
	if (rc || !own)
		return rc ? rc : CAROM_CNT_PASS_NO_IF_MAC;

	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, own->mac, ETH_ALEN);
	arp->op = bpf_htons(ARPOP_REPLY_);
	__builtin_memcpy(vip, arp->tpa, 4);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	__builtin_memcpy(arp->tpa, arp->spa, 4);
	__builtin_memcpy(arp->sha, own->mac, ETH_ALEN);
	__builtin_memcpy(arp->spa, vip, 4);
	return CAROM_CNT_TX_ARP_REPLY;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

/* ICMPv6 checksum over the pseudo-header and `len` (24 or 32) bytes of message.
 * Words are summed as loaded (network order); the folded result is stored as is.
 * The caller has checked that 24 bytes of message are in the frame. */
static __always_inline __u16 icmp6_csum(const struct ipv6hdr *ip6, const struct nd_msg *nd,
					__u32 len, void *end)
{
	const __u16 *addrs = (const __u16 *)&ip6->saddr;
	const __u16 *msg = (const __u16 *)nd;
	__u64 sum = bpf_htonl(len) + bpf_htonl(IPPROTO_ICMPV6);

#pragma unroll
	for (int i = 0; i < 16; i++)
		sum += addrs[i];
#pragma unroll
	for (int i = 0; i < ND_NS_LEN / 2; i++)
		sum += msg[i];
	if (len == ND_NS_LEN_SLLA && (void *)(nd + 1) <= end) {
#pragma unroll
		for (int i = ND_NS_LEN / 2; i < ND_NS_LEN_SLLA / 2; i++)
			sum += msg[i];
	}
	return csum_fold(sum);
}

/* Solicited-node multicast address of `target`: ff02::1:ffXX:XXXX. */
static __always_inline int is_solicited_node(const __u8 *dst, const __u8 *target)
{
	const __u32 *d = (const __u32 *)dst;

	return d[0] == bpf_htonl(0xff020000) && d[1] == 0 && d[2] == bpf_htonl(1) &&
	       dst[12] == 0xff && dst[13] == target[13] && dst[14] == target[14] &&
	       dst[15] == target[15];
}

/* An IPv6 frame whose fixed header says ICMPv6. Runs before the VIP lookup: a
 * solicitation goes to the solicited-node multicast address, not to the VIP.
 * 0 if it is not a Neighbour Solicitation (the frame goes on), else the reason. */
static __always_inline int ndp_respond(struct xdp_md *ctx, void *data, void *end,
				       const struct packet *p)
{
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + sizeof(*eth);
	struct nd_msg *nd = data + sizeof(*eth) + sizeof(*ip6);
	__u32 len = p->l4_end - p->l4_off;
	struct vip_key vk = {};
	struct if_mac *own = 0;
	int rc;

	if ((void *)&nd->code > end || len < 1 || nd->type != ND_NEIGHBOR_SOLICIT)
		return 0;
	if (len < ND_NS_LEN || (void *)&nd->opt_type > end)
		return CAROM_CNT_PASS_NEIGH_IGNORED;
	__builtin_memcpy(&vk.addr, nd->target, 16);
	vk.family = CAROM_FAMILY_IPV6;
	if (!bpf_map_lookup_elem(&vip_addrs, &vk))
		return CAROM_CNT_PASS_NOT_VIP;
	/* RFC 4861 7.1.1 validation, narrowed to what stacks send: no options, or
	 * exactly one source link-layer address option. Never answer DAD (source ::):
	 * a node probing for our VIP is the daemon's business. */
	if (ip6->hop_limit != ND_HOP_LIMIT || nd->code != 0 || (eth->h_source[0] & 1) ||
	    ip6->saddr.in6_u.u6_addr8[0] == 0xff)
		return CAROM_CNT_PASS_NEIGH_IGNORED;
	if (!ip6->saddr.in6_u.u6_addr32[0] && !ip6->saddr.in6_u.u6_addr32[1] &&
	    !ip6->saddr.in6_u.u6_addr32[2] && !ip6->saddr.in6_u.u6_addr32[3])
		return CAROM_CNT_PASS_NEIGH_IGNORED;
	if (len == ND_NS_LEN_SLLA) {
		if ((void *)(nd + 1) > end || nd->opt_type != ND_OPT_SOURCE_LL || nd->opt_len != 1)
			return CAROM_CNT_PASS_NEIGH_IGNORED;
	} else if (len != ND_NS_LEN) {
		return CAROM_CNT_PASS_NEIGH_IGNORED;
	}
	if (is_solicited_node(ip6->daddr.in6_u.u6_addr8, nd->target)) {
		if (len != ND_NS_LEN_SLLA) /* a multicast NS must say who is asking */
			return CAROM_CNT_PASS_NEIGH_IGNORED;
	} else if (!same_addr6(ip6->daddr.in6_u.u6_addr8, nd->target)) {
		return CAROM_CNT_PASS_NEIGH_IGNORED;
	}
	if (icmp6_csum(ip6, nd, len, end) != 0)
		return CAROM_CNT_PASS_NEIGH_IGNORED;
	rc = neigh_may_answer(ctx, eth, &own);
	if (rc || !own)
		return rc ? rc : CAROM_CNT_PASS_NO_IF_MAC;

	/* The advertisement, in place: same length as the solicitation. */
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, own->mac, ETH_ALEN);
	*(__be32 *)ip6 = bpf_htonl(0x60000000);
	ip6->hop_limit = ND_HOP_LIMIT;
	ip6->daddr = ip6->saddr;
	__builtin_memcpy(&ip6->saddr, nd->target, 16);
	nd->type = ND_NEIGHBOR_ADVERT;
	nd->code = 0;
	nd->csum = 0;
	nd->flags = bpf_htonl(ND_NA_FLAGS_SO);
	if (len == ND_NS_LEN_SLLA && (void *)(nd + 1) <= end) {
		nd->opt_type = ND_OPT_TARGET_LL;
		nd->opt_len = 1;
		__builtin_memcpy(nd->opt_mac, own->mac, ETH_ALEN);
	}
	nd->csum = icmp6_csum(ip6, nd, len, end);
	return CAROM_CNT_TX_ND_ADVERT;
}

#endif
