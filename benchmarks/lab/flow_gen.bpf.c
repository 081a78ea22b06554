// SPDX-License-Identifier: GPL-2.0
/* The sync benchmark's new-flow generator (benchmarks/cluster_sync_e2e.py), run
 * like xdp_gen.bpf.c by BPF_PROG_TEST_RUN in live-frames mode, so its frames
 * reach the director's veth end as XDP frames (XDP_TX in live-frames mode is a
 * redirect out of the context's interface).
 *
 * Unlike xdp_gen it paces itself and makes every frame a step of a new flow:
 * frame k belongs to flow k/2 (its first packet when k is even, its second
 * when odd: the director enters a flow into conn_table, and emits its NEW
 * event, on the second packet). Even flows are TCP (SYN, then ACK), odd flows
 * UDP (two datagrams). Each flow has its own client address (base + flow), so
 * no tuple repeats within a run, nor across runs given distinct bases.
 *
 * Pacing: frame k is due at t0 + k * interval; a run that is not due yet
 * returns XDP_DROP (the page goes straight back to the pool) and is counted as
 * a spin. A generator that fell behind (descheduled) by more than MAX_LAG_NS
 * moves its schedule forward instead of sending a burst the veth ring could not
 * hold; the lateness is counted, so user space reports the rate it achieved. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define FRAME_LEN 60
#define IP_OFF 14
#define SRC_OFF (IP_OFF + 12)
#define TCP_FLAGS_OFF (IP_OFF + 20 + 13)
#define MAX_LAG_NS 100000ULL /* at 400k frames/s: 40 frames of catch-up at most */
/* Every STAMP_EVERY-th flow (odd: TCP and UDP in turn) has the time its first
 * packet left recorded in gen_stamp[flow / STAMP_EVERY], for the sync lag. */
#define STAMP_EVERY 255
#define STAMP_SLOTS 8192

struct gen_cfg {
	__u64 interval_ps; /* between two frames, picoseconds */
	__u64 frames;      /* frames to send (two per flow) */
	__u32 base;        /* first flow's client address, host order */
	__u32 pad;
	__u8 tmpl[2][FRAME_LEN]; /* [0] TCP SYN, [1] UDP; client address 0 */
};

struct gen_state {
	__u64 t0;        /* ktime of the first run */
	__u64 sent;      /* frames sent */
	__u64 last_ns;   /* ktime of the last frame sent */
	__u64 spins;     /* runs that were not due */
	__u64 late;      /* times the schedule moved forward */
	__u64 late_ns;   /* by how much, in all */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STAMP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} gen_stamp SEC(".maps");

/* One CPU runs the generator (user space pins it): a plain array is enough. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} gen_state SEC(".maps");

static __always_inline __u16 ip_csum(const __u8 *ip)
{
	__u32 sum = 0;
	int i;

#pragma unroll
	for (i = 0; i < 20; i += 2)
		if (i != 10)
			sum += ((__u32)ip[i] << 8) | ip[i + 1];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

SEC("xdp")
int carom_flow_gen(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct gen_state *st;
	struct gen_cfg *cfg;
	__u64 now, due, flow;
	__u32 zero = 0, addr;
	__u16 csum;

	if ((void *)(data + FRAME_LEN) > end)
		return XDP_ABORTED;
	cfg = bpf_map_lookup_elem(&gen_cfg, &zero);
	st = bpf_map_lookup_elem(&gen_state, &zero);
	if (!cfg || !st)
		return XDP_ABORTED;
	if (st->sent >= cfg->frames)
		return XDP_DROP;
	now = bpf_ktime_get_ns();
	if (!st->t0)
		st->t0 = now;
	due = st->t0 + st->sent * cfg->interval_ps / 1000;
	if (now < due) {
		st->spins++;
		return XDP_DROP;
	}
	if (now - due > MAX_LAG_NS) {
		st->late++;
		st->late_ns += now - due;
		st->t0 += now - due;
	}
	flow = st->sent >> 1;
	if (flow & 1)
		__builtin_memcpy(data, cfg->tmpl[1], FRAME_LEN);
	else
		__builtin_memcpy(data, cfg->tmpl[0], FRAME_LEN);
	addr = cfg->base + (__u32)flow;
	data[SRC_OFF] = addr >> 24;
	data[SRC_OFF + 1] = addr >> 16;
	data[SRC_OFF + 2] = addr >> 8;
	data[SRC_OFF + 3] = addr;
	csum = ip_csum(data + IP_OFF);
	data[IP_OFF + 10] = csum >> 8;
	data[IP_OFF + 11] = csum & 0xff;
	if ((st->sent & 1) && !(flow & 1))
		data[TCP_FLAGS_OFF] = 0x10; /* the TCP flow's second packet: ACK */
	if (!(st->sent & 1) && flow % STAMP_EVERY == 0) {
		__u32 slot = flow / STAMP_EVERY;
		__u64 *stamp = slot < STAMP_SLOTS ? bpf_map_lookup_elem(&gen_stamp, &slot) : 0;

		if (stamp)
			*stamp = now;
	}
	st->sent++;
	st->last_ns = now;
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
