// SPDX-License-Identifier: GPL-2.0
/* A program that passes every frame. On veth, XDP_TX from one end only reaches
 * the other end when the peer also runs an XDP program; the lab attaches this. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int carom_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
