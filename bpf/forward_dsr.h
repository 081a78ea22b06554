/* SPDX-License-Identifier: GPL-2.0 */
/* Direct Server Return: only the Ethernet header changes. The IP packet leaves
 * exactly as the client sent it (no TTL decrement, no checksum change), which
 * is what lets the real server answer the client directly from the VIP. */
#ifndef CAROM_FORWARD_DSR_H
#define CAROM_FORWARD_DSR_H

#include <linux/if_ether.h>
#include "structs.h"

/* The frame was addressed to this interface, so its destination MAC is our
 * own: it becomes the source of the forwarded frame. */
static __always_inline void forward_dsr(struct ethhdr *eth, const struct real_info *real)
{
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, real->mac, ETH_ALEN);
}

#endif
