"""UDP check: one datagram out, one reply back that contains the expected bytes."""

from __future__ import annotations

import asyncio
import socket

from carom.health.spec import UDP_REPLY_CAP, CheckResult, Target, UdpCheck
from carom.health.vip_path import socket_in


class _Reply(asyncio.DatagramProtocol):
    """Resolves `reply` with the first datagram, or with the error the kernel
    reported (ICMP port unreachable arrives as ECONNREFUSED on a connected socket)."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.reply.done():
            self.reply.set_result(data[:UDP_REPLY_CAP])

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("socket closed"))


async def open_datagram(target: Target) -> tuple[asyncio.DatagramTransport, _Reply]:
    """A datagram socket connected to the target (along the VIP path if it says so)."""
    loop = asyncio.get_running_loop()
    remote = (str(target.address), target.port)
    if target.via is None:
        return await loop.create_datagram_endpoint(_Reply, remote_addr=remote)
    family = socket.AF_INET6 if target.address.version == 6 else socket.AF_INET
    sock = socket_in(target.via, family, socket.SOCK_DGRAM)
    try:
        sock.connect(remote)  # a datagram connect only sets the peer: it does not block
        return await loop.create_datagram_endpoint(_Reply, sock=sock)
    except BaseException:
        sock.close()
        raise


async def probe(check: UdpCheck, target: Target) -> CheckResult:
    transport, protocol = await open_datagram(target)
    try:
        transport.sendto(check.send)
        data = await protocol.reply
    finally:
        transport.abort()
    if check.expect and check.expect not in data:
        return CheckResult(
            ok=False,
            reason=f"reply of {len(data)} bytes lacks {check.expect[:32]!r} (starts {data[:32]!r})",
        )
    return CheckResult(ok=True, reason=f"reply of {len(data)} bytes")
