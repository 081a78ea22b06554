"""TCP half-open check: SYN out, SYN-ACK back, and the kernel's RST ends it.

For servers that log every connection: the server's application never sees
one, since the handshake never completes. The SYN is built here and sent on a
raw socket; the source port is reserved by a bound (not listening) TCP socket,
so the kernel answers the SYN-ACK with a RST itself and no other socket can get
the port meanwhile. A classic BPF filter on the raw socket passes only the
target's replies to our port, so a busy host does not copy every TCP packet to
us. IPv4 only for now; needs CAP_NET_RAW."""

from __future__ import annotations

import asyncio
import ctypes
import random
import socket
import struct

from carom.health.spec import CheckResult, SynCheck, Target

SYN, RST, ACK = 0x02, 0x04, 0x10
SO_ATTACH_FILTER = 26


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_segment(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """A TCP SYN with an MSS option, its checksum over the IPv4 pseudo-header."""
    options = struct.pack("!BBH", 2, 4, 1460)
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, offset << 4, SYN, 64240, 0, 0)
    segment = header + options
    pseudo = (
        socket.inet_aton(src)
        + socket.inet_aton(dst)
        + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
    )
    csum = checksum(pseudo + segment)
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
    """Accept only IPv4 packets from `src`, TCP source port `sport`, destination
    port `dport` (the IP header length is read from the packet)."""
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


def _source_for(dst: str, port: int) -> str:
    """The address the kernel would use to reach `dst` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((dst, port))
        address: str = probe.getsockname()[0]
        return address


async def probe(check: SynCheck, target: Target) -> CheckResult:
    del check
    if target.address.version != 4:
        return CheckResult(ok=False, reason="syn checks are IPv4 only for now")
    if target.via is not None:
        return CheckResult(ok=False, reason="syn checks cannot take the VIP path yet")
    dst = str(target.address)
    src = _source_for(dst, target.port)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reserve:
        reserve.bind((src, 0))  # reserves the port: the kernel RSTs the SYN-ACK
        sport = reserve.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw:
            _attach_filter(raw, dst, target.port, sport)
            raw.setblocking(False)
            seq = random.getrandbits(32)
            raw.sendto(syn_segment(src, dst, sport, target.port, seq), (dst, 0))
            while True:
                packet = await loop.sock_recv(raw, 256)
                ihl = (packet[0] & 0x0F) * 4
                if len(packet) < ihl + 14:
                    continue
                ack = struct.unpack("!I", packet[ihl + 8 : ihl + 12])[0]
                flags = packet[ihl + 13]
                if ack != (seq + 1) & 0xFFFFFFFF:
                    continue  # not an answer to this SYN
                if flags & (SYN | ACK) == SYN | ACK:
                    return CheckResult(ok=True, reason="SYN-ACK")
                if flags & RST:
                    return CheckResult(ok=False, reason="RST: port closed")
