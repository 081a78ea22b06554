"""Layouts and numbers shared with the C data plane (bpf/structs.h, bpf/consts.h).

These definitions are written once here and *checked* against the BTF of the
compiled object (carom.bpf.btfcheck), at load time and in the tests, so the C
and Python sides can never drift apart silently (Katran's hand-kept copies did).
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import ClassVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Family(enum.IntEnum):
    """enum carom_family: the family tag carried inside keys."""

    IPV4 = 4
    IPV6 = 6


class Role(enum.IntEnum):
    """enum carom_role: node_cfg.role."""

    ACTIVE = 0
    BACKUP = 1  # some director is known to be active
    UNDECIDED = 2  # a cluster node starting, no active director known yet (bpf/hold.h)


class CfgFlags(enum.IntFlag):
    """enum carom_cfg_flags: node_cfg.flags."""

    FRAG_PASS = 1


class SvcFlags(enum.IntFlag):
    """enum carom_svc_flags: svc_info.flags."""

    PERSIST = 1
    REAL_DOWN = 2  # some real's flows must move: consult real_down


class VipFlags(enum.IntFlag):
    """enum carom_vip_flags: vip_info.flags (protocols with an all-ports service)."""

    ALL_PORTS_TCP = 1
    ALL_PORTS_UDP = 2


class RealFlags(enum.IntFlag):
    """enum carom_real_flags: real_info.flags."""

    LOCAL = 1
    UNUSABLE = 2


class Method(enum.IntEnum):
    """enum carom_method: real_info.method."""

    DSR = 0
    NAT = 1
    TUNNEL = 2


class ConnFlags(enum.IntFlag):
    """enum carom_conn_flags: conn_val.flags."""

    SYNCED = 1


class ConnEventKind(enum.IntEnum):
    """enum carom_conn_event_kind: conn_event.kind."""

    NEW = 1  # an entry entered conn_table (the flow was confirmed)
    REPOINT = 2  # an entry was rescheduled in place (SYN, idle, real gone or down)


class Counter(enum.IntEnum):
    """enum carom_counter: indices of the per-CPU `stats` map. The program counts
    each packet once, under its verdict's reason; RX is derived (with_rx)."""

    RX = 0
    PASS_NOT_IP = 1
    PASS_NOT_VIP = 2
    PASS_NO_SERVICE = 3
    PASS_OTHER_PROTO = 4
    PASS_BACKUP = 5
    PASS_FRAGMENT = 6
    PASS_LOCAL_REAL = 7
    TX_DSR = 8
    DROP_SHORT_ETH = 9
    DROP_TRUNC_L3 = 10
    DROP_BAD_L3 = 11
    DROP_BAD_IHL = 12
    DROP_TRUNC_L4 = 13
    DROP_BAD_L4 = 14
    DROP_IPV6_EXT = 15
    DROP_FRAGMENT = 16
    DROP_NO_REAL = 17
    DROP_LOOP = 18
    DROP_GROUP_MAC = 19
    DROP_UNSUPPORTED = 20
    CONN_HIT = 21
    PERSIST_HIT = 22
    NEW_FLOW = 23
    SYN_RESCHEDULE = 24
    CONN_EXPIRED = 25
    CONN_REAL_GONE = 26
    PASS_NOT_OUR_MAC = 27
    PASS_NO_IF_MAC = 28
    PASS_NEIGH_INACTIVE = 29
    PASS_NEIGH_IGNORED = 30
    PASS_ICMP_UNMATCHED = 31
    TX_ARP_REPLY = 32
    TX_ND_ADVERT = 33
    TX_ICMP_ERROR = 34
    CONN_CONFIRMED = 35
    PASS_LEASE_EXPIRED = 36
    PASS_PEER_DIRECTOR = 37
    CONN_EVENTS_DROPPED = 38
    CONN_REAL_DOWN = 39
    TRACE_SAMPLED = 40
    TRACE_DROPPED = 41
    DROP_AWAIT_ACTIVE = 42  # not allowed to schedule, the stack would reset it (bpf/hold.h)


COUNTER_MAX = 43  # CAROM_CNT__MAX


class Verdict(enum.IntEnum):
    """XDP return codes (linux/bpf.h enum xdp_action)."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


def verdict_of(reason: Counter) -> Verdict:
    """The verdict a reason counter stands for (mirrors finish() in bpf/stats.h)."""
    if (
        reason <= Counter.PASS_LOCAL_REAL
        or Counter.PASS_NOT_OUR_MAC <= reason <= Counter.PASS_ICMP_UNMATCHED
        or Counter.PASS_LEASE_EXPIRED <= reason <= Counter.PASS_PEER_DIRECTOR
    ):
        return Verdict.PASS
    if reason == Counter.TX_DSR or Counter.TX_ARP_REPLY <= reason <= Counter.TX_ICMP_ERROR:
        return Verdict.TX
    return Verdict.DROP


# Scheduling detail: counted on top of a packet's reason. Every other counter but
# RX is a verdict reason (listed by exclusion, so a new reason is one by default).
DETAIL_COUNTERS = frozenset(
    {
        Counter.CONN_HIT,
        Counter.PERSIST_HIT,
        Counter.NEW_FLOW,
        Counter.SYN_RESCHEDULE,
        Counter.CONN_EXPIRED,
        Counter.CONN_REAL_GONE,
        Counter.CONN_CONFIRMED,
        Counter.CONN_EVENTS_DROPPED,
        Counter.CONN_REAL_DOWN,
        Counter.TRACE_SAMPLED,
        Counter.TRACE_DROPPED,
    }
)
VERDICT_REASONS = frozenset(Counter) - DETAIL_COUNTERS - {Counter.RX}


def with_rx(counts: dict[Counter, int]) -> dict[Counter, int]:
    """Counter totals as read from `stats`, with RX filled in: the program does not
    count it (one increment per packet is cheaper), every packet has one reason."""
    out: dict[Counter, int] = {c: n for c, n in counts.items() if c != Counter.RX}
    rx = sum(n for c, n in out.items() if c in VERDICT_REASONS)
    if rx:
        out[Counter.RX] = rx
    return out


# Enums checked against BTF: C enum name -> (Python enum, prefix of C constants).
ENUMS: dict[str, tuple[type[enum.IntEnum] | type[enum.IntFlag], str]] = {
    "carom_family": (Family, "CAROM_FAMILY_"),
    "carom_role": (Role, "CAROM_ROLE_"),
    "carom_cfg_flags": (CfgFlags, "CAROM_CFG_"),
    "carom_vip_flags": (VipFlags, "CAROM_VIP_"),
    "carom_svc_flags": (SvcFlags, "CAROM_SVC_"),
    "carom_real_flags": (RealFlags, "CAROM_REAL_"),
    "carom_method": (Method, "CAROM_METHOD_"),
    "carom_conn_flags": (ConnFlags, "CAROM_CONN_"),
    "carom_conn_event_kind": (ConnEventKind, "CAROM_CONN_EVENT_"),
    "carom_counter": (Counter, "CAROM_CNT_"),
}


class Struct(ctypes.Structure):
    """Base for map keys and values: byte conversion and keyword construction."""

    _c_name_: ClassVar[str] = ""

    def to_bytes(self) -> bytes:
        return bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Struct:
        return cls.from_buffer_copy(data[: ctypes.sizeof(cls)])

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name, *_ in self._fields_)
        return f"{type(self).__name__}({fields})"


class Addr(Struct):
    """struct carom_addr: IPv4 in w[0], network byte order."""

    _c_name_ = "carom_addr"
    _fields_ = [("w", ctypes.c_uint32 * 4)]

    @classmethod
    def of(cls, address: IPAddress) -> Addr:
        raw = address.packed.ljust(16, b"\0")
        return cls.from_buffer_copy(raw)

    def to_ip(self, family: int) -> IPAddress:
        raw = bytes(self)
        if family == Family.IPV4:
            return ipaddress.IPv4Address(raw[:4])
        return ipaddress.IPv6Address(raw)

    def __repr__(self) -> str:
        raw = bytes(self)
        if raw[4:] == bytes(12):
            return f"Addr({socket.inet_ntop(socket.AF_INET, raw[:4])})"
        return f"Addr({socket.inet_ntop(socket.AF_INET6, raw)})"


class SvcKey(Struct):
    _c_name_ = "svc_key"
    _fields_ = [
        ("vip", Addr),
        ("port", ctypes.c_uint16),  # network byte order, 0 = all ports
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
    ]


class SvcInfo(Struct):
    _c_name_ = "svc_info"
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("persist_timeout_s", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class VipKey(Struct):
    _c_name_ = "vip_key"
    _fields_ = [("addr", Addr), ("family", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


class VipInfo(Struct):
    _c_name_ = "vip_info"
    _fields_ = [("services", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class ClockCache(Struct):
    _c_name_ = "clock_cache"
    _fields_ = [("jiffies", ctypes.c_uint64), ("ns", ctypes.c_uint64)]


class RealInfo(Struct):
    _c_name_ = "real_info"
    _fields_ = [
        ("addr", Addr),
        ("mac", ctypes.c_uint8 * 6),
        ("family", ctypes.c_uint8),
        ("method", ctypes.c_uint8),
        ("flags", ctypes.c_uint32),
    ]


class MacKey(Struct):
    _c_name_ = "mac_key"
    _fields_ = [("mac", ctypes.c_uint8 * 6), ("pad", ctypes.c_uint8 * 2)]


class FlowKey(Struct):
    _c_name_ = "flow_key"
    _fields_ = [
        ("src", Addr),
        ("dst", Addr),
        ("sport", ctypes.c_uint16),  # network byte order
        ("dport", ctypes.c_uint16),  # network byte order
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class ConnVal(Struct):
    _c_name_ = "conn_val"
    _fields_ = [
        ("real_id", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
        ("ttl", ctypes.c_uint8),  # of the flow's first packet; 0 = unknown (no loop check)
        ("reserved", ctypes.c_uint8),
        ("last_seen_ns", ctypes.c_uint64),
    ]


class PendingConn(Struct):
    _c_name_ = "pending_conn"
    _fields_ = [
        ("key", FlowKey),
        ("real_id", ctypes.c_uint32),  # 0 = empty slot
        ("ttl", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("seen_ns", ctypes.c_uint64),
    ]


class PersistKey(Struct):
    _c_name_ = "persist_key"
    _fields_ = [
        ("client", Addr),
        ("svc_id", ctypes.c_uint32),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class PersistVal(Struct):
    _c_name_ = "persist_val"
    _fields_ = [
        ("real_id", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("last_seen_ns", ctypes.c_uint64),
    ]


MAX_PEER_MACS = 4  # CAROM_MAX_PEER_MACS


class NodeCfg(Struct):
    _c_name_ = "node_cfg"
    _fields_ = [
        ("role", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("maglev_size", ctypes.c_uint32),
        ("trace_one_in", ctypes.c_uint32),  # carom trace: one decision in N; 0 = off
        ("tcp_idle_ns", ctypes.c_uint64),
        ("udp_idle_ns", ctypes.c_uint64),
        ("peer_mac_count", ctypes.c_uint32),  # entries of peer_macs in use
        ("real_down_words", ctypes.c_uint32),  # words per service row of real_down
        ("peer_macs", MacKey * MAX_PEER_MACS),  # VIP frames from these are never scheduled
        # carom trace's filter (bpf/trace.h): an address at either end (family 0:
        # any) and a port at either end (network order; 0: any)
        ("trace_addr", Addr),
        ("trace_family", ctypes.c_uint8),
        ("trace_pad", ctypes.c_uint8),
        ("trace_port", ctypes.c_uint16),
        ("trace_pad2", ctypes.c_uint32),
    ]

    def set_peer_macs(self, macs: Iterable[bytes]) -> None:
        """Fill peer_macs and peer_mac_count (at most MAX_PEER_MACS, 6 bytes each)."""
        macs = [mac_bytes(m) for m in macs]
        if len(macs) > MAX_PEER_MACS:
            raise ValueError(
                f"{len(macs)} peer director MACs; the data plane holds at most {MAX_PEER_MACS}"
            )
        for i in range(MAX_PEER_MACS):
            raw = macs[i] + b"\0\0" if i < len(macs) else bytes(8)
            self.peer_macs[i] = MacKey.from_buffer_copy(raw)
        self.peer_mac_count = len(macs)

    def peer_mac_list(self) -> list[bytes]:
        """The peer directors' MACs in use, 6 bytes each."""
        return [bytes(self.peer_macs[i].mac) for i in range(int(self.peer_mac_count))]


class IfMac(Struct):
    """struct if_mac: an interface's own MAC (value of if_macs, keyed by ifindex)."""

    _c_name_ = "if_mac"
    _fields_ = [
        ("mac", ctypes.c_uint8 * 6),
        ("known", ctypes.c_uint8),  # 1 once written (an array: other slots read as zeros)
        ("pad", ctypes.c_uint8),
    ]

    @classmethod
    def of(cls, mac: bytes) -> IfMac:
        return cls.from_buffer_copy(mac_bytes(mac) + b"\x01\0")


class ConnEventRecord(Struct):
    """struct conn_event: one record of the conn_events ring buffer."""

    _c_name_ = "conn_event"
    _fields_ = [
        ("key", FlowKey),
        ("real_id", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),  # the entry's conn_val.flags
        ("kind", ctypes.c_uint8),  # ConnEventKind
        ("ttl", ctypes.c_uint8),  # the entry's TTL of the flow's first packet
    ]


TRACE_SNAP = 128  # CAROM_TRACE_SNAP: bytes of the frame in a trace record
TRACE_NO_SVC = 0xFFFFFFFF  # CAROM_TRACE_NO_SVC: decided before the service was known


class TraceEvent(Struct):
    """struct trace_event: one record of the trace_events ring buffer."""

    _c_name_ = "trace_event"
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),  # CLOCK_MONOTONIC
        ("key", FlowKey),  # the tuple (ports 0 when the frame has none)
        ("svc_id", ctypes.c_uint32),  # TRACE_NO_SVC until the service was found
        ("real_id", ctypes.c_uint32),  # 0: none
        ("ifindex", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),  # Counter
        ("len", ctypes.c_uint32),  # the frame's length
        ("caplen", ctypes.c_uint32),  # bytes of it in data
        ("data", ctypes.c_uint8 * TRACE_SNAP),  # as it leaves (after a DSR rewrite)
    ]


class TrafficCounter(Struct):
    _c_name_ = "traffic_counter"
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("new_flows", ctypes.c_uint64),  # Maglev or persistence chose the real
        ("conn_hits", ctypes.c_uint64),  # sent by the flow's conn_table entry
    ]


STRUCTS: tuple[type[Struct], ...] = (
    Addr,
    SvcKey,
    SvcInfo,
    VipKey,
    VipInfo,
    ClockCache,
    RealInfo,
    MacKey,
    FlowKey,
    ConnVal,
    PendingConn,
    PersistKey,
    PersistVal,
    NodeCfg,
    IfMac,
    ConnEventRecord,
    TraceEvent,
    TrafficCounter,
)

# Map name -> (key type, value type). Value type None: a plain __u32 / __u64.
U32 = ctypes.c_uint32
U64 = ctypes.c_uint64
MAPS: dict[str, tuple[type[ctypes._SimpleCData[int]] | type[Struct], object]] = {
    "node_cfg": (U32, NodeCfg),
    "lease": (U32, U64),
    "vip_addrs": (VipKey, VipInfo),
    "vip_filter": (U32, U64),
    "clock": (U32, ClockCache),
    "services": (SvcKey, SvcInfo),
    "maglev": (U32, U32),
    "reals": (U32, RealInfo),
    "real_macs": (MacKey, U32),
    "if_macs": (U32, IfMac),
    "conn_table": (FlowKey, ConnVal),
    "pending": (U32, PendingConn),
    "real_down": (U32, U64),
    "persist_table": (PersistKey, PersistVal),
    "stats": (U32, U64),
    "svc_stats": (U32, TrafficCounter),
    "real_stats": (U32, TrafficCounter),
    "trace_state": (U32, U32),
}


# Ring buffers: no key or value, only a size (limits); read with carom.bpf.ringbuf.
RINGBUFS: dict[str, type[Struct]] = {  # name -> record type
    "conn_events": ConnEventRecord,
    "trace_events": TraceEvent,
}


PROTOCOLS = {"tcp": 6, "udp": 17}  # config names -> IP protocol numbers


def port_be(port: int) -> int:
    """A host-order port as the u16 the maps hold (network byte order)."""
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def port_host(raw: int) -> int:
    """The inverse of port_be."""
    return int.from_bytes(int(raw).to_bytes(2, "little"), "big")


def svc_key(vip: IPAddress, proto: int, port: int) -> SvcKey:
    """services map key; port in host order, 0 = all ports."""
    return SvcKey(vip=Addr.of(vip), port=port_be(port), proto=proto, family=int(family_of(vip)))


def vip_key(vip: IPAddress) -> VipKey:
    return VipKey(addr=Addr.of(vip), family=int(family_of(vip)))


VIP_FILTER_BITS = 65536  # CAROM_VIP_FILTER_BITS
PENDING_SLOTS = 16384  # CAROM_PENDING_SLOTS: per CPU, a power of two


def real_down_words(max_reals: int) -> int:
    """node_cfg.real_down_words: 64-bit words per service row of real_down."""
    return (max_reals + 63) // 64


def real_down_bits(down: Iterable[tuple[int, int]], words_per_row: int) -> dict[int, int]:
    """The non-zero words of real_down for these (service id, real id) pairs
    (bpf/real_state.h: word svc_id * words + real_id / 64, bit real_id % 64)."""
    out: dict[int, int] = {}
    for sid, rid in down:
        word = sid * words_per_row + rid // 64
        out[word] = out.get(word, 0) | (1 << (rid % 64))
    return out


def vip_filter_bit(address: IPAddress) -> int:
    """bpf/vip_filter.h vip_filter_bit: the 16-bit fold of the address words."""
    w = struct.unpack("<4I", bytes(Addr.of(address)))  # the C words, little-endian host
    x = int(w[0] ^ w[1] ^ w[2] ^ w[3])
    x ^= x >> 16
    return x & (VIP_FILTER_BITS - 1)


def vip_filter_words(vips: Iterable[IPAddress]) -> dict[int, int]:
    """The non-zero words of the vip_filter map for this set of VIPs."""
    words: dict[int, int] = {}
    for vip in vips:
        bit = vip_filter_bit(vip)
        words[bit // 64] = words.get(bit // 64, 0) | (1 << (bit % 64))
    return words


def all_ports_flag(proto: int) -> VipFlags:
    """The vip_info flag of an all-ports service of this protocol."""
    return VipFlags.ALL_PORTS_TCP if proto == PROTOCOLS["tcp"] else VipFlags.ALL_PORTS_UDP


def family_of(address: IPAddress) -> Family:
    return Family.IPV4 if address.version == 4 else Family.IPV6


def mac_bytes(mac: str | bytes) -> bytes:
    """'aa:bb:cc:dd:ee:ff' -> 6 bytes (bytes pass through, checked)."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", "")) if isinstance(mac, str) else mac
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
