"""Bulk resync: a joining director pulls a peer's whole connection table over
TCP before it may become active (field note 6: keepalived #237, loxilb #565).

Why TCP: a snapshot of 10^6 entries is ~24 MB; over UDP every lost datagram is
a lost flow and pacing is ours to get right. TCP gives order, loss recovery
and flow control. The framing is the UDP one (cluster/wire.py: header, payload,
16-byte HMAC) behind a 4-byte length, frames up to FRAME_MAX bytes.

    joiner                                  peer (any role)
    BULK_REQUEST  epoch=nonce seq=1   --->  checks HMAC, member, source address
                  <---  BULK_CHUNK  epoch=nonce seq=1.. (records, count)
                  <---  HEALTH_VIEW epoch=nonce seq=..n (the view its tables follow)
                  <---  BULK_DONE   epoch=nonce seq=n+1 payload u32 records sent

The peer's frames carry the joiner's random 64-bit nonce as their epoch and
consecutive sequence numbers, so a frame from an earlier session (or another
joiner's) is refused: replay protection without state. The joiner applies
chunks as they come; records for flows the live UDP stream has touched since
the request are skipped (the stream is newer), so snapshot + stream end
de-duplicated.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from carom.cluster import codec, wire
from carom.cluster.wire import Header, MsgType, WireError

log = logging.getLogger("carom.cluster")

FRAME_MAX = 64 * 1024
LEN = struct.Struct("!I")
ROOM = FRAME_MAX - wire.HEADER.size - wire.MAC_LEN
CONNECT_TIMEOUT_S = 2.0
FRAME_TIMEOUT_S = 10.0  # a peer that stops sending mid-snapshot is given up on


class BulkError(Exception):
    """The resync failed; `reason` is a counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def frame(key: bytes, header: Header, payload: bytes) -> bytes:
    data = wire.seal(key, header, payload, limit=FRAME_MAX)
    return LEN.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, key: bytes) -> tuple[Header, bytes]:
    head = await asyncio.wait_for(reader.readexactly(LEN.size), FRAME_TIMEOUT_S)
    (n,) = LEN.unpack(head)
    if n > FRAME_MAX or n < wire.HEADER.size + wire.MAC_LEN:
        raise BulkError("malformed", f"frame of {n} bytes")
    data = await asyncio.wait_for(reader.readexactly(n), FRAME_TIMEOUT_S)
    try:
        return wire.open_datagram(key, data)
    except WireError as exc:
        raise BulkError(exc.reason, str(exc)) from exc


# A snapshot source: yields (payload, count) pieces of the table, built in a
# worker thread (it dumps and encodes the whole map).
Snapshot = Callable[[], Iterable[tuple[bytes, int]]]


@dataclass
class BulkServer:
    """Answers BULK_REQUESTs from members (TCP, same port number as the UDP
    heartbeats)."""

    key: bytes
    me: int  # our node id
    members: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int]  # address -> id
    snapshot: Snapshot
    # the health view the peer's tables follow, as HEALTH_VIEW payloads (none
    # if it publishes none): a joiner is ready with the same tables at once
    views: Callable[[], list[tuple[bytes, int]]] = list
    served: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            source = ipaddress.ip_address(str(peer[0]).split("%")[0])
            header, _ = await read_frame(reader, self.key)
            if header.type is not MsgType.BULK_REQUEST:
                raise BulkError("malformed", f"expected a bulk request, got {header.type.name}")
            if self.members.get(source) != header.sender:
                raise BulkError("unknown_sender", f"node {header.sender} from {source}")
            started = time.monotonic()
            nonce, seq, sent = header.epoch, 0, 0
            loop = asyncio.get_running_loop()
            pieces = await loop.run_in_executor(None, lambda: list(self.snapshot()))
            for payload, count in pieces:
                seq += 1
                writer.write(
                    frame(self.key, Header(MsgType.BULK_CHUNK, self.me, nonce, seq, count), payload)
                )
                sent += count
                await writer.drain()
            for payload, count in self.views():
                seq += 1
                writer.write(
                    frame(
                        self.key, Header(MsgType.HEALTH_VIEW, self.me, nonce, seq, count), payload
                    )
                )
            seq += 1
            writer.write(
                frame(self.key, Header(MsgType.BULK_DONE, self.me, nonce, seq), LEN.pack(sent))
            )
            await writer.drain()
            self.served += 1
            log.info(
                "bulk resync served",
                extra={
                    "peer": str(source),
                    "records": sent,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        except BulkError as exc:
            self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
            log.warning("bulk request refused", extra={"peer": str(peer), "error": str(exc)})
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.warning(
                "bulk resync to a peer broke off", extra={"peer": str(peer), "error": str(exc)}
            )
        finally:
            writer.close()


@dataclass
class Progress:
    """A running or finished pull, for `carom status`."""

    peer: str = ""
    state: str = "idle"  # idle | running | done | failed
    records: int = 0  # received so far
    applied: int = 0
    skipped: int = 0  # superseded by the live stream
    unknown_real: int = 0
    expected: int | None = None  # from BULK_DONE
    seconds: float = 0.0
    error: str = ""


async def pull(
    key: bytes,
    me: int,
    peer_id: int,
    address: str,
    port: int,
    on_chunk: Callable[[bytes, int], None],
    progress: Progress,
    local: str | None = None,
    on_view: Callable[[Header, bytes], None] | None = None,
) -> None:
    """Request the peer's table and hand each chunk to `on_chunk` as it comes
    (and each part of its health view to `on_view`).
    `local`: our member address, which the peer checks the connection against.
    Raises BulkError (or OSError) if the peer does not deliver all of it."""
    nonce = secrets.randbits(63) | 1
    started = time.monotonic()
    progress.state, progress.peer, progress.error = "running", address, ""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address, port, local_addr=(local, 0) if local else None),
        CONNECT_TIMEOUT_S,
    )
    try:
        writer.write(frame(key, Header(MsgType.BULK_REQUEST, me, nonce, 1), b""))
        await writer.drain()
        seq = 0
        while True:
            header, payload = await read_frame(reader, key)
            seq += 1
            if header.sender != peer_id or header.epoch != nonce or header.seq != seq:
                raise BulkError(
                    "replay",
                    f"frame sender {header.sender} nonce/seq {header.epoch}/{header.seq}, "
                    f"expected {peer_id} {nonce}/{seq}",
                )
            if header.type is MsgType.BULK_CHUNK:
                on_chunk(payload, header.count)
                progress.records += header.count
            elif header.type is MsgType.HEALTH_VIEW:
                if on_view is not None:
                    on_view(header, payload)
            elif header.type is MsgType.BULK_DONE:
                if len(payload) != LEN.size:
                    raise BulkError("malformed", "bulk done payload")
                (progress.expected,) = LEN.unpack(payload)
                if progress.expected != progress.records:
                    raise BulkError(
                        "malformed", f"{progress.records} records, peer sent {progress.expected}"
                    )
                break
            else:
                raise BulkError("malformed", f"unexpected {header.type.name} in a snapshot")
        progress.state = "done"
    finally:
        progress.seconds = round(time.monotonic() - started, 3)
        writer.close()


def snapshot_pieces(
    dump: Iterator[tuple[bytes, bytes, int]],
    reals: codec.RealMap,
    idle_limit_ns: int,
    now_ns: Callable[[], int],
) -> Iterator[tuple[bytes, int]]:
    """Map dump chunks -> frame payloads (records), at most ROOM bytes each."""
    for keys, values, n in dump:
        enc = codec.encode_entries(keys, values, n, reals, now_ns(), idle_limit_ns)
        yield from codec.payloads(enc, ROOM)
