// SPDX-License-Identifier: GPL-2.0
/* A receiving end that counts and drops every frame in XDP, so that in the
 * forwarding benchmark the receivers cost almost nothing and the director's
 * cost dominates. Counter 0: packets, 1: bytes (per CPU). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int carom_sink(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&sink_count, &k);

	if (v)
		*v += 1;
	k = 1;
	v = bpf_map_lookup_elem(&sink_count, &k);
	if (v)
		*v += ctx->data_end - ctx->data;
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
