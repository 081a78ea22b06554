// SPDX-License-Identifier: GPL-2.0
/* carom XDP entry point: parse, look up, schedule, dispatch. The decisions live
 * in the headers; src/carom/model/ is the same decision in Python. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "stats.h"
#include "parse.h"
#include "vip_filter.h"
#include "service.h"
#include "clock.h"
#include "lease.h"
#include "hold.h"
#include "sched.h"
#include "forward_dsr.h"
#include "ifmac.h"
#include "arp_responder.h"
#include "icmp.h"
#include "trace.h"

/* Referenced so the enums (and structs used only as locals, such as the
 * conn_events record) reach BTF, where user space checks them. */
struct carom_abi_enums {
	enum carom_family family;
	enum carom_role role;
	enum carom_cfg_flags cfg_flags;
	enum carom_vip_flags vip_flags;
	enum carom_svc_flags svc_flags;
	enum carom_real_flags real_flags;
	enum carom_method method;
	enum carom_conn_flags conn_flags;
	enum carom_conn_event_kind conn_event_kind;
	enum carom_counter counter;
	struct conn_event conn_event;
	struct trace_event trace_event;
};
struct carom_abi_enums carom_abi_enums_anchor SEC(".carom_abi");

/* A VIP frame, once node_cfg is read: may we schedule, then the checks, the
 * service, the real, the forwarding. Returns the verdict's reason; *svc_id and
 * *real_id say what it was decided with (for `carom trace`, trace.h). */
static __always_inline int vip_decision(struct xdp_md *ctx, void *data, void *end,
					struct packet *p, const struct node_cfg *cfg,
					struct svc_info *svc, const struct vip_info *vip, int tried,
					__u32 *svc_id, __u32 *real_id)
{
	__u64 bytes = ctx->data_end - ctx->data;
	struct ethhdr *eth = data;
	struct real_info *real;
	__u32 via = CAROM_VIA_OTHER;
	__u64 now;
	int rc;

	/* Only an active node with a running lease schedules, and never a frame
	 * a peer director sent; the rest is the local stack's (lease.h), but for
	 * flows the stack would reset: those wait for an active director (hold.h). */
	now = coarse_now();
	rc = may_schedule(cfg, now);
	if (__builtin_expect(rc != 0, 0))
		return hold_or_pass(data, end, p, cfg, rc);
	if (cfg->peer_mac_count && from_peer_director(cfg, eth->h_source))
		return CAROM_CNT_PASS_PEER_DIRECTOR;

	if (p->flow.family == CAROM_FAMILY_IPV6) {
		rc = skip_ipv6_ext(data, end, p);
		if (rc)
			return rc;
	}
	if (p->fragment)
		return cfg->flags & CAROM_CFG_FRAG_PASS ? CAROM_CNT_PASS_FRAGMENT
							 : CAROM_CNT_DROP_FRAGMENT;
	if (p->l4_proto == (p->flow.family == CAROM_FAMILY_IPV4 ? IPPROTO_ICMP : IPPROTO_ICMPV6))
		return icmp_error_forward(ctx, data, end, p, cfg);
	if (p->l4_proto != IPPROTO_TCP && p->l4_proto != IPPROTO_UDP)
		return CAROM_CNT_PASS_OTHER_PROTO;
	rc = parse_l4(data, end, p);
	if (rc)
		return rc;
	if (!svc) {
		if (!vip)
			return CAROM_CNT_PASS_NOT_VIP; /* unreachable; for the verifier */
		rc = find_service(p, vip, tried, &svc);
		if (rc)
			return rc;
	}
	*svc_id = svc->id;

	/* Checks on the Ethernet header, now that the frame is ours to forward. */
	if (eth->h_dest[0] & 1)
		return CAROM_CNT_DROP_GROUP_MAC;
	rc = addressed_to_us(ctx, eth);
	if (rc)
		return rc;

	rc = schedule(p, svc, cfg, eth->h_source, now, real_id, &real, &via);
	if (rc)
		return rc;

	count_traffic(&svc_stats, svc->id, bytes, via);
	count_traffic(&real_stats, *real_id, bytes, via);

	if (real->flags & CAROM_REAL_LOCAL)
		return CAROM_CNT_PASS_LOCAL_REAL;
	if (real->method != CAROM_METHOD_DSR)
		return CAROM_CNT_DROP_UNSUPPORTED;
	forward_dsr(eth, real);
	return CAROM_CNT_TX_DSR;
}

SEC("xdp")
int carom_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct packet p = {};
	struct vip_key vk = {};
	struct vip_info *vip = 0;
	struct node_cfg *cfg;
	struct svc_info *svc;
	__u32 zero = 0, svc_id = CAROM_TRACE_NO_SVC, real_id = 0;
	__u16 eth_proto = 0;
	int rc, tried;

	rc = parse_eth(data, end, &p, &eth_proto);
	if (rc)
		return finish(rc);
	if (eth_proto == bpf_htons(ETH_P_IP)) {
		rc = parse_ipv4(data, end, &p);
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		rc = parse_ipv6(data, end, &p);
		if (!rc && p.l4_proto == IPPROTO_ICMPV6)
			rc = ndp_respond(ctx, data, end, &p);
	} else if (eth_proto == bpf_htons(ETH_P_ARP)) {
		return finish(arp_respond(ctx, data, end));
	} else {
		return finish(CAROM_CNT_PASS_NOT_IP);
	}
	if (rc)
		return finish(rc);

	if (!maybe_vip(&p.flow.dst))
		return finish(CAROM_CNT_PASS_NOT_VIP);
	svc = peek_service(data, end, &p, &tried);
	if (!svc) {
		vk.addr = p.flow.dst;
		vk.family = p.flow.family;
		vip = bpf_map_lookup_elem(&vip_addrs, &vk);
		if (!vip)
			return finish(CAROM_CNT_PASS_NOT_VIP);
	}

	cfg = bpf_map_lookup_elem(&node_cfg, &zero);
	if (!cfg)
		return finish(CAROM_CNT_PASS_BACKUP);
	rc = vip_decision(ctx, data, end, &p, cfg, svc, vip, tried, &svc_id, &real_id);
	/* Off, `carom trace` costs this test of a field read already (trace.h). */
	if (__builtin_expect(cfg->trace_one_in != 0, 0))
		trace_decision(ctx, cfg, &p, rc, svc_id, real_id);
	return finish(rc);
}

char _license[] SEC("license") = "GPL";
