"""Packet cases for VIP ownership (bpf/arp_responder.h, model/neighbour.py) and
for frame addressing (bpf/ifmac.h). Every answer is built here with scapy,
independently of the model, and compared byte for byte."""

from __future__ import annotations

import socket

from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.utils6 import in6_getnsma, in6_getnsmac

from carom import abi
from carom.abi import Counter as C
from carom.model.state import State
from tests.packets.cases import (
    DIRECTOR_MAC,
    ROUTER_MAC,
    VIP,
    VIP6,
    PacketCase,
    Setup,
    _set_node,
    tcp4,
)

ROUTER_IP = "192.0.2.1"
ROUTER6 = "2001:db8:2::1"
OTHER_MAC = "02:ca:00:00:00:77"  # another host on the segment (flooded / promiscuous)
BROADCAST = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"


def _lease(seconds: float) -> Setup:
    """A lease that ends `seconds` after the case's 'now' (negative: already over)."""

    def setup(state: State, now: int) -> None:
        assert state.node is not None
        state.node.lease_until_ns = now + int(seconds * 1e9)

    return setup


def _no_if_mac(state: State, now: int) -> None:
    state.if_macs.clear()


def arp_request(
    target: str = VIP,
    sender: str = ROUTER_IP,
    dst: str = BROADCAST,
    src: str = ROUTER_MAC,
    op: int = 1,
    pad: int = 0,
) -> bytes:
    frame = Ether(src=src, dst=dst, type=0x0806) / ARP(
        op=op, hwsrc=src, psrc=sender, hwdst=ZERO_MAC, pdst=target
    )
    return bytes(frame) + bytes(pad)


def arp_reply(pad: int = 0) -> bytes:
    """What the director must send for arp_request(): is-at from its own MAC."""
    frame = Ether(src=DIRECTOR_MAC, dst=ROUTER_MAC, type=0x0806) / ARP(
        op=2, hwsrc=DIRECTOR_MAC, psrc=VIP, hwdst=ROUTER_MAC, pdst=ROUTER_IP
    )
    return bytes(frame) + bytes(pad)


def _nsma(addr: str) -> tuple[str, str]:
    """Solicited-node multicast address and its MAC."""
    raw = in6_getnsma(socket.inet_pton(socket.AF_INET6, addr))
    return socket.inet_ntop(socket.AF_INET6, raw), in6_getnsmac(raw)


def ns(
    target: str = VIP6,
    src: str = ROUTER6,
    multicast: bool = True,
    sllao: bool = True,
    hlim: int = 255,
    eth_dst: str | None = None,
    **icmp: object,
) -> bytes:
    dst, mac = _nsma(target) if multicast else (target, DIRECTOR_MAC)
    pkt = (
        Ether(src=ROUTER_MAC, dst=eth_dst or mac)
        / IPv6(src=src, dst=dst, hlim=hlim)
        / ICMPv6ND_NS(tgt=target, **icmp)
    )
    if sllao:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=ROUTER_MAC)
    return bytes(pkt)


def na(tllao: bool = True) -> bytes:
    """The advertisement the director must send: Solicited + Override, hop limit 255."""
    pkt = (
        Ether(src=DIRECTOR_MAC, dst=ROUTER_MAC)
        / IPv6(src=VIP6, dst=ROUTER6, hlim=255)
        / ICMPv6ND_NA(R=0, S=1, O=1, tgt=VIP6)
    )
    if tllao:
        pkt = pkt / ICMPv6NDOptDstLLAddr(lladdr=DIRECTOR_MAC)
    return bytes(pkt)


ARP_REQ = arp_request()
NS_MCAST = ns()
BACKUP = _set_node(role=abi.Role.BACKUP)

NEIGHBOUR_CASES: list[PacketCase] = [
    # --- ARP ---
    PacketCase("arp-who-has-vip-answered", ARP_REQ, C.TX_ARP_REPLY, out=arp_reply()),
    PacketCase(
        "arp-who-has-vip-padded-frame",
        arp_request(pad=18),
        C.TX_ARP_REPLY,
        out=arp_reply(pad=18),
        note="Ethernet minimum size: the padding leaves as it came",
    ),
    PacketCase(
        "arp-unicast-refresh-answered",
        arp_request(dst=DIRECTOR_MAC),
        C.TX_ARP_REPLY,
        out=arp_reply(),
    ),
    PacketCase(
        "arp-fresh-lease-answered",
        ARP_REQ,
        C.TX_ARP_REPLY,
        setup=_lease(30),
        out=arp_reply(),
    ),
    PacketCase("arp-backup-silent", ARP_REQ, C.PASS_NEIGH_INACTIVE, setup=BACKUP),
    PacketCase("arp-lease-expired-silent", ARP_REQ, C.PASS_NEIGH_INACTIVE, setup=_lease(-1)),
    PacketCase(
        "arp-no-lease-silent",
        ARP_REQ,
        C.PASS_NEIGH_INACTIVE,
        setup=_set_node(lease_until_ns=0),
        note="a daemon that never wrote a lease never claims the VIPs",
    ),
    PacketCase("arp-non-vip-is-the-kernels", arp_request(target="192.0.2.50"), C.PASS_NOT_VIP),
    PacketCase("arp-probe-not-answered", arp_request(sender="0.0.0.0"), C.PASS_NEIGH_IGNORED),
    PacketCase(
        "arp-gratuitous-claim-not-answered",
        arp_request(sender=VIP, src=OTHER_MAC),
        C.PASS_NEIGH_IGNORED,
        note="another host claiming our VIP: the daemon re-announces, XDP stays quiet",
    ),
    PacketCase(
        "arp-unicast-for-another-mac",
        arp_request(dst=OTHER_MAC),
        C.PASS_NOT_OUR_MAC,
    ),
    PacketCase("arp-interface-mac-unknown", ARP_REQ, C.PASS_NO_IF_MAC, setup=_no_if_mac),
    PacketCase("arp-truncated", ARP_REQ[:40], C.PASS_NOT_IP),
    # --- IPv6 neighbour discovery ---
    PacketCase("ns-multicast-for-vip-answered", NS_MCAST, C.TX_ND_ADVERT, out=na()),
    PacketCase(
        "ns-unicast-nud-answered",
        ns(multicast=False, sllao=False),
        C.TX_ND_ADVERT,
        out=na(tllao=False),
        note="RFC 4861 7.2.4: the target link-layer option may be left out for unicast",
    ),
    PacketCase("ns-backup-silent", NS_MCAST, C.PASS_NEIGH_INACTIVE, setup=BACKUP),
    PacketCase("ns-lease-expired-silent", NS_MCAST, C.PASS_NEIGH_INACTIVE, setup=_lease(-1)),
    PacketCase("ns-non-vip", ns(target="2001:db8:2::55"), C.PASS_NOT_VIP),
    PacketCase("ns-dad-not-answered", ns(src="::", sllao=False), C.PASS_NEIGH_IGNORED),
    PacketCase("ns-bad-checksum", ns(cksum=0x1234), C.PASS_NEIGH_IGNORED),
    PacketCase("ns-hop-limit-not-255", ns(hlim=64), C.PASS_NEIGH_IGNORED),
    PacketCase("ns-multicast-without-sllao", ns(sllao=False), C.PASS_NEIGH_IGNORED),
    PacketCase(
        "ns-unicast-for-another-mac",
        ns(multicast=False, eth_dst=OTHER_MAC),
        C.PASS_NOT_OUR_MAC,
    ),
    PacketCase(
        "icmpv6-echo-to-vip-is-the-kernels",
        bytes(
            Ether(src=ROUTER_MAC, dst=DIRECTOR_MAC)
            / IPv6(src=ROUTER6, dst=VIP6)
            / ICMPv6EchoRequest()
        ),
        C.PASS_OTHER_PROTO,
    ),
    # --- frames not addressed to us (ifmac.h) ---
    PacketCase(
        "vip-frame-for-another-mac-not-forwarded",
        bytes(Ether(src=ROUTER_MAC, dst=OTHER_MAC, type=0x0800)) + tcp4()[14:],
        C.PASS_NOT_OUR_MAC,
        note="promiscuous mode or a flooding switch: never forward under someone else's MAC",
    ),
    PacketCase(
        "vip-frame-interface-mac-unknown",
        tcp4(),
        C.PASS_NO_IF_MAC,
        setup=_no_if_mac,
    ),
]
