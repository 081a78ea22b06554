"""The bulk-resync protocol over loopback TCP (cluster/bulk.py): a snapshot
arrives whole and in order; a wrong key, an unknown sender or address, and
frames from another session are refused and counted, never half-applied."""

from __future__ import annotations

import asyncio
import ipaddress
import os

import pytest

from carom.cluster import bulk, wire
from carom.cluster.wire import Header, MsgType

KEY = os.urandom(32)
LOOP = ipaddress.ip_address("127.0.0.1")
PIECES = [(bytes([i]) * 24 * 3, 3) for i in range(1, 8)]


async def _serve(server: bulk.BulkServer) -> tuple[asyncio.Server, int]:
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


def _server(members: dict[object, int] | None = None) -> bulk.BulkServer:
    return bulk.BulkServer(KEY, 1, members or {LOOP: 2}, lambda: PIECES)  # type: ignore[arg-type]


def test_snapshot_arrives_whole_and_in_order() -> None:
    async def go() -> tuple[list[tuple[bytes, int]], bulk.Progress, bulk.BulkServer]:
        server = _server()
        srv, port = await _serve(server)
        got: list[tuple[bytes, int]] = []
        progress = bulk.Progress()
        await bulk.pull(KEY, 2, 1, "127.0.0.1", port, lambda p, n: got.append((p, n)), progress)
        srv.close()
        return got, progress, server

    got, progress, server = asyncio.run(go())
    assert got == PIECES
    assert progress.state == "done" and progress.records == progress.expected == 21
    assert server.served == 1


@pytest.mark.parametrize(
    ("key", "me", "members", "reason"),
    [
        (os.urandom(32), 2, None, "bad_mac"),  # the puller has another key
        (KEY, 3, None, "unknown_sender"),  # a node id that is not that address's member
        (KEY, 2, {ipaddress.ip_address("192.0.2.9"): 2}, "unknown_sender"),  # wrong address
    ],
)
def test_refused_requests_are_counted(
    key: bytes, me: int, members: dict[object, int] | None, reason: str
) -> None:
    async def go() -> tuple[bulk.BulkServer, list[tuple[bytes, int]]]:
        server = _server(members)
        srv, port = await _serve(server)
        got: list[tuple[bytes, int]] = []
        with pytest.raises((asyncio.IncompleteReadError, bulk.BulkError, ConnectionError)):
            await bulk.pull(
                key, me, 1, "127.0.0.1", port, lambda p, n: got.append((p, n)), bulk.Progress()
            )
        srv.close()
        return server, got

    server, got = asyncio.run(go())
    assert server.refused == {reason: 1} and not got and server.served == 0


def test_frames_of_another_session_are_refused() -> None:
    """A peer (or a man in the middle) answering with frames sealed for another
    nonce: the puller stops at the first one and applies nothing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await bulk.read_frame(reader, KEY)
        writer.write(bulk.frame(KEY, Header(MsgType.BULK_CHUNK, 1, 12345, 1, 3), bytes(72)))
        await writer.drain()
        writer.close()

    async def go() -> list[tuple[bytes, int]]:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        got: list[tuple[bytes, int]] = []
        with pytest.raises(bulk.BulkError) as exc:
            await bulk.pull(
                KEY, 2, 1, "127.0.0.1", port, lambda p, n: got.append((p, n)), bulk.Progress()
            )
        assert exc.value.reason == "replay"
        srv.close()
        return got

    assert asyncio.run(go()) == []


def test_the_health_view_comes_with_the_snapshot_before_done() -> None:
    """A joiner holds the peer's health view when the resync completes, so its
    tables agree with the active's as soon as it may be ready."""
    parts = wire.split_view(4, [])
    views = [(wire.encode_view_part(p), len(p.entries)) for p in parts]

    async def go() -> list[tuple[str, bytes]]:
        server = bulk.BulkServer(KEY, 1, {LOOP: 2}, lambda: PIECES, views=lambda: views)  # type: ignore[dict-item]
        srv, port = await _serve(server)
        seen: list[tuple[str, bytes]] = []
        await bulk.pull(
            KEY,
            2,
            1,
            "127.0.0.1",
            port,
            lambda p, n: seen.append(("chunk", p)),
            bulk.Progress(),
            on_view=lambda h, p: seen.append((h.type.name, p)),
        )
        srv.close()
        return seen

    seen = asyncio.run(go())
    assert [k for k, _ in seen] == ["chunk"] * len(PIECES) + ["HEALTH_VIEW"]
    assert wire.decode_view_part(seen[-1][1], 0) == parts[0]
