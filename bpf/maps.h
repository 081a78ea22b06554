/* SPDX-License-Identifier: GPL-2.0 */
/* Every map of the data plane. docs/datapath.md documents each one: key, value,
 * writer and reader. max_entries here are defaults; the loader resizes the maps
 * per instance before load, and pins them so a restarted daemon adopts them. */
#ifndef CAROM_MAPS_H
#define CAROM_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "structs.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_cfg);
} node_cfg SEC(".maps");

/* lease[0]: CLOCK_MONOTONIC deadline in ns renewed by the daemon's ownership
 * task; the node answers ARP/NDP for the VIPs and schedules only before it (0:
 * never; lease.h). A map of its own, so the lease writer and the reconciler
 * (node_cfg) never race each other. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lease SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CAROM_MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, struct vip_info);
} vip_addrs SEC(".maps");

/* A bit per bucket of destination addresses (vip_filter.h): clear means "no VIP
 * here", so non-VIP traffic is passed after one array read, without hashing. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CAROM_VIP_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} vip_filter SEC(".maps");

/* The coarse clock (clock.h): one cached reading per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock_cache);
} clock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CAROM_MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_info);
} services SEC(".maps");

/* One row of maglev_size slots per service id; slot value is a real id, 0 = empty.
 * Memory-mapped by the daemon (BPF_F_MMAPABLE): it writes rows as plain stores
 * instead of one syscall element copy per slot (268M slots at 4096 services). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, CAROM_MAX_SERVICES * CAROM_MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CAROM_MAX_REALS);
	__type(key, __u32);
	__type(value, struct real_info);
} reals SEC(".maps");

/* MAC of every remote real server: a new flow arriving from one is a loop. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CAROM_MAX_REALS);
	__type(key, struct mac_key);
	__type(value, __u32);
} real_macs SEC(".maps");

/* Own MAC of every interface the program is attached to: the source of ARP/NDP
 * answers, and the only destination MAC whose VIP frames are forwarded. An array
 * indexed by ifindex: the verifier inlines its lookup, which costs a few ns on
 * every forwarded packet where a hash lookup cost ~30 (512 KiB of memory). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CAROM_MAX_IFINDEX);
	__type(key, __u32);
	__type(value, struct if_mac);
} if_macs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CAROM_MAX_CONNS);
	__type(key, struct flow_key);
	__type(value, struct conn_val);
} conn_table SEC(".maps");

/* Per (service, real id) "down, move its flows" bits (real_state.h): word
 * svc_id * node_cfg.real_down_words + real_id / 64, bit real_id % 64. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CAROM_REAL_DOWN_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} real_down SEC(".maps");

/* Flows seen once (sched.h). A direct-mapped cache per CPU: writing a slot is a
 * store, not an LRU insert, and a flood of one-packet flows (spoofed SYNs) only
 * overwrites other one-packet flows, never an established flow in conn_table. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CAROM_PENDING_SLOTS);
	__type(key, __u32);
	__type(value, struct pending_conn);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CAROM_MAX_PERSIST);
	__type(key, struct persist_key);
	__type(value, struct persist_val);
} persist_table SEC(".maps");

/* NEW and REPOINT records of conn_table entries, for connection sync
 * (conn_events.h); read by the daemon (src/carom/cluster/events.py). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CAROM_CONN_EVENTS_BYTES);
} conn_events SEC(".maps");

/* Sampled decisions while `carom trace` runs (trace.h); read by the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CAROM_TRACE_EVENTS_BYTES);
} trace_events SEC(".maps");

/* trace_state[0], per CPU: decisions still to skip before the next sample. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} trace_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CAROM_CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CAROM_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct traffic_counter);
} svc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CAROM_MAX_REALS);
	__type(key, __u32);
	__type(value, struct traffic_counter);
} real_stats SEC(".maps");

#endif
