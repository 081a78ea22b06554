/* SPDX-License-Identifier: GPL-2.0 */
/* Map keys and values. Layouts are checked against src/carom/abi.py through
 * BTF, so keep explicit padding: every byte of a hash key must be defined. */
#ifndef CAROM_STRUCTS_H
#define CAROM_STRUCTS_H

#include <linux/types.h>
#include "consts.h"

/* An IPv4 or IPv6 address: IPv4 in addr[0], the other words zero. Network order. */
struct carom_addr {
	__u32 w[4];
};

/* services: (VIP, port, protocol) -> service. port 0 means "all ports". */
struct svc_key {
	struct carom_addr vip;
	__u16 port;   /* network byte order; 0 = all ports */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;  /* enum carom_family */
};

struct svc_info {
	__u32 id;                 /* index into maglev rows and svc_stats */
	__u32 flags;              /* enum carom_svc_flags */
	__u32 persist_timeout_s;  /* with CAROM_SVC_PERSIST */
	__u32 reserved;
};

/* vip_addrs: every address that carries at least one service. */
struct vip_key {
	struct carom_addr addr;
	__u8 family;
	__u8 pad[3];
};

struct vip_info {
	__u32 services; /* number of services on this address */
	__u32 flags;    /* enum carom_vip_flags */
};

/* reals: real id -> where to send. id 0 is never used ("no real"). */
struct real_info {
	struct carom_addr addr;
	__u8 mac[6];
	__u8 family;
	__u8 method;  /* enum carom_method */
	__u32 flags;  /* enum carom_real_flags */
};

/* real_macs: MAC -> id; node_cfg.peer_macs. */
struct mac_key {
	__u8 mac[6];
	__u8 pad[2];
};

/* conn_table: the 5-tuple as the client sent it -> real. Also the Maglev hash input. */
struct flow_key {
	struct carom_addr src;
	struct carom_addr dst;
	__u16 sport;  /* network byte order */
	__u16 dport;  /* network byte order */
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct conn_val {
	__u32 real_id;
	__u16 flags;        /* enum carom_conn_flags */
	__u8 ttl;           /* TTL / hop limit of the flow's first packet; 0 = unknown */
	__u8 reserved;
	__u64 last_seen_ns; /* coarse_now() of the last packet, refreshed once a second */
};

/* pending[flow_hash % CAROM_PENDING_SLOTS], per CPU: a flow seen once. Its second
 * packet moves it to conn_table (sched.h: SYN-flood resistance, loop guard). */
struct pending_conn {
	struct flow_key key;
	__u32 real_id;      /* 0 = empty slot */
	__u8 ttl;           /* TTL / hop limit of the flow's first packet */
	__u8 pad[3];
	__u64 seen_ns;      /* coarse_now() when written */
};

/* persist_table: (service, client address) -> real, for CAROM_SVC_PERSIST. */
struct persist_key {
	struct carom_addr client;
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
};

struct persist_val {
	__u32 real_id;
	__u32 reserved;
	__u64 last_seen_ns;
};

/* clock[0], per CPU: the coarse clock of clock.h. */
struct clock_cache {
	__u64 jiffies; /* jiffies when `ns` was read */
	__u64 ns;      /* bpf_ktime_get_ns() at that jiffy */
};

/* node_cfg[0]: instance-wide settings written by the daemon. */
struct node_cfg {
	__u32 role;          /* enum carom_role */
	__u32 flags;         /* enum carom_cfg_flags */
	__u32 maglev_size;   /* slots per service row in `maglev` (prime) */
	__u32 trace_one_in;  /* `carom trace`: record one decision in this many (trace.h); 0 = off */
	__u64 tcp_idle_ns;   /* a TCP conn entry idle longer than this is rescheduled */
	__u64 udp_idle_ns;   /* same for UDP */
	__u32 peer_mac_count; /* entries of peer_macs in use (0..CAROM_MAX_PEER_MACS) */
	__u32 real_down_words; /* 64-bit words per service row of real_down (max_reals / 64, up) */
	/* The other directors' MACs: VIP frames from them are passed, never scheduled
	 * (lease.h). Inline, so the check costs no lookup. */
	struct mac_key peer_macs[CAROM_MAX_PEER_MACS];
	/* `carom trace`'s filter, read only while trace_one_in is set (trace.h). */
	struct carom_addr trace_addr; /* only tuples with this address at either end... */
	__u8 trace_family;            /* ...of this family; 0 = any address */
	__u8 trace_pad;
	__u16 trace_port;             /* only tuples with this port at either end (network order); 0 = any */
	__u32 trace_pad2;
};

/* trace_events records (trace.h): one sampled decision while `carom trace` runs. */
struct trace_event {
	__u64 ts_ns;         /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	struct flow_key key; /* the tuple; ports 0 when the frame has none (fragment, ICMP...) */
	__u32 svc_id;        /* CAROM_TRACE_NO_SVC until the service was found */
	__u32 real_id;       /* the real chosen; 0 = none */
	__u32 ifindex;       /* the receiving interface */
	__u32 reason;        /* enum carom_counter: the verdict's reason */
	__u32 len;           /* the frame's length */
	__u32 caplen;        /* bytes of it in data */
	__u8 data[CAROM_TRACE_SNAP]; /* the frame's first bytes as it leaves (after a DSR rewrite) */
};

/* conn_events records (conn_events.h): a conn_table entry created or re-pointed. */
struct conn_event {
	struct flow_key key; /* the entry's key */
	__u32 real_id;       /* the real it points to now */
	__u16 flags;         /* the entry's conn_val.flags */
	__u8 kind;           /* enum carom_conn_event_kind */
	__u8 ttl;            /* the entry's TTL of the flow's first packet */
};

/* if_macs: ifindex -> that interface's own MAC, written when XDP is attached. */
struct if_mac {
	__u8 mac[6];
	__u8 known; /* 1 once written: array slots of other interfaces read as zeros */
	__u8 pad;
};

/* svc_stats and real_stats values (per CPU). */
struct traffic_counter {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows; /* packets that started a flow here: Maglev or persistence chose the real */
	__u64 conn_hits; /* packets sent by their conn_table entry */
};

#endif
