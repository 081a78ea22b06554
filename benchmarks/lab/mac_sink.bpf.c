// SPDX-License-Identifier: GPL-2.0
/* The forwarding benchmark's receiving end: counts every frame by its
 * (destination MAC, source MAC) pair, then drops it in XDP, so the receiver
 * costs almost nothing and the counters prove where the director sent each
 * frame (a real server's MAC, from the director's own MAC). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

struct mac_pair {
	__u8 dst[ETH_ALEN];
	__u8 src[ETH_ALEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 256);
	__type(key, struct mac_pair);
	__type(value, __u64);
} sink_pairs SEC(".maps");

/* [0] frames, [1] bytes, [2] frames that did not fit sink_pairs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} sink_total SEC(".maps");

static __always_inline void add(__u32 k, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sink_total, &k);

	if (v)
		*v += n;
}

SEC("xdp")
int carom_mac_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct mac_pair key = {};
	__u64 one = 1, *v;

	add(0, 1);
	add(1, end - data);
	if (data + sizeof(key) > end)
		return XDP_DROP;
	__builtin_memcpy(&key, data, sizeof(key));
	v = bpf_map_lookup_elem(&sink_pairs, &key);
	if (v)
		*v += 1;
	else if (bpf_map_update_elem(&sink_pairs, &key, &one, BPF_NOEXIST))
		add(2, 1);
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
