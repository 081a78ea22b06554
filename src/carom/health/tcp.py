"""TCP connect check: up when the three-way handshake completes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
import struct

from carom.health.spec import CheckResult, Target, TcpCheck, passed
from carom.health.vip_path import socket_in

_LINGER_ZERO = struct.pack("ii", 1, 0)


async def open_stream(
    target: Target,
    limit: int,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the target whose reader buffers at most `limit` bytes per
    line; along the VIP path when the target says so."""
    host, port = str(target.address), target.port
    if target.via is None:
        return await asyncio.open_connection(
            host, port, limit=limit, ssl=ssl, server_hostname=server_hostname
        )
    sock = tcp_socket(target)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(
        sock=sock, limit=limit, ssl=ssl, server_hostname=server_hostname
    )


def abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection at once: a check never waits for a polite close
    (a peer that never acknowledges our FIN would hold the probe)."""
    transport = writer.transport
    transport.abort()


def tcp_socket(target: Target) -> socket.socket:
    family = socket.AF_INET6 if target.address.version == 6 else socket.AF_INET
    if target.via is not None:
        return socket_in(target.via, family, socket.SOCK_STREAM)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def probe(check: TcpCheck, target: Target) -> CheckResult:
    """A bare non-blocking connect: no transport or stream objects, the cheapest
    probe (it runs once a second for every real)."""
    del check  # a connect has no options beyond its timing
    sock = tcp_socket(target)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (str(target.address), target.port))
    finally:
        close_with_reset(sock)
    return passed("connected")


def close_with_reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: no TIME_WAIT left by a probe every second,
    and no wait for a peer that never acknowledges."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()
