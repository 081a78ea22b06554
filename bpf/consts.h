/* SPDX-License-Identifier: GPL-2.0 */
/* Constants shared by every part of the data plane. Every enum here is part of
 * the ABI with user space: src/carom/abi.py checks its values against the BTF
 * of the compiled object, so names and values can never drift apart. */
#ifndef CAROM_CONSTS_H
#define CAROM_CONSTS_H

/* Default map sizes; the loader overrides them per instance before load. */
#define CAROM_MAX_SERVICES 64
#define CAROM_MAX_REALS 4096
#define CAROM_MAGLEV_SIZE 65537
#define CAROM_MAX_CONNS 65536
#define CAROM_MAX_PERSIST 65536
#define CAROM_MAX_VIPS 256
#define CAROM_MAX_IPV6_EXT_HDRS 4
#define CAROM_MAX_IFINDEX 65536 /* if_macs is an array indexed by ifindex */
/* vip_filter: one bit per bucket of a 16-bit fold of the destination address
 * (see vip_filter.h); 65536 bits in 1024 words. */
#define CAROM_VIP_FILTER_BITS 65536
#define CAROM_VIP_FILTER_WORDS (CAROM_VIP_FILTER_BITS / 64)
/* pending: slots per CPU (a power of two: the slot is flow_hash & (slots - 1)). */
#define CAROM_PENDING_SLOTS 16384
/* node_cfg.peer_macs: MACs of the other directors of the cluster. */
#define CAROM_MAX_PEER_MACS 4
/* real_down: one bit per (service, real id); default rows of CAROM_MAX_REALS bits. */
#define CAROM_REAL_DOWN_WORDS (CAROM_MAX_SERVICES * CAROM_MAX_REALS / 64)
/* conn_events ring buffer: default size in bytes (a power of two, a multiple of
 * the page size); the loader sets it from limits.conn_events_bytes. */
#define CAROM_CONN_EVENTS_BYTES (4 << 20)
/* trace_events ring buffer (trace.h): fixed, not a limit. Its size bounds what a
 * running `carom trace` can cost the daemon, which drains it ten times a second:
 * at most ~630 records (208 bytes each with the ring's header) per drain. */
#define CAROM_TRACE_EVENTS_BYTES (128 << 10)
/* Bytes of the frame a trace record carries (as the frame leaves the program). */
#define CAROM_TRACE_SNAP 128
/* trace_event.svc_id of a decision taken before its service was known. */
#define CAROM_TRACE_NO_SVC 0xffffffff

/* Address family tag carried in keys (not AF_* numbers, to stay compact). */
enum carom_family {
	CAROM_FAMILY_IPV4 = 4,
	CAROM_FAMILY_IPV6 = 6,
};

/* Role of this node (node_cfg.role). A backup never schedules VIP traffic; an
 * active node schedules only while its daemon's lease runs (lease.h). A node
 * that may not schedule holds back frames of flows it cannot place (hold.h). */
enum carom_role {
	CAROM_ROLE_ACTIVE = 0,
	CAROM_ROLE_BACKUP = 1,    /* some director is known to be active */
	CAROM_ROLE_UNDECIDED = 2, /* a cluster node starting: no active director known yet */
};

/* node_cfg.flags */
enum carom_cfg_flags {
	CAROM_CFG_FRAG_PASS = 1, /* pass fragments to a VIP to the local stack instead of dropping */
};

/* svc_info.flags */
enum carom_svc_flags {
	CAROM_SVC_PERSIST = 1,   /* client-IP persistence (IPVS -p) */
	CAROM_SVC_REAL_DOWN = 2, /* some real's flows must move: consult real_down (real_state.h) */
};

/* vip_info.flags: which protocols have an all-ports service on the VIP, so the
 * (VIP, proto, 0) lookup is made only where it can succeed. */
enum carom_vip_flags {
	CAROM_VIP_ALL_PORTS_TCP = 1,
	CAROM_VIP_ALL_PORTS_UDP = 2,
};

/* real_info.flags */
enum carom_real_flags {
	CAROM_REAL_LOCAL = 1,    /* this node itself: deliver to the local stack */
	CAROM_REAL_UNUSABLE = 2, /* no resolved MAC: never forward, reschedule its flows */
};

/* real_info.method: how a packet reaches the real server. */
enum carom_method {
	CAROM_METHOD_DSR = 0,
	CAROM_METHOD_NAT = 1,    /* reserved */
	CAROM_METHOD_TUNNEL = 2, /* reserved */
};

/* conn_val.flags */
enum carom_conn_flags {
	CAROM_CONN_SYNCED = 1, /* entry learned from a peer director (reserved) */
};

/* conn_event.kind (conn_events.h) */
enum carom_conn_event_kind {
	CAROM_CONN_EVENT_NEW = 1,     /* an entry entered conn_table (the flow was confirmed) */
	CAROM_CONN_EVENT_REPOINT = 2, /* an entry was rescheduled in place (SYN, idle, real gone or down) */
};

/* Index into the per-CPU `stats` map. Every packet increments exactly one
 * verdict-reason counter (it is counted once); CAROM_CNT_RX is not incremented
 * by the program: user space derives it as the sum of the reasons (abi.py).
 * Scheduling counters are extra detail. */
enum carom_counter {
	CAROM_CNT_RX = 0, /* derived by user space: sum of the verdict reasons */
	/* pass: not our business */
	CAROM_CNT_PASS_NOT_IP = 1,
	CAROM_CNT_PASS_NOT_VIP = 2,
	CAROM_CNT_PASS_NO_SERVICE = 3,
	CAROM_CNT_PASS_OTHER_PROTO = 4,
	CAROM_CNT_PASS_BACKUP = 5,
	CAROM_CNT_PASS_FRAGMENT = 6,
	CAROM_CNT_PASS_LOCAL_REAL = 7,
	/* forwarded */
	CAROM_CNT_TX_DSR = 8,
	/* drops: malformed input */
	CAROM_CNT_DROP_SHORT_ETH = 9,
	CAROM_CNT_DROP_TRUNC_L3 = 10,
	CAROM_CNT_DROP_BAD_L3 = 11,
	CAROM_CNT_DROP_BAD_IHL = 12,
	CAROM_CNT_DROP_TRUNC_L4 = 13,
	CAROM_CNT_DROP_BAD_L4 = 14,
	CAROM_CNT_DROP_IPV6_EXT = 15,
	/* drops: policy and state */
	CAROM_CNT_DROP_FRAGMENT = 16,
	CAROM_CNT_DROP_NO_REAL = 17,
	CAROM_CNT_DROP_LOOP = 18,
	CAROM_CNT_DROP_GROUP_MAC = 19,
	CAROM_CNT_DROP_UNSUPPORTED = 20,
	/* scheduling detail (not verdicts) */
	CAROM_CNT_CONN_HIT = 21,
	CAROM_CNT_PERSIST_HIT = 22,
	CAROM_CNT_NEW_FLOW = 23,
	CAROM_CNT_SYN_RESCHEDULE = 24,
	CAROM_CNT_CONN_EXPIRED = 25,
	CAROM_CNT_CONN_REAL_GONE = 26,
	/* pass: VIP ownership and frame addressing (arp_responder.h, ifmac.h, icmp.h) */
	CAROM_CNT_PASS_NOT_OUR_MAC = 27,     /* unicast to another MAC (promiscuous, flooding) */
	CAROM_CNT_PASS_NO_IF_MAC = 28,       /* receiving interface not in if_macs */
	CAROM_CNT_PASS_NEIGH_INACTIVE = 29,  /* ARP/NS for a VIP: not active or lease expired */
	CAROM_CNT_PASS_NEIGH_IGNORED = 30,   /* ARP/NS for a VIP we must not answer (DAD, probe, malformed) */
	CAROM_CNT_PASS_ICMP_UNMATCHED = 31,  /* ICMP error to a VIP quoting no VIP flow */
	/* transmitted: answers and forwarded errors */
	CAROM_CNT_TX_ARP_REPLY = 32,
	CAROM_CNT_TX_ND_ADVERT = 33,
	CAROM_CNT_TX_ICMP_ERROR = 34,        /* ICMP error forwarded (DSR) to the quoted flow's real */
	CAROM_CNT_CONN_CONFIRMED = 35, /* a flow's second packet moved it from pending to conn_table */
	/* pass: not allowed to schedule (lease.h) */
	CAROM_CNT_PASS_LEASE_EXPIRED = 36,  /* active, but the daemon's lease ran out */
	CAROM_CNT_PASS_PEER_DIRECTOR = 37,  /* from a peer director's MAC: scheduled there already */
	/* detail (conn_events.h) */
	CAROM_CNT_CONN_EVENTS_DROPPED = 38, /* conn_events full: a NEW/REPOINT event was lost */
	CAROM_CNT_CONN_REAL_DOWN = 39,      /* entry's real down for its service: rescheduled */
	/* detail (trace.h): only while `carom trace` runs */
	CAROM_CNT_TRACE_SAMPLED = 40, /* a decision written to trace_events */
	CAROM_CNT_TRACE_DROPPED = 41, /* trace_events full: a sampled decision was lost */
	/* drop: not allowed to schedule, and the local stack would reset it (hold.h) */
	CAROM_CNT_DROP_AWAIT_ACTIVE = 42,
	CAROM_CNT__MAX = 43,
};

#endif
