"""Gratuitous ARP and unsolicited Neighbour Advertisements for the VIPs.

Field note 6: an announcement sent once, on the wrong interface, or never
repeated leaves routers sending to a node that is no longer active. The active
director announces *all* its VIPs together, on every interface it serves, in a
burst, again after 1 s and 5 s, then periodically, and at once when another MAC
claims one of its VIPs.

Frame builders are pure (golden tests pair them with their decoded form); only
`Announcer.send` touches a socket (AF_PACKET, bound to one interface).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
Address = IPv4 | IPv6

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
# All-nodes multicast (ff02::1) and its Ethernet group address (RFC 2464).
ALL_NODES = IPv6("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LLADDR = 2
NA_FLAG_OVERRIDE = 0x20000000


def checksum(data: bytes) -> int:
    """RFC 1071 internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def garp_frame(mac: bytes, vip: IPv4) -> bytes:
    """A gratuitous ARP request (sender = target = VIP) to broadcast.

    The request form is what keepalived and the kernel's own `arping -U` send:
    every host that already has an entry for the VIP updates it to our MAC."""
    eth = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
    arp += mac + vip.packed + b"\0" * 6 + vip.packed
    return eth + arp


def unsolicited_na_frame(mac: bytes, vip: IPv6, source: IPv6) -> bytes:
    """An unsolicited Neighbour Advertisement (RFC 4861 7.2.6) for `vip`.

    Override set (so neighbours replace a cached MAC), Solicited clear (it is
    multicast), hop limit 255 (receivers drop anything else), target
    link-layer address option = our MAC. `source` is the interface's
    link-local address, as the RFC asks."""
    body = struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE) + vip.packed
    body += struct.pack("!BB", ND_OPT_TARGET_LLADDR, 1) + mac
    pseudo = source.packed + ALL_NODES.packed + struct.pack("!I3xB", len(body), ICMPV6)
    csum = checksum(pseudo + body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), ICMPV6, 255) + source.packed + ALL_NODES.packed
    eth = ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6)
    return eth + ip6 + body


def link_local_of(mac: bytes) -> IPv6:
    """The EUI-64 link-local address of a MAC: the fallback source of an NA when
    the interface has no link-local address (addrgenmode none)."""
    eui = bytearray(mac[:3] + b"\xff\xfe" + mac[3:])
    eui[0] ^= 0x02
    return IPv6(b"\xfe\x80" + b"\0" * 6 + bytes(eui))


@dataclass(frozen=True)
class Link:
    """One interface the VIPs are announced on."""

    name: str  # interface name
    mac: bytes  # its MAC: the one the VIPs are announced with
    link_local: IPv6  # source of unsolicited NAs


def frames_for(link: Link, vips: Iterable[Address]) -> list[bytes]:
    """One announcement per VIP on this link, IPv4 and IPv6 alike."""
    out = []
    for vip in vips:
        if isinstance(vip, IPv4):
            out.append(garp_frame(link.mac, vip))
        else:
            out.append(unsolicited_na_frame(link.mac, vip, link.link_local))
    return out


@dataclass(frozen=True)
class Claim:
    """Another host said a VIP is at its MAC (an ARP packet or an NA we saw)."""

    vip: Address  # the address claimed
    mac: bytes  # the claimant's MAC (sender hardware address / target LL option)


def parse_claim(frame: bytes) -> Claim | None:
    """If `frame` is an ARP packet or a Neighbour Advertisement that binds an
    address to a MAC, return that binding; anything else gives None.

    Used to notice a split brain: while we are active, nobody else may claim a VIP."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == ETH_P_ARP and len(frame) >= 42:
        htype, ptype, hlen, plen = struct.unpack_from("!HHBB", frame, 14)
        if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
            return None
        sha, spa = frame[22:28], frame[28:32]
        if spa == b"\0\0\0\0":  # ARP probe (RFC 5227): claims nothing yet
            return None
        return Claim(vip=IPv4(spa), mac=sha)
    if ethertype == ETH_P_IPV6 and len(frame) >= 14 + 40 + 24:
        if frame[14 + 6] != ICMPV6 or frame[54] != ND_NEIGHBOR_ADVERT:
            return None
        target = IPv6(frame[62:78])
        opts = frame[78:]
        while len(opts) >= 8 and opts[1]:
            size = opts[1] * 8
            if opts[0] == ND_OPT_TARGET_LLADDR:
                return Claim(vip=target, mac=opts[2:8])
            opts = opts[size:]
        return None
    return None


class Announcer:
    """Sends announcements on a set of links (raw AF_PACKET sockets)."""

    def __init__(self, links: Sequence[Link]) -> None:
        self.links = list(links)
        self._socks: dict[str, socket.socket] = {}

    def _sock(self, link: Link) -> socket.socket:
        s = self._socks.get(link.name)
        if s is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((link.name, 0))
            self._socks[link.name] = s
        return s

    def send(self, vips: Sequence[Address]) -> int:
        """Announce every VIP on every link; returns frames sent. A link that
        fails (gone, down) is skipped and reported by the exception text."""
        sent = 0
        errors = []
        for link in self.links:
            try:
                s = self._sock(link)
                for frame in frames_for(link, vips):
                    s.send(frame)
                    sent += 1
            except OSError as exc:
                errors.append(f"{link.name}: {exc.strerror or exc}")
                self._drop(link.name)
        if errors and not sent:
            raise OSError("; ".join(errors))
        return sent

    def _drop(self, name: str) -> None:
        s = self._socks.pop(name, None)
        if s is not None:
            s.close()

    def close(self) -> None:
        for name in list(self._socks):
            self._drop(name)
