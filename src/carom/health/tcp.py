"""TCP connect check: up when the three-way handshake completes."""

from __future__ import annotations

import asyncio

from carom.health.spec import CheckResult, Target, TcpCheck, passed


async def open_stream(
    target: Target, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the target whose reader buffers at most `limit` bytes per line."""
    return await asyncio.open_connection(str(target.address), target.port, limit=limit)


def abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection at once: a check never waits for a polite close
    (a peer that never acknowledges our FIN would hold the probe)."""
    transport = writer.transport
    transport.abort()


async def probe(check: TcpCheck, target: Target) -> CheckResult:
    del check  # a connect has no options beyond its timing
    _, writer = await open_stream(target, limit=1024)
    abort(writer)
    return passed("connected")
