/* SPDX-License-Identifier: GPL-2.0 */
/* The receiving interface's own MAC (if_macs, written by the loader when it
 * attaches the program). It is the source of every ARP/NDP answer, and the only
 * destination MAC under which a VIP frame is forwarded: a frame that reached us
 * only through promiscuous mode or a flooding switch is someone else's. */
#ifndef CAROM_IFMAC_H
#define CAROM_IFMAC_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include "maps.h"

static __always_inline struct if_mac *if_mac_of(const struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct if_mac *own = bpf_map_lookup_elem(&if_macs, &ifindex);

	return own && own->known ? own : 0;
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	/* Two loads instead of six: 4 + 2 bytes. */
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline int same_addr6(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* 0 if a unicast frame is addressed to this interface, else the pass reason. */
static __always_inline int addressed_to_us(const struct xdp_md *ctx, const struct ethhdr *eth)
{
	struct if_mac *own = if_mac_of(ctx);

	if (!own)
		return CAROM_CNT_PASS_NO_IF_MAC;
	if (!same_mac(eth->h_dest, own->mac))
		return CAROM_CNT_PASS_NOT_OUR_MAC;
	return 0;
}

#endif
