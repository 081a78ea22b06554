// SPDX-License-Identifier: GPL-2.0
/* The forwarding benchmark's packet generator, run by BPF_PROG_TEST_RUN with
 * BPF_F_TEST_XDP_LIVE_FRAMES on the generator's veth end: every run writes the
 * frame template (gen_template[0], set by user space) over the frame, gives it
 * the next source port, and returns XDP_TX, which in live-frames mode sends it
 * out of the interface named in the context, i.e. to the director's veth end.
 *
 * The whole template is written each time because live frames come back from
 * the page pool with the bytes the last user wrote (measuring.md): a director
 * rewrites MACs, a router decrements the TTL. Source ports walk all 65536
 * values in a scrambled order (an odd multiplier is a bijection mod 2^16). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define FRAME_LEN 60
#define SPORT_OFF 34 /* Ethernet 14 + IPv4 20: UDP and TCP source port */

struct template {
	__u8 bytes[FRAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct template);
} gen_template SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_seq SEC(".maps");

SEC("xdp")
int carom_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct template *t;
	__u32 zero = 0;
	__u64 *seq;
	__u16 port;

	if (data + FRAME_LEN > end)
		return XDP_ABORTED;
	t = bpf_map_lookup_elem(&gen_template, &zero);
	seq = bpf_map_lookup_elem(&gen_seq, &zero);
	if (!t || !seq)
		return XDP_ABORTED;
	__builtin_memcpy(data, t->bytes, FRAME_LEN);
	port = (__u16)(*seq * 40503);
	*seq += 1;
	((__u8 *)data)[SPORT_OFF] = port >> 8;
	((__u8 *)data)[SPORT_OFF + 1] = port & 0xff;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
