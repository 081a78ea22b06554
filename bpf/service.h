/* SPDX-License-Identifier: GPL-2.0 */
/* Finding the service of a packet with one hash lookup. For the common frame
 * (TCP or UDP right after the IP header, not a fragment) the ports are read
 * before the full transport checks and (VIP, protocol, port) is looked up in
 * `services` at once: a hit proves the destination is a VIP, so `vip_addrs` is
 * not consulted. Anything else (a miss, IPv6 extension headers, fragments,
 * other protocols) takes the general path: `vip_addrs`, then the checks, then
 * the service, with the all-ports lookup only on a VIP that has such a service.
 * Both paths reach the same verdict for every frame (the model has one path). */
#ifndef CAROM_SERVICE_H
#define CAROM_SERVICE_H

#include <linux/in.h>
#include "maps.h"
#include "parse.h"

static __always_inline void svc_key_of(const struct packet *p, __u16 port, struct svc_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->vip = p->flow.dst;
	key->proto = p->l4_proto;
	key->family = p->flow.family;
	key->port = port;
}

/* The service of a frame whose ports can be read straight away, or 0. Sets
 * *tried when the (VIP, protocol, port) lookup was made, hit or miss. */
static __always_inline struct svc_info *peek_service(void *data, void *end,
						     const struct packet *p, int *tried)
{
	struct svc_key key;
	__u32 off = p->l4_off;
	__u16 *ports;

	*tried = 0;
	if (p->fragment || (p->l4_proto != IPPROTO_TCP && p->l4_proto != IPPROTO_UDP))
		return 0;
	if (off > IPV6_EXT_OFF_LIMIT || off + 4 > p->l4_end)
		return 0;
	off &= IPV6_EXT_OFF_MASK; /* a no-op that gives the verifier a range (parse.h) */
	ports = data + off;
	if ((void *)(ports + 2) > end)
		return 0;
	*tried = 1;
	svc_key_of(p, ports[1], &key);
	return bpf_map_lookup_elem(&services, &key);
}

/* After parse_l4: the service by (VIP, protocol, port) unless that lookup was
 * already made, then the VIP's all-ports service if it has one. Returns 0 with
 * *svc set, or the counter id of the verdict. */
static __always_inline int find_service(const struct packet *p, const struct vip_info *vip,
					int tried, struct svc_info **svc)
{
	__u32 all = p->l4_proto == IPPROTO_TCP ? CAROM_VIP_ALL_PORTS_TCP : CAROM_VIP_ALL_PORTS_UDP;
	struct svc_key key;

	svc_key_of(p, p->flow.dport, &key);
	if (!tried) {
		*svc = bpf_map_lookup_elem(&services, &key);
		if (*svc)
			return 0;
	}
	if (!(vip->flags & all))
		return CAROM_CNT_PASS_NO_SERVICE;
	key.port = 0;
	*svc = bpf_map_lookup_elem(&services, &key);
	return *svc ? 0 : CAROM_CNT_PASS_NO_SERVICE;
}

#endif
