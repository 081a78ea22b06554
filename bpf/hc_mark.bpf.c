// SPDX-License-Identifier: GPL-2.0
/* Marks the sockets of exec health checks that take the VIP path.
 *
 * The probe namespace (src/carom/health/vip_path.py) sends a packet for a VIP
 * to one real's MAC only when its socket carries that real's mark (SO_MARK,
 * selecting the real's routing table). carom's own probes set the mark; a
 * command run by an exec check cannot. This program, attached to the cgroup
 * carom-hc-<instance> (cgroup/sock_create, inherited by its children), gives
 * every socket made by a process in the child cgroup of one real that real's
 * mark: carom_hc_marks maps the cgroup's id to the mark. A process in any other
 * cgroup is left alone. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);   /* cgroup id (the inode number of its directory) */
	__type(value, __u32); /* the mark (the real's routing table) */
} carom_hc_marks SEC(".maps");

SEC("cgroup/sock_create")
int carom_hc_mark(struct bpf_sock *sk)
{
	__u64 id = bpf_get_current_cgroup_id();
	__u32 *mark = bpf_map_lookup_elem(&carom_hc_marks, &id);

	if (mark)
		sk->mark = *mark;
	return 1; /* always allow the socket */
}

char _license[] SEC("license") = "GPL";
