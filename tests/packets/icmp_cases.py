"""Packet cases for ICMP errors about VIP flows (bpf/icmp.h, model/icmp.py).

A router in front of the client reports a problem with a reply that a real sent
from the VIP; the error must reach that real, unchanged but for the Ethernet
header, as a DSR frame would."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether

from carom import abi
from carom.abi import Counter as C
from carom.model.state import State
from tests.packets.cases import (
    CLIENT,
    CLIENT6,
    DIRECTOR_MAC,
    REALS,
    ROUTER_MAC,
    VIP,
    VIP6,
    VIP_LOCAL,
    PacketCase,
    Setup,
    base_state,
    maglev_real,
)

HOP = "203.0.113.1"  # the router with the small MTU
HOP6 = "2001:db8:9::1"


def _key(client: str, vip: str, sport: int, dport: int, proto: int = 6) -> bytes:
    """conn_table key of the client's flow client:sport -> vip:dport."""
    c, v = ipaddress.ip_address(client), ipaddress.ip_address(vip)
    return (
        c.packed.ljust(16, b"\0")
        + v.packed.ljust(16, b"\0")
        + sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
        + bytes([proto, c.version if c.version == 4 else 6, 0, 0])
    )


def _conn(key: bytes, real_id: int) -> Setup:
    def setup(state: State, now: int) -> None:
        state.conns[key] = abi.ConnVal(real_id=real_id, last_seen_ns=now)

    return setup


def frag_needed(
    dst_mac: str = DIRECTOR_MAC,
    src_mac: str = ROUTER_MAC,
    quoted_src: str = VIP,
    vip: str = VIP,
    sport: int = 80,
    dport: int = 40000,
    icmp_type: int = 3,
    code: int = 4,
    udp: bool = False,
    cut: int | None = None,
) -> bytes:
    """ICMP 'fragmentation needed' (MTU 1400) about a reply quoted_src:sport -> CLIENT:dport."""
    l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport, flags="A")
    quote = bytes(IP(src=quoted_src, dst=CLIENT, len=1500) / l4)[:28]
    if cut is not None:
        quote = quote[:cut]
    err = ICMP(type=icmp_type, code=code, nexthopmtu=1400 if code == 4 else 0) / quote
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=HOP, dst=vip) / err)


def packet_too_big(
    dst_mac: str = DIRECTOR_MAC, src_mac: str = ROUTER_MAC, sport: int = 80
) -> bytes:
    quote = IPv6(src=VIP6, dst=CLIENT6, plen=1460) / TCP(sport=sport, dport=40000, flags="A")
    return bytes(
        Ether(src=src_mac, dst=dst_mac)
        / IPv6(src=HOP6, dst=VIP6)
        / ICMPv6PacketTooBig(mtu=1280)
        / bytes(quote)[:48]
    )


def unreachable6(dst_mac: str = DIRECTOR_MAC, src_mac: str = ROUTER_MAC) -> bytes:
    quote = IPv6(src=VIP6, dst=CLIENT6) / UDP(sport=80, dport=40000)
    return bytes(
        Ether(src=src_mac, dst=dst_mac) / IPv6(src=HOP6, dst=VIP6) / ICMPv6DestUnreach() / quote
    )


FLOW = _key(CLIENT, VIP, 40000, 80)
FLOW6 = _key(CLIENT6, VIP6, 40000, 80)
MAGLEV_REAL = maglev_real(base_state(), 0, FLOW)  # the client's flow has no entry yet
R3 = REALS[3][1]
R4 = REALS[4][1]

ICMP_CASES: list[PacketCase] = [
    PacketCase(
        "icmp-frag-needed-goes-to-the-flows-real",
        frag_needed(),
        C.TX_ICMP_ERROR,
        setup=_conn(FLOW, 3),
        real=3,
        svc_id=0,
        out=frag_needed(dst_mac=R3, src_mac=DIRECTOR_MAC),
        note="field note 7: the real lowers its MTU; the IP packet is untouched",
    ),
    PacketCase(
        "icmp-frag-needed-without-entry-uses-maglev",
        frag_needed(),
        C.TX_ICMP_ERROR,
        real=MAGLEV_REAL,
        svc_id=0,
        out=frag_needed(dst_mac=REALS[MAGLEV_REAL][1], src_mac=DIRECTOR_MAC),
        note="no state is created for an error",
    ),
    PacketCase(
        "icmp-time-exceeded-goes-to-the-flows-real",
        frag_needed(icmp_type=11, code=0),
        C.TX_ICMP_ERROR,
        setup=_conn(FLOW, 3),
        real=3,
        svc_id=0,
        out=frag_needed(icmp_type=11, code=0, dst_mac=R3, src_mac=DIRECTOR_MAC),
    ),
    PacketCase(
        "icmp6-packet-too-big-goes-to-the-flows-real",
        packet_too_big(),
        C.TX_ICMP_ERROR,
        setup=_conn(FLOW6, 4),
        real=4,
        svc_id=2,
        out=packet_too_big(dst_mac=R4, src_mac=DIRECTOR_MAC),
    ),
    PacketCase(
        "icmp6-unreachable-for-udp-without-service",
        unreachable6(),
        C.PASS_ICMP_UNMATCHED,
        note="VIP6 has no UDP service on port 80",
    ),
    PacketCase(
        "icmp-error-quoting-another-source",
        frag_needed(quoted_src="192.0.2.50"),
        C.PASS_ICMP_UNMATCHED,
        note="the quoted packet did not leave from this VIP",
    ),
    PacketCase(
        "icmp-error-quoting-a-port-without-service",
        frag_needed(sport=22),
        C.PASS_ICMP_UNMATCHED,
    ),
    PacketCase(
        "icmp-error-quote-cut-before-the-ports",
        frag_needed(cut=21),
        C.PASS_ICMP_UNMATCHED,
    ),
    PacketCase(
        "icmp-error-for-the-local-real",
        frag_needed(quoted_src=VIP_LOCAL, vip=VIP_LOCAL),
        C.PASS_LOCAL_REAL,
        real=6,
        svc_id=5,
        note="this node is the real: its own stack takes the error",
    ),
    PacketCase(
        "icmp-error-for-another-mac",
        frag_needed(dst_mac="02:ca:00:00:00:77"),
        C.PASS_NOT_OUR_MAC,
        setup=_conn(FLOW, 3),
    ),
    PacketCase(
        "icmp-error-from-a-real-is-a-loop",
        frag_needed(src_mac=REALS[1][1]),
        C.DROP_LOOP,
        setup=_conn(FLOW, 3),
    ),
]
