"""The shared packet-case table: one list of frames with their state and the
expected verdict, output frame and counters, run against the reference model
and against the compiled program (BPF_PROG_TEST_RUN) alike."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mmh3
import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Ether

from carom import abi
from carom.abi import Counter as C
from carom.model.forward import LOOPBACK_IFINDEX
from carom.model.state import Node, Real, Service, State

MAGLEV_SIZE = 1021
DIRECTOR_MAC = "02:ca:00:00:00:01"
ROUTER_MAC = "02:ca:00:00:00:fe"
CLIENT = "198.51.100.10"
CLIENT6 = "2001:db8:1::10"
VIP = "192.0.2.100"
VIP_ALL_PORTS = "192.0.2.101"
VIP_PERSIST = "192.0.2.102"
VIP_LOCAL = "192.0.2.103"
VIP_EMPTY = "192.0.2.104"
VIP_MULTI = "192.0.2.105"  # a multi-port service: ports [25, 110, 143, 389, "5222-5223"]
MULTI_PORTS = (25, 110, 143, 389, 5222, 5223)
VIP6 = "2001:db8:2::100"
IP = IP  # re-exported for the fuzz tests
# Not a VIP, but its vip_filter bit is VIP's (xor the same bits into the first and
# third bytes: the 16-bit fold of vip_filter.h cannot tell the two apart).
FILTER_TWIN = "193.0.3.100"
assert abi.vip_filter_bit(ipaddress.ip_address(FILTER_TWIN)) == abi.vip_filter_bit(
    ipaddress.ip_address(VIP)
)

REALS = {
    1: ("192.0.2.11", "02:00:00:00:00:11"),
    2: ("192.0.2.12", "02:00:00:00:00:12"),
    3: ("192.0.2.13", "02:00:00:00:00:13"),
    4: ("2001:db8:2::11", "02:00:00:00:06:11"),
    5: ("2001:db8:2::12", "02:00:00:00:06:12"),
    6: ("192.0.2.2", "02:ca:00:00:00:01"),  # this director itself
}


def table_of(ids: list[int]) -> np.ndarray:
    """A Maglev row for these reals (equal weights)."""
    from carom.sched.maglev import MaglevReal, build_table, canonical_order

    if not ids:
        return np.zeros(MAGLEV_SIZE, dtype=np.uint32)
    reals = [MaglevReal(key=i.to_bytes(4, "big"), weight=1) for i in ids]
    order = canonical_order(reals)
    positions = build_table(reals, MAGLEV_SIZE)
    lookup = np.array([int.from_bytes(r.key, "big") for r in order], dtype=np.uint32)
    return lookup[positions]


def base_state() -> State:
    """Services and reals every case starts from."""
    reals = {
        rid: Real(rid, ipaddress.ip_address(a), mac=abi.mac_bytes(m), local=(rid == 6))
        for rid, (a, m) in REALS.items()
    }
    ip = ipaddress.ip_address
    return State(
        # a lease that never runs out; neighbour cases set their own
        node=Node(maglev_size=MAGLEV_SIZE, lease_until_ns=2**64 - 1),
        if_macs={LOOPBACK_IFINDEX: abi.mac_bytes(DIRECTOR_MAC)},
        reals=reals,
        services=[
            Service(vip=ip(VIP), proto=6, port=80, svc_id=0, table=table_of([1, 2, 3])),
            Service(vip=ip(VIP), proto=17, port=53, svc_id=1, table=table_of([1, 2])),
            Service(vip=ip(VIP6), proto=6, port=80, svc_id=2, table=table_of([4, 5])),
            Service(vip=ip(VIP_ALL_PORTS), proto=6, port=0, svc_id=3, table=table_of([1, 2, 3])),
            Service(
                vip=ip(VIP_PERSIST),
                proto=6,
                port=443,
                svc_id=4,
                table=table_of([1, 2, 3]),
                persist_timeout_s=300,
            ),
            Service(vip=ip(VIP_LOCAL), proto=6, port=80, svc_id=5, table=table_of([6])),
            Service(vip=ip(VIP_EMPTY), proto=6, port=80, svc_id=6, table=table_of([])),
            Service(
                vip=ip(VIP_MULTI),
                proto=6,
                port=MULTI_PORTS[0],
                more_ports=MULTI_PORTS[1:],
                svc_id=7,
                table=table_of([1, 2, 3]),
                persist_timeout_s=300,
            ),
        ],
    )


def eth(src: str = ROUTER_MAC, dst: str = DIRECTOR_MAC, **kw: object) -> Ether:
    return Ether(src=src, dst=dst, **kw)


def tcp4(
    dst: str = VIP,
    dport: int = 80,
    flags: str = "S",
    sport: int = 40000,
    src: str = CLIENT,
    payload: bytes = b"",
) -> bytes:
    return bytes(
        eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / payload
    )


def flow_key(frame: bytes) -> bytes:
    """The conn_table key of an Ethernet/IP/TCP-or-UDP frame, built independently of
    the model (scapy decodes, we pack)."""
    pkt = Ether(frame)
    l3 = pkt[IP] if IP in pkt else pkt[IPv6]
    fam = 4 if IP in pkt else 6
    l4 = l3[TCP] if TCP in l3 else l3[UDP]
    addr = lambda a: ipaddress.ip_address(a).packed.ljust(16, b"\0")  # noqa: E731
    return (
        addr(l3.src)
        + addr(l3.dst)
        + l4.sport.to_bytes(2, "big")
        + l4.dport.to_bytes(2, "big")
        + bytes([6 if TCP in l3 else 17, fam, 0, 0])
    )


def maglev_real(state: State, svc_id: int, key: bytes) -> int:
    """Expected real of a new flow: slot = murmur3(key) % size in the service's row,
    with the reference murmur3 (mmh3), not carom's own hash."""
    svc = next(s for s in state.services if s.svc_id == svc_id)
    h = mmh3.hash(key, 0x63A70B1D, signed=False)
    return int(svc.table[h % len(svc.table)])


def persist_key(client: str, svc_id: int, fam: int = 4) -> bytes:
    return (
        ipaddress.ip_address(client).packed.ljust(16, b"\0")
        + svc_id.to_bytes(4, "little")
        + bytes([fam, 0, 0, 0])
    )


Setup = Callable[[State, int], None]


def _noop(state: State, now: int) -> None:
    pass


@dataclass(frozen=True)
class PacketCase:
    name: str
    frame: bytes
    reason: C  # the verdict's reason counter (the verdict follows from it)
    setup: Setup = _noop  # changes to base_state() before the run; gets "now"
    real: int | str | None = None  # expected real id, or "maglev"/"maglev-client" to compute
    svc_id: int | None = None  # service the frame belongs to (for maglev and traffic counters)
    extra: dict[C, int] = field(default_factory=dict)  # scheduling counters expected
    conn_created: bool | None = None  # expect a conn entry for the flow afterwards
    pending_created: bool | None = None  # expect the flow in its pending slot afterwards
    refreshed: bool | None = None  # expect the entry's last_seen set to the run's time
    kernel: bool = True  # False: the kernel refuses the frame before XDP (documented)
    out: bytes | None = None  # expected frame of an answer (ARP/NDP), built independently
    note: str = ""

    @property
    def verdict(self) -> abi.Verdict:
        return abi.verdict_of(self.reason)


def ttl_of(frame: bytes) -> int:
    """IPv4 TTL or IPv6 hop limit of an Ethernet frame (scapy decodes)."""
    pkt = Ether(frame)
    return int(pkt[IP].ttl) if IP in pkt else int(pkt[IPv6].hlim)


def _conn(frame: bytes, real_id: int, age_s: float = 0.1, ttl: int = 64) -> Setup:
    def setup(state: State, now: int) -> None:
        state.conns[flow_key(frame)] = abi.ConnVal(
            real_id=real_id, ttl=ttl, last_seen_ns=now - int(age_s * 1e9)
        )

    return setup


def pending_slot(frame: bytes) -> int:
    """The flow's pending slot: reference murmur3 of its key, masked."""
    return mmh3.hash(flow_key(frame), 0x63A70B1D, signed=False) & (abi.PENDING_SLOTS - 1)


def _pending(frame: bytes, real_id: int, age_s: float = 0.1, ttl: int = 64) -> Setup:
    """The flow's first packet went to real_id (it sits in the pending cache)."""

    def setup(state: State, now: int) -> None:
        state.pending[pending_slot(frame)] = abi.PendingConn(
            key=abi.FlowKey.from_buffer_copy(flow_key(frame)),
            real_id=real_id,
            ttl=ttl,
            seen_ns=now - int(age_s * 1e9),
        )

    return setup


def _seq(*steps: Setup) -> Setup:
    def setup(state: State, now: int) -> None:
        for s in steps:
            s(state, now)

    return setup


def _drop_real_from_table(real_id: int, svc_id: int = 0) -> Setup:
    def setup(state: State, now: int) -> None:
        svc = next(s for s in state.services if s.svc_id == svc_id)
        others = [r for r in (1, 2, 3) if r != real_id]
        svc.table = table_of(others)

    return setup


def _set_node(**kw: object) -> Setup:
    def setup(state: State, now: int) -> None:
        assert state.node is not None
        for k, v in kw.items():
            setattr(state.node, k, v)

    return setup


def _real_unusable(real_id: int) -> Setup:
    def setup(state: State, now: int) -> None:
        state.reals[real_id].usable = False

    return setup


def _persist(client: str, svc_id: int, real_id: int, age_s: float) -> Setup:
    def setup(state: State, now: int) -> None:
        state.persist[persist_key(client, svc_id)] = abi.PersistVal(
            real_id=real_id, last_seen_ns=now - int(age_s * 1e9)
        )

    return setup


def _raw(data: bytes, head: Ether | None = None) -> bytes:
    return bytes(head if head is not None else eth(type=0x0800)) + data


def _ipv4_bytes(**kw: object) -> bytes:
    return bytes(IP(src=CLIENT, dst=VIP, **kw) / TCP(sport=40000, dport=80, flags="S"))


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


SYN = tcp4()
ACK = tcp4(flags="A", payload=b"GET / HTTP/1.1\r\n\r\n")
UDP4 = bytes(eth() / IP(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=53) / b"query")
TCP6 = bytes(eth(type=0x86DD) / IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S"))
IPV4_OPTIONS = bytes(
    eth()
    / IP(
        src=CLIENT,
        dst=VIP,
        options=[
            IPOption_Router_Alert(),
            IPOption_NOP(),
            IPOption_NOP(),
            IPOption_NOP(),
            IPOption_NOP(),
        ],
    )
    / TCP(sport=40001, dport=80, flags="S")
)
PADDED = SYN + bytes(60 - len(SYN))  # Ethernet minimum frame: padding after the IP packet
# A SYN whose tuple has a stale entry to real 3; the table no longer holds real 3.
ACK_NEW_SET = tcp4(flags="PA", sport=40002, payload=b"more")
SYN_REUSE = tcp4(sport=40003)
LOOPED_VIA_ROUTER = bytes(
    eth() / IP(src=CLIENT, dst=VIP, ttl=62) / TCP(sport=40010, dport=80, flags="PA") / b"x"
)
LOOPED_DIRECT = bytes(
    Ether(src=REALS[3][1], dst=DIRECTOR_MAC)
    / IP(src=CLIENT, dst=VIP, ttl=63)
    / TCP(sport=40011, dport=80, flags="A")
)
LOOPED_SYN = bytes(eth() / IP(src=CLIENT, dst=VIP, ttl=62) / TCP(sport=40012, dport=80, flags="S"))
LOOPED_V6 = bytes(
    eth(type=0x86DD) / IPv6(src=CLIENT6, dst=VIP6, hlim=62) / TCP(sport=40013, dport=80, flags="A")
)
PERSIST_SYN = tcp4(dst=VIP_PERSIST, dport=443, sport=40004)
MULTI_IMAP = tcp4(dst=VIP_MULTI, dport=143, sport=40020)
MULTI_SMTP = tcp4(dst=VIP_MULTI, dport=25, sport=40021)
MULTI_XMPP = tcp4(dst=VIP_MULTI, dport=5223, sport=40022)  # the end of a range
MULTI_GAP = tcp4(dst=VIP_MULTI, dport=5224, sport=40023)  # just past it: not the service


def _not_the_hash_pick(frame: bytes, svc_id: int) -> int:
    """A real of the service that Maglev would not pick for this client, so a
    case that lands on it proves the persistence entry decided."""
    state = base_state()
    key = bytearray(flow_key(frame))
    key[32:36] = bytes(4)  # persistent services hash on the client
    pick = maglev_real(state, svc_id, bytes(key))
    return next(r for r in (1, 2, 3) if r != pick)


ALL_PORTS = tcp4(dst=VIP_ALL_PORTS, dport=8443, sport=40005)
LOCAL = tcp4(dst=VIP_LOCAL, sport=40006)
V6_HBH = bytes(
    eth(type=0x86DD)
    / IPv6(src=CLIENT6, dst=VIP6)
    / IPv6ExtHdrHopByHop()
    / TCP(sport=40007, dport=80, flags="S")
)
V6_ATOMIC_FRAG = bytes(
    eth(type=0x86DD)
    / IPv6(src=CLIENT6, dst=VIP6)
    / IPv6ExtHdrFragment(offset=0, m=0, id=7)
    / TCP(sport=40008, dport=80, flags="S")
)

CASES: list[PacketCase] = [
    # --- forwarding ---
    PacketCase(
        "tcp-syn-new-flow",
        SYN,
        C.TX_DSR,
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "tcp-established-conn-hit",
        ACK,
        C.TX_DSR,
        setup=_conn(ACK, 3),
        real=3,
        svc_id=0,
        extra={C.CONN_HIT: 1},
        conn_created=True,
    ),
    PacketCase(
        "udp-new-flow",
        UDP4,
        C.TX_DSR,
        real="maglev",
        svc_id=1,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "ipv6-tcp-new-flow",
        TCP6,
        C.TX_DSR,
        real="maglev",
        svc_id=2,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "ipv6-hop-by-hop-then-tcp",
        V6_HBH,
        C.TX_DSR,
        real="maglev",
        svc_id=2,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "ipv6-atomic-fragment-is-whole",
        V6_ATOMIC_FRAG,
        C.TX_DSR,
        real="maglev",
        svc_id=2,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "ipv4-with-options",
        IPV4_OPTIONS,
        C.TX_DSR,
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "ethernet-padding-kept",
        PADDED,
        C.TX_DSR,
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "second-packet-after-server-set-change",
        ACK_NEW_SET,
        C.TX_DSR,
        setup=_seq(_conn(ACK_NEW_SET, 3), _drop_real_from_table(3)),
        real=3,
        svc_id=0,
        extra={C.CONN_HIT: 1},
        conn_created=True,
        note="the established flow stays on real 3 although Maglev no longer has it",
    ),
    PacketCase(
        "syn-reusing-tuple-is-rescheduled",
        SYN_REUSE,
        C.TX_DSR,
        setup=_seq(_conn(SYN_REUSE, 3), _drop_real_from_table(3)),
        real="maglev",
        svc_id=0,
        extra={C.SYN_RESCHEDULE: 1, C.NEW_FLOW: 1},
        conn_created=True,
    ),
    PacketCase(
        "conn-idle-expired-is-rescheduled",
        ACK_NEW_SET,
        C.TX_DSR,
        setup=_seq(_conn(ACK_NEW_SET, 3, age_s=3600), _drop_real_from_table(3)),
        real="maglev",
        svc_id=0,
        extra={C.CONN_EXPIRED: 1, C.NEW_FLOW: 1},
        conn_created=True,
    ),
    PacketCase(
        "conn-to-unusable-real-is-rescheduled",
        ACK_NEW_SET,
        C.TX_DSR,
        setup=_seq(_conn(ACK_NEW_SET, 3), _real_unusable(3), _drop_real_from_table(3)),
        real="maglev",
        svc_id=0,
        extra={C.CONN_REAL_GONE: 1, C.NEW_FLOW: 1},
        conn_created=True,
    ),
    PacketCase(
        "persistence-new-client",
        PERSIST_SYN,
        C.TX_DSR,
        real="maglev-client",
        svc_id=4,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "persistence-hit",
        PERSIST_SYN,
        C.TX_DSR,
        setup=_persist(CLIENT, 4, 2, 10),
        real=2,
        svc_id=4,
        extra={C.PERSIST_HIT: 1},
        pending_created=True,
    ),
    PacketCase(
        "persistence-expired",
        PERSIST_SYN,
        C.TX_DSR,
        setup=_persist(CLIENT, 4, 2, 400),
        real="maglev-client",
        svc_id=4,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    # --- a multi-port service (config ports:): one id for all its ports ---
    PacketCase(
        "multi-port-new-client",
        MULTI_IMAP,
        C.TX_DSR,
        real="maglev-client",
        svc_id=7,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "multi-port-persistence-spans-ports",
        MULTI_SMTP,
        C.TX_DSR,
        # the client's IMAP connection (port 143) left a persistence entry for the
        # service; its SMTP connection (port 25) follows it to the same real
        setup=_persist(CLIENT, 7, _not_the_hash_pick(MULTI_SMTP, 7), 10),
        real=_not_the_hash_pick(MULTI_SMTP, 7),
        svc_id=7,
        extra={C.PERSIST_HIT: 1},
        pending_created=True,
    ),
    PacketCase(
        "multi-port-range-end",
        MULTI_XMPP,
        C.TX_DSR,
        real="maglev-client",
        svc_id=7,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase("multi-port-outside-the-ports", MULTI_GAP, C.PASS_NO_SERVICE),
    PacketCase(
        "all-ports-service",
        ALL_PORTS,
        C.TX_DSR,
        real="maglev",
        svc_id=3,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "local-real-goes-to-stack",
        LOCAL,
        C.PASS_LOCAL_REAL,
        real=6,
        svc_id=5,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    # --- a flow's first packets: pending cache, then conn_table ---
    PacketCase(
        "second-packet-confirms-the-flow",
        ACK_NEW_SET,
        C.TX_DSR,
        setup=_seq(_pending(ACK_NEW_SET, 3), _drop_real_from_table(3)),
        real=3,
        svc_id=0,
        extra={C.CONN_CONFIRMED: 1},
        conn_created=True,
        note="the first packet's choice is kept although Maglev no longer has real 3",
    ),
    PacketCase(
        "syn-retransmission-of-a-pending-flow-is-scheduled-again",
        SYN_REUSE,
        C.TX_DSR,
        setup=_seq(_pending(SYN_REUSE, 3), _drop_real_from_table(3)),
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "stale-pending-entry-is-ignored",
        ACK_NEW_SET,
        C.TX_DSR,
        setup=_seq(_pending(ACK_NEW_SET, 3, age_s=3600), _drop_real_from_table(3)),
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "pending-entry-with-unusable-real-is-scheduled-again",
        ACK_NEW_SET,
        C.TX_DSR,
        setup=_seq(_pending(ACK_NEW_SET, 3), _real_unusable(3), _drop_real_from_table(3)),
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    # --- loops (field note 2): a known flow's packet back with a lower TTL ---
    PacketCase(
        "loop-through-a-router-known-flow",
        LOOPED_VIA_ROUTER,
        C.DROP_LOOP,
        setup=_conn(LOOPED_VIA_ROUTER, 3, ttl=64),
        note="a real without its VIP routed it to its gateway, which sent it back (TTL 64-2)",
    ),
    PacketCase(
        "loop-straight-from-a-real-known-flow",
        LOOPED_DIRECT,
        C.DROP_LOOP,
        setup=_conn(LOOPED_DIRECT, 3, ttl=64),
        note="the real forwarded it back on the link (TTL 64-1); no MAC lookup needed",
    ),
    PacketCase(
        "looped-first-packet-through-a-router",
        LOOPED_SYN,
        C.DROP_LOOP,
        setup=_pending(LOOPED_SYN, 3, ttl=64),
        note="the SYN was forwarded once; its copy is caught by the pending entry's TTL",
    ),
    PacketCase(
        "looped-syn-of-an-established-tuple-is-not-rescheduled",
        LOOPED_SYN,
        C.DROP_LOOP,
        setup=_conn(LOOPED_SYN, 3, ttl=64),
    ),
    PacketCase(
        "higher-ttl-is-not-a-loop",
        ACK,
        C.TX_DSR,
        setup=_conn(ACK, 3, ttl=60),
        real=3,
        svc_id=0,
        extra={C.CONN_HIT: 1},
        conn_created=True,
    ),
    PacketCase(
        "entry-without-a-ttl-is-never-a-loop",
        LOOPED_VIA_ROUTER,
        C.TX_DSR,
        setup=_conn(LOOPED_VIA_ROUTER, 3, ttl=0),
        real=3,
        svc_id=0,
        extra={C.CONN_HIT: 1},
        conn_created=True,
        note="ttl 0: entries written before the TTL was kept, or synced ones",
    ),
    PacketCase(
        "ipv6-loop-lower-hop-limit",
        LOOPED_V6,
        C.DROP_LOOP,
        setup=_conn(LOOPED_V6, 4, ttl=64),
    ),
    # --- not ours ---
    PacketCase("non-vip-tcp", tcp4(dst="192.0.2.50"), C.PASS_NOT_VIP),
    PacketCase(
        "non-vip-malformed-tcp-untouched",
        bytes(eth() / IP(src=CLIENT, dst="192.0.2.50", proto=6) / b"\x00\x01"),
        C.PASS_NOT_VIP,
    ),
    PacketCase("vip-port-without-service", tcp4(dport=22), C.PASS_NO_SERVICE),
    PacketCase(
        "udp-to-a-vip-with-only-a-tcp-all-ports-service",
        bytes(eth() / IP(src=CLIENT, dst=VIP_ALL_PORTS) / UDP(sport=5353, dport=53) / b"q"),
        C.PASS_NO_SERVICE,
        note="vip_info.flags: no UDP all-ports service, so no (VIP, udp, 0) lookup",
    ),
    PacketCase(
        "ipv6-extension-header-then-port-without-service",
        bytes(
            eth(type=0x86DD)
            / IPv6(src=CLIENT6, dst=VIP6)
            / IPv6ExtHdrDestOpt()
            / TCP(sport=40009, dport=22, flags="S")
        ),
        C.PASS_NO_SERVICE,
        note="the general path: vip_addrs, extension headers, then the service lookup",
    ),
    PacketCase(
        "non-vip-sharing-a-vip-filter-bit",
        tcp4(dst=FILTER_TWIN),
        C.PASS_NOT_VIP,
        note="vip_filter says maybe; the service and vip_addrs lookups say no",
    ),
    PacketCase(
        "vip-icmp-echo", bytes(eth() / IP(src=CLIENT, dst=VIP) / ICMP()), C.PASS_OTHER_PROTO
    ),
    PacketCase(
        "arp-reply-is-the-kernels",
        bytes(
            eth(dst="ff:ff:ff:ff:ff:ff", type=0x0806)
            / ARP(op=2, hwsrc=ROUTER_MAC, psrc="192.0.2.1", hwdst=DIRECTOR_MAC, pdst=VIP)
        ),
        C.PASS_NOT_IP,
    ),
    PacketCase(
        "backup-node-never-schedules", SYN, C.PASS_BACKUP, setup=_set_node(role=abi.Role.BACKUP)
    ),
    # --- state and policy drops ---
    PacketCase("service-without-reals", tcp4(dst=VIP_EMPTY), C.DROP_NO_REAL),
    PacketCase(
        "frame-from-a-real-is-a-loop",
        bytes(
            Ether(src=REALS[1][1], dst=DIRECTOR_MAC)
            / IP(src=CLIENT, dst=VIP)
            / TCP(sport=40000, dport=80, flags="A")
        ),
        C.DROP_LOOP,
        note="field note 2: DSR traffic never comes back from a real",
    ),
    PacketCase(
        "broadcast-mac-to-vip",
        bytes(
            Ether(src=ROUTER_MAC, dst="ff:ff:ff:ff:ff:ff")
            / IP(src=CLIENT, dst=VIP)
            / TCP(sport=40000, dport=80, flags="S")
        ),
        C.DROP_GROUP_MAC,
    ),
    PacketCase(
        "ipv4-first-fragment",
        bytes(eth() / IP(src=CLIENT, dst=VIP, flags="MF") / TCP(sport=40000, dport=80, flags="S")),
        C.DROP_FRAGMENT,
    ),
    PacketCase(
        "ipv4-later-fragment",
        bytes(eth() / IP(src=CLIENT, dst=VIP, frag=100, proto=6) / (b"x" * 40)),
        C.DROP_FRAGMENT,
    ),
    PacketCase(
        "ipv4-fragment-pass-policy",
        bytes(eth() / IP(src=CLIENT, dst=VIP, frag=100, proto=6) / (b"x" * 40)),
        C.PASS_FRAGMENT,
        setup=_set_node(frag_pass=True),
    ),
    PacketCase(
        "ipv4-fragment-not-vip",
        bytes(eth() / IP(src=CLIENT, dst="192.0.2.50", frag=9, proto=6) / (b"x" * 40)),
        C.PASS_NOT_VIP,
    ),
    PacketCase(
        "ipv6-fragment",
        bytes(
            eth(type=0x86DD)
            / IPv6(src=CLIENT6, dst=VIP6)
            / IPv6ExtHdrFragment(offset=10, m=1, nh=6)
            / (b"x" * 40)
        ),
        C.DROP_FRAGMENT,
    ),
    PacketCase(
        "ipv6-later-fragment-payload-not-parsed-as-headers",
        bytes(
            eth(type=0x86DD)
            / IPv6(src=CLIENT6, dst=VIP6)
            / IPv6ExtHdrFragment(offset=10, m=1, nh=60)
            / ((b"\x3c\x00" + bytes(6)) * 6)
        ),
        C.DROP_FRAGMENT,
        note="the payload looks like six destination-options headers (too many to walk)",
    ),
    PacketCase(
        "ipv6-later-fragment-pass-policy",
        bytes(
            eth(type=0x86DD)
            / IPv6(src=CLIENT6, dst=VIP6)
            / IPv6ExtHdrFragment(offset=10, m=0, nh=0)
            / (b"\x06\xff" + bytes(30))
        ),
        C.PASS_FRAGMENT,
        setup=_set_node(frag_pass=True),
        note="the payload looks like a hop-by-hop header longer than the packet",
    ),
    # --- malformed input ---
    PacketCase(
        "short-ethernet",
        bytes(10),
        C.DROP_SHORT_ETH,
        kernel=False,
        note="BPF_PROG_TEST_RUN (like every NIC) refuses frames under 14 bytes",
    ),
    PacketCase("truncated-ipv4-header", _raw(_ipv4_bytes()[:12]), C.DROP_TRUNC_L3),
    PacketCase(
        "ipv4-ethertype-bad-version", _raw(_patch(_ipv4_bytes(), 0, b"\x65")), C.DROP_BAD_L3
    ),
    PacketCase("ipv4-ihl-below-5", _raw(_patch(_ipv4_bytes(), 0, b"\x43")), C.DROP_BAD_IHL),
    PacketCase(
        "ipv4-ihl-beyond-frame", _raw(_patch(_ipv4_bytes(), 0, b"\x4f")[:50]), C.DROP_TRUNC_L3
    ),
    PacketCase(
        "ipv4-total-length-below-header", _raw(_patch(_ipv4_bytes(), 2, b"\x00\x10")), C.DROP_BAD_L3
    ),
    PacketCase(
        "ipv4-total-length-beyond-frame",
        _raw(_patch(_ipv4_bytes(), 2, b"\x05\xdc")),
        C.DROP_TRUNC_L3,
    ),
    PacketCase(
        "truncated-ipv6-header",
        bytes(eth(type=0x86DD)) + bytes(IPv6(src=CLIENT6, dst=VIP6))[:30],
        C.DROP_TRUNC_L3,
    ),
    PacketCase(
        "ipv6-payload-length-beyond-frame",
        bytes(eth(type=0x86DD))
        + _patch(bytes(IPv6(src=CLIENT6, dst=VIP6, plen=500) / TCP(dport=80)), 4, b"\x01\xf4"),
        C.DROP_TRUNC_L3,
    ),
    PacketCase(
        "ipv6-too-many-extension-headers",
        bytes(
            eth(type=0x86DD)
            / IPv6(src=CLIENT6, dst=VIP6)
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrDestOpt()
            / TCP(sport=1, dport=80)
        ),
        C.DROP_IPV6_EXT,
    ),
    PacketCase(
        "ipv6-extension-header-truncated",
        bytes(eth(type=0x86DD)) + bytes(IPv6(src=CLIENT6, dst=VIP6, nh=60, plen=2)) + b"\x06\x00",
        C.DROP_TRUNC_L3,
    ),
    PacketCase(
        "tcp-header-truncated",
        _raw(bytes(IP(src=CLIENT, dst=VIP, proto=6) / bytes(TCP(dport=80))[:10])),
        C.DROP_TRUNC_L4,
    ),
    PacketCase(
        "tcp-data-offset-below-5",
        _raw(bytes(IP(src=CLIENT, dst=VIP) / TCP(dport=80, dataofs=3))),
        C.DROP_BAD_L4,
    ),
    PacketCase(
        "tcp-data-offset-beyond-packet",
        _raw(bytes(IP(src=CLIENT, dst=VIP) / TCP(dport=80, dataofs=15))),
        C.DROP_TRUNC_L4,
    ),
    PacketCase(
        "udp-length-below-8",
        _raw(bytes(IP(src=CLIENT, dst=VIP) / UDP(dport=53, len=4))),
        C.DROP_BAD_L4,
    ),
    PacketCase(
        "udp-length-beyond-packet",
        _raw(bytes(IP(src=CLIENT, dst=VIP) / UDP(dport=53, len=300) / b"abc")),
        C.DROP_TRUNC_L4,
    ),
]


from tests.packets.cluster_cases import CLUSTER_CASES  # noqa: E402 (uses the names above)
from tests.packets.hold_cases import HOLD_CASES  # noqa: E402
from tests.packets.icmp_cases import ICMP_CASES  # noqa: E402
from tests.packets.neighbour_cases import NEIGHBOUR_CASES  # noqa: E402

CASES += NEIGHBOUR_CASES + ICMP_CASES + CLUSTER_CASES + HOLD_CASES


def prepared(case: PacketCase) -> tuple[State, int]:
    """base_state() with the case's setup applied, and the 'now' it used."""
    state = base_state()
    now = time.monotonic_ns()
    case.setup(state, now)
    return state, now


def expected_real(case: PacketCase, state: State) -> int | None:
    if case.real == "maglev":
        assert case.svc_id is not None
        return maglev_real(state, case.svc_id, flow_key(case.frame))
    if case.real == "maglev-client":
        assert case.svc_id is not None
        key = bytearray(flow_key(case.frame))
        key[32:36] = bytes(4)  # ports zeroed: persistent services hash on the client
        return maglev_real(state, case.svc_id, bytes(key))
    return case.real if isinstance(case.real, int) else None


def expected_frame(case: PacketCase, state: State) -> bytes:
    if case.out is not None:
        return case.out
    if case.reason != C.TX_DSR:
        return case.frame
    rid = expected_real(case, state)
    assert rid is not None
    real_mac = state.reals[rid].mac
    return real_mac + case.frame[0:6] + case.frame[12:]
