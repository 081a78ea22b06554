"""VIP ownership: ARP and Neighbour Solicitation answers (bpf/arp_responder.h).

The active director answers for its VIPs in the data plane; the VIPs live on
`lo` where the kernel never answers for them. A request is answered only while
the node is active and its daemon's lease runs, from the receiving interface's
own MAC (if_macs). Each function returns the reason counter and the frame as it
leaves (changed only when the reason is a transmit)."""

from __future__ import annotations

from carom import abi
from carom.abi import Counter
from carom.model.state import State

ETH_HLEN = 14
ETH_P_IP = 0x0800
ARP_LEN = 28
ARPOP_REQUEST, ARPOP_REPLY = 1, 2
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT = 135, 136
ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL = 1, 2
ND_NA_FLAGS_SO = 0x60000000  # Solicited | Override
ND_HOP_LIMIT = 255
ND_NS_LEN, ND_NS_LEN_SLLA = 24, 32
ICMP6_OFF = ETH_HLEN + 40
U64 = (1 << 64) - 1
SOLICITED_NODE_PREFIX = bytes.fromhex("ff02" + "00" * 9 + "01ff")  # ff02::1:ff00:0/104

Answer = tuple[Counter, bytes]


def _active(state: State, now: int) -> bool:  # neigh_active
    node = state.node
    # the map holds a u64: a negative deadline wraps as it does when written
    return node is not None and node.role == abi.Role.ACTIVE and now < node.lease_until_ns & U64


def _may_answer(frame: bytes, state: State, now: int, ifindex: int) -> Counter | bytes:
    """neigh_may_answer: the interface MAC to answer from, or the pass reason."""
    if not _active(state, now):
        return Counter.PASS_NEIGH_INACTIVE
    own = state.if_macs.get(ifindex)
    if own is None:
        return Counter.PASS_NO_IF_MAC
    if not frame[0] & 1 and frame[0:6] != own:
        return Counter.PASS_NOT_OUR_MAC
    return own


def _is_vip(state: State, addr: bytes, family: abi.Family) -> bool:
    key = addr.ljust(16, b"\0") + bytes([int(family)]) + bytes(3)
    return key in state.vip_keys()


def arp_respond(frame: bytes, state: State, now: int, ifindex: int) -> Answer:
    """An ARP frame: a who-has for a VIP becomes the is-at from our MAC."""
    a = ETH_HLEN
    if len(frame) < a + ARP_LEN:
        return Counter.PASS_NOT_IP, frame
    head = frame[a : a + 8]
    if head != b"\x00\x01\x08\x00\x06\x04" + ARPOP_REQUEST.to_bytes(2, "big"):
        return Counter.PASS_NOT_IP, frame
    sha, spa = frame[a + 8 : a + 14], frame[a + 14 : a + 18]
    tpa = frame[a + 24 : a + 28]
    if not _is_vip(state, tpa, abi.Family.IPV4):
        return Counter.PASS_NOT_VIP, frame
    # probe (sender 0.0.0.0), gratuitous (sender == target), group sender MAC
    if spa == bytes(4) or spa == tpa or sha[0] & 1 or frame[6] & 1:
        return Counter.PASS_NEIGH_IGNORED, frame
    own = _may_answer(frame, state, now, ifindex)
    if isinstance(own, Counter):
        return own, frame
    reply = (
        frame[6:12]
        + own
        + frame[12:14]
        + head[:6]
        + ARPOP_REPLY.to_bytes(2, "big")
        + own
        + tpa
        + sha
        + spa
    )
    return Counter.TX_ARP_REPLY, reply + frame[a + ARP_LEN :]


def icmp6_checksum(src: bytes, dst: bytes, msg: bytes) -> int:
    """RFC 4443 checksum over the pseudo-header and the message, as stored (big endian)."""
    data = src + dst + len(msg).to_bytes(4, "big") + bytes(3) + bytes([IPPROTO_ICMPV6]) + msg
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _solicited_node(dst: bytes, target: bytes) -> bool:
    return dst[:13] == SOLICITED_NODE_PREFIX and dst[13:] == target[13:]


def ndp_respond(frame: bytes, state: State, now: int, ifindex: int, l4_end: int) -> Answer | None:
    """An IPv6 frame whose fixed header says ICMPv6 (checked before the VIP lookup).

    None if it is not a Neighbour Solicitation: the frame goes on."""
    length = l4_end - ICMP6_OFF
    if length < 1 or frame[ICMP6_OFF] != ND_NEIGHBOR_SOLICIT:
        return None
    if length < ND_NS_LEN:
        return Counter.PASS_NEIGH_IGNORED, frame
    o = ICMP6_OFF
    src, dst = frame[22:38], frame[38:54]
    target = frame[o + 8 : o + 24]
    if not _is_vip(state, target, abi.Family.IPV6):
        return Counter.PASS_NOT_VIP, frame
    if frame[ETH_HLEN + 7] != ND_HOP_LIMIT or frame[o + 1] != 0 or frame[6] & 1 or src[0] == 0xFF:
        return Counter.PASS_NEIGH_IGNORED, frame
    if src == bytes(16):  # duplicate address detection: not ours to answer
        return Counter.PASS_NEIGH_IGNORED, frame
    if length == ND_NS_LEN_SLLA:
        if frame[o + 24] != ND_OPT_SOURCE_LL or frame[o + 25] != 1:
            return Counter.PASS_NEIGH_IGNORED, frame
    elif length != ND_NS_LEN:
        return Counter.PASS_NEIGH_IGNORED, frame
    if _solicited_node(dst, target):
        if length != ND_NS_LEN_SLLA:  # a multicast NS must say who is asking
            return Counter.PASS_NEIGH_IGNORED, frame
    elif dst != target:
        return Counter.PASS_NEIGH_IGNORED, frame
    if icmp6_checksum(src, dst, frame[o : o + length]) != 0:
        return Counter.PASS_NEIGH_IGNORED, frame
    own = _may_answer(frame, state, now, ifindex)
    if isinstance(own, Counter):
        return own, frame

    body = bytes([ND_NEIGHBOR_ADVERT, 0, 0, 0]) + ND_NA_FLAGS_SO.to_bytes(4, "big") + target
    if length == ND_NS_LEN_SLLA:
        body += bytes([ND_OPT_TARGET_LL, 1]) + own
    csum = icmp6_checksum(target, src, body)
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    ip6 = (
        (0x60000000).to_bytes(4, "big")
        + frame[ETH_HLEN + 4 : ETH_HLEN + 7]  # payload length, next header
        + bytes([ND_HOP_LIMIT])
        + target
        + src
    )
    out = frame[6:12] + own + frame[12:14] + ip6 + body + frame[o + length :]
    return Counter.TX_ND_ADVERT, out
