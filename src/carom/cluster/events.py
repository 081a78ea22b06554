"""Connection events from the data plane: the `conn_events` ring buffer.

The XDP program writes a record whenever its connection table gains an entry
(NEW: a flow's second packet confirmed it, TCP and UDP alike) or re-points one
(REPOINT: a SYN reusing the tuple, an idle entry, or its real gone or down), and
only while the node is active with a running lease (bpf/conn_events.h). This is
the source of connection sync: the daemon registers `fileno()` with
`loop.add_reader` and calls `drain()` when it is readable. A record the ring had
no room for is lost and counted by the data plane (`conn_events_dropped`)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Protocol

from carom import abi
from carom.bpf.ringbuf import BATCH_OK, RingBuffer, RingReader

RECORD_SIZE = ctypes.sizeof(abi.ConnEventRecord)


@dataclass(frozen=True)
class ConnEvent:
    """One conn_table change, as the data plane reported it."""

    kind: abi.ConnEventKind  # NEW or REPOINT
    key: abi.FlowKey  # the entry's key: the 5-tuple as the client sent it
    real_id: int  # the real the entry points to now (this node's id)
    flags: int  # the entry's abi.ConnFlags
    ttl: int  # TTL / hop limit of the flow's first packet (0: unknown)

    @classmethod
    def from_record(cls, raw: bytes) -> ConnEvent:
        """Decode one ring-buffer record (ValueError if it is not one)."""
        if len(raw) != RECORD_SIZE:
            raise ValueError(f"conn event of {len(raw)} bytes, expected {RECORD_SIZE}")
        rec = abi.ConnEventRecord.from_buffer_copy(raw)
        return cls(
            kind=abi.ConnEventKind(rec.kind),
            key=abi.FlowKey.from_buffer_copy(bytes(rec.key)),
            real_id=int(rec.real_id),
            flags=int(rec.flags),
            ttl=int(rec.ttl),
        )


class HasRings(Protocol):
    """The part of a loaded Dataplane this reader needs."""

    def map_fd(self, name: str) -> int: ...


class ConnEvents:
    """Reader of one data plane's conn_events ring buffer."""

    def __init__(self, dataplane: HasRings) -> None:
        self._batch: list[ConnEvent] = []
        self.malformed = 0  # records that did not decode (never expected; counted)
        fd = dataplane.map_fd("conn_events")
        # the batch reader where the CPU allows it (ringbuf.BATCH_OK), else libbpf's
        self._reader = RingReader(fd) if BATCH_OK else None
        self._ring = None if self._reader is not None else RingBuffer(fd, self._on_record)

    def _on_record(self, raw: bytes) -> None:
        try:
            self._batch.append(ConnEvent.from_record(raw))
        except ValueError:
            self.malformed += 1

    def fileno(self) -> int:
        """Readable while events wait: for loop.add_reader."""
        if self._reader is not None:
            return self._reader.fileno()
        assert self._ring is not None
        return self._ring.fileno()

    def drain(self) -> list[ConnEvent]:
        """Every event waiting now, oldest first (never blocks)."""
        if self._reader is not None:
            raw, n = self._reader.read(RECORD_SIZE)
            self.malformed += self._reader.odd
            self._reader.odd = 0
            for i in range(n):
                self._on_record(raw[i * RECORD_SIZE : (i + 1) * RECORD_SIZE])
        else:
            assert self._ring is not None
            self._ring.consume()
        batch, self._batch = self._batch, []
        return batch

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._ring is not None:
            self._ring.close()

    def __enter__(self) -> ConnEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
