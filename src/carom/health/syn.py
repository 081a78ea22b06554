"""TCP half-open check: SYN out, SYN-ACK back, and a RST ends it.

For servers that log every connection: the server's application never sees
one, since the handshake never completes. The SYN is built here and sent on a
raw socket; the source port is reserved by a bound (not listening) TCP socket,
so the kernel answers the SYN-ACK with a RST itself and no other socket can get
the port meanwhile. A classic BPF filter on the raw socket passes only the
target's replies to our port, so a busy host does not copy every TCP packet to
us. IPv4 and IPv6; needs CAP_NET_RAW.

Through the VIP path (target.via) the three sockets are made in the probe
namespace and marked, so the SYN goes to the VIP at the real's MAC. The
kernel's own RST for the SYN-ACK is not marked (no socket sends it) and would
follow the namespace's main table, away from the real; so on a SYN-ACK this
probe sends its own RST along the marked path as well, and the real does not
keep a half-open connection until its SYN-ACK retries give up."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import random
import socket
import struct
from ipaddress import ip_address

from carom.health.spec import CheckResult, SynCheck, Target
from carom.health.vip_path import socket_in

SYN, RST, ACK = 0x02, 0x04, 0x10
SO_ATTACH_FILTER = 26


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: str, dst: str, length: int) -> bytes:
    """The checksum's pseudo-header (RFC 793 for IPv4, RFC 8200 8.1 for IPv6)."""
    s, d = ip_address(src).packed, ip_address(dst).packed
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, length)
    return s + d + struct.pack("!I3xB", length, socket.IPPROTO_TCP)


def syn_segment(
    src: str, dst: str, sport: int, dport: int, seq: int, flags: int = SYN, ack: int = 0
) -> bytes:
    """A TCP segment without payload: a SYN with an MSS option (or, with other
    flags, a bare header), its checksum over the pseudo-header of the family."""
    options = struct.pack("!BBH", 2, 4, 1460) if flags == SYN else b""
    offset = (20 + len(options)) // 4
    window = 64240 if flags == SYN else 0
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0)
    segment = header + options
    csum = checksum(_pseudo(src, dst, len(segment)) + segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _attach_filter(sock: socket.socket, src: str, sport: int, dport: int) -> None:
    """Accept only packets from `src`, TCP source port `sport`, destination port
    `dport`. An IPv4 raw socket sees the IP header (its length is read from the
    packet); an IPv6 one sees the TCP header only, so the source address is
    checked on receipt instead (recvfrom)."""
    if ip_address(src).version == 6:
        prog = [
            (0x28, 0, 0, 0),  # ldh [0]: TCP source port
            (0x15, 0, 3, sport),  # jeq sport ? next : drop
            (0x28, 0, 0, 2),  # ldh [2]: TCP destination port
            (0x15, 0, 1, dport),  # jeq dport ? accept : drop
            (0x06, 0, 0, 0xFFFF),  # ret accept
            (0x06, 0, 0, 0),  # ret drop
        ]
    else:
        ip = struct.unpack("!I", socket.inet_aton(src))[0]
        prog = [
            (0x20, 0, 0, 12),  # ld [12]: source address
            (0x15, 0, 6, ip),  # jeq src ? next : drop
            (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): IP header length
            (0x48, 0, 0, 0),  # ldh [x+0]: TCP source port
            (0x15, 0, 3, sport),  # jeq sport ? next : drop
            (0x48, 0, 0, 2),  # ldh [x+2]: TCP destination port
            (0x15, 0, 1, dport),  # jeq dport ? accept : drop
            (0x06, 0, 0, 0xFFFF),  # ret accept
            (0x06, 0, 0, 0),  # ret drop
        ]
    array = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), array)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def _socket(target: Target, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket on the target's path: the probe namespace's, marked, or ours."""
    if target.via is not None:
        return socket_in(target.via, family, kind, proto)
    return socket.socket(family, kind, proto)


def _source_for(target: Target, family: int) -> str:
    """The address the kernel would use to reach the target (a UDP connect sends
    nothing), on the probe's own path."""
    with _socket(target, family, socket.SOCK_DGRAM) as probe:
        probe.connect((str(target.address), target.port))
        address: str = probe.getsockname()[0]
        return address


async def probe(check: SynCheck, target: Target) -> CheckResult:
    del check
    v6 = target.address.version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    dst = str(target.address)
    src = _source_for(target, family)
    loop = asyncio.get_running_loop()
    with _socket(target, family, socket.SOCK_STREAM) as reserve:
        reserve.bind((src, 0))  # reserves the port: the kernel RSTs the SYN-ACK
        sport = reserve.getsockname()[1]
        with _socket(target, family, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw:
            _attach_filter(raw, dst, target.port, sport)
            raw.setblocking(False)
            seq = random.getrandbits(32)
            raw.sendto(syn_segment(src, dst, sport, target.port, seq), (dst, 0))
            while True:
                packet, peer = await loop.sock_recvfrom(raw, 256)
                if v6:
                    if ip_address(peer[0]) != target.address:
                        continue  # the filter cannot see an IPv6 source address
                    ihl = 0
                else:
                    ihl = (packet[0] & 0x0F) * 4
                if len(packet) < ihl + 14:
                    continue
                ack = struct.unpack("!I", packet[ihl + 8 : ihl + 12])[0]
                flags = packet[ihl + 13]
                if ack != (seq + 1) & 0xFFFFFFFF:
                    continue  # not an answer to this SYN
                if flags & (SYN | ACK) == SYN | ACK:
                    if target.via is not None:
                        rst = syn_segment(src, dst, sport, target.port, ack, flags=RST)
                        with contextlib.suppress(OSError):  # best effort: the verdict stands
                            raw.sendto(rst, (dst, 0))
                    return CheckResult(ok=True, reason="SYN-ACK")
                if flags & RST:
                    return CheckResult(ok=False, reason="RST: port closed")
