"""Raw frames for the doctor's probes: ARP requests and TCP SYNs sent on a
packet socket, and the replies read back with their kernel metadata.

Pure encode/decode functions plus one small socket class; nothing here knows
about carom's config. IPv4 asks with ARP, IPv6 with neighbour solicitations."""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from carom.net.announce import checksum

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ICMPV6 = 58
ND_SOLICIT, ND_ADVERT = 135, 136
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 1 << 3  # the checksum is left for offload: not filled in yet
BROADCAST = b"\xff" * 6
_AUX = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
IP = IPv4 | IPv6


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_raw(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def arp_request(src_mac: bytes, src_ip: IPv4 | None, target: IPv4) -> bytes:
    sender = src_ip.packed if src_ip is not None else b"\0" * 4
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + src_mac + sender + b"\0" * 6
    return BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP) + arp + target.packed


@dataclass(frozen=True)
class ArpReply:
    ip: IP  # the address the reply (ARP reply or neighbour advertisement) claims
    mac: str  # the sender hardware address in the ARP payload
    eth_src: str  # the frame's source MAC (differs under some NIC teaming)


def parse_arp_reply(frame: bytes) -> ArpReply | None:
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if (htype, ptype, hlen, plen, op) != (1, ETH_P_IP, 6, 4, 2):
        return None
    return ArpReply(IPv4(frame[28:32]), mac_text(frame[22:28]), mac_text(frame[6:12]))


def ns_request(src_mac: bytes, src_ip: IPv6, target: IPv6) -> bytes:
    """A neighbour solicitation for `target` (RFC 4861 4.3), to its solicited-node
    multicast group, with our link-layer address."""
    group = IPv6(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + target.packed[13:])
    body = struct.pack("!BBHI", ND_SOLICIT, 0, 0, 0) + target.packed
    body += struct.pack("!BB", 1, 1) + src_mac  # source link-layer address option
    pseudo = src_ip.packed + group.packed + struct.pack("!I3xB", len(body), ICMPV6)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), ICMPV6, 255) + src_ip.packed + group.packed
    dst_mac = b"\x33\x33" + group.packed[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def parse_na(frame: bytes) -> ArpReply | None:
    """A neighbour advertisement: the target it claims and the MAC of its target
    link-layer address option (else the frame's source MAC)."""
    if len(frame) < 78 or frame[12:14] != struct.pack("!H", ETH_P_IPV6):
        return None
    if frame[20] != ICMPV6 or frame[54] != ND_ADVERT:
        return None
    target = IPv6(frame[62:78])
    eth_src = mac_text(frame[6:12])
    mac = eth_src
    opts = frame[78:]
    while len(opts) >= 8 and opts[1]:
        if opts[0] == 2:
            mac = mac_text(opts[2:8])
            break
        opts = opts[opts[1] * 8 :]
    return ArpReply(target, mac, eth_src)


def tcp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src: IP,
    dst: IP,
    sport: int,
    dport: int,
    seq: int,
    flags: int,
    ack: int = 0,
) -> bytes:
    """One TCP segment without payload, checksums filled in (SYN: with an MSS option)."""
    opts = struct.pack("!BBH", 2, 4, 1220 if dst.version == 6 else 1460) if flags & 0x02 else b""
    off = (20 + len(opts)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 64240, 0, 0) + opts
    if dst.version == 6:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(tcp), 6)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    if dst.version == 6:
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src.packed + dst.packed
        return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV6) + ip + tcp
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src.packed, dst.packed
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ip + tcp


@dataclass(frozen=True)
class Segment:
    """A received TCP segment, as much as the probes need."""

    eth_src: str
    src: IP
    dst: IP
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    csum_pending: bool  # arrived with its checksum left to offload


def parse_tcp(frame: bytes, csum_pending: bool = False) -> Segment | None:
    etype = frame[12:14]
    if etype == struct.pack("!H", ETH_P_IP) and len(frame) >= 54 and frame[14] >> 4 == 4:
        ihl = (frame[14] & 0xF) * 4
        total = struct.unpack("!H", frame[16:18])[0]
        if frame[23] != 6 or len(frame) < 14 + ihl + 20 or len(frame) < 14 + total:
            return None
        t, end = 14 + ihl, 14 + total
        src: IP = IPv4(frame[26:30])
        dst: IP = IPv4(frame[30:34])
        pseudo_tail = struct.pack("!BBH", 0, 6, end - t)
    elif etype == struct.pack("!H", ETH_P_IPV6) and len(frame) >= 74:
        payload = struct.unpack("!H", frame[18:20])[0]
        if frame[20] != 6 or len(frame) < 54 + payload or payload < 20:
            return None  # extension headers: not from the probes' peers
        t, end = 54, 54 + payload
        src, dst = IPv6(frame[22:38]), IPv6(frame[38:54])
        pseudo_tail = struct.pack("!I3xB", end - t, 6)
    else:
        return None
    sport, dport, seq, ack, _, flags = struct.unpack("!HHIIBB", frame[t : t + 14])
    # A sender that leaves the checksum to offload hands over a frame that holds
    # only the pseudo-header sum; on veth nobody finishes it (the kernel may still
    # mark the skb as checked), and XDP_TX would forward it as it is.
    csum_pending = (
        csum_pending or checksum(src.packed + dst.packed + pseudo_tail + frame[t:end]) != 0
    )
    return Segment(mac_text(frame[6:12]), src, dst, sport, dport, seq, ack, flags, csum_pending)


class PacketSocket:
    """A packet socket on one interface: send frames, read incoming ones with
    their tpacket_auxdata status (to see checksums left to offload)."""

    def __init__(self, ifname: str, proto: int = ETH_P_ALL) -> None:
        self.ifname = ifname
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
        self.sock.bind((ifname, proto))
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def receive(self, until: float) -> list[tuple[bytes, bool]]:
        """Incoming frames until time.monotonic() reaches `until` (what is queued
        already is always read): (frame, checksum left to offload)."""
        out: list[tuple[bytes, bool]] = []
        while True:
            self._drain(out)
            left = until - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                self._drain(out)
                return out

    def _drain(self, out: list[tuple[bytes, bool]]) -> None:
        while True:
            try:
                data, anc, _, addr = self.sock.recvmsg(65535, socket.CMSG_SPACE(_AUX.size))
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            pending = any(
                level == SOL_PACKET
                and kind == PACKET_AUXDATA
                and _AUX.unpack_from(value)[0] & TP_STATUS_CSUMNOTREADY
                for level, kind, value in anc
            )
            out.append((data, bool(pending)))


def interface_mac(ifname: str) -> bytes:
    with open(f"/sys/class/net/{ifname}/address") as f:
        return mac_raw(f.read().strip())


def random_port() -> int:
    return 40000 + int.from_bytes(os.urandom(2), "big") % 20000
