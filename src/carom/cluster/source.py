"""Where the sync sender learns about new connection entries.

The data plane emits an event when an entry enters conn_table (the
`conn_events` ring buffer; records of abi.ConnEventRecord, the layout
carom.cluster.events decodes, kept as bytes here and encoded per drain). A data
plane built without it (an older object) is scanned instead: conn_table is
dumped every SCAN_S and entries not seen before are reported. The scan is a
fallback: it costs a map dump per period and adds up to SCAN_S of sync lag, so
`carom status` names the source in use.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from carom import abi
from carom.bpf import libbpf
from carom.bpf.ringbuf import BATCH_OK, RingBuffer, RingReader
from carom.cluster import codec

log = logging.getLogger("carom.cluster")

SCAN_S = 0.01
RECORD_SIZE = ctypes.sizeof(abi.ConnEventRecord)
KIND_NEW = 1
KIND_REPOINT = 2


@dataclass(frozen=True)
class Event:
    """One entry that entered (or was re-pointed in) the connection table."""

    kind: int  # KIND_NEW or KIND_REPOINT
    key: abi.FlowKey  # the flow
    real_id: int  # this node's id of the real it goes to


class Source(Protocol):
    name: str
    lost: int  # events the source knows it missed (ring buffer full)

    def fileno(self) -> int | None: ...

    def drain(self) -> list[Event]: ...

    def close(self) -> None: ...


class RawRingSource:
    """The data plane's conn_events ring buffer, records kept as bytes: the
    sender encodes a whole drain with numpy (codec.encode_events) instead of
    making an object per event."""

    name = "ring buffer"

    def __init__(self, dp: Any) -> None:
        self._buf: list[bytes] = []
        fd = dp.map_fd("conn_events")
        # the batch reader where the CPU allows it (ringbuf.BATCH_OK), else libbpf's
        self._reader = RingReader(fd) if BATCH_OK else None
        self._ring = None if self._reader is not None else RingBuffer(fd, self._buf.append)
        self.lost = 0

    def fileno(self) -> int | None:
        if self._reader is not None:
            return self._reader.fileno()
        assert self._ring is not None
        return self._ring.fileno()

    def drain_raw(self) -> bytes:
        """Every record committed now, packed (bounded: a producer that keeps
        up does not keep the caller here)."""
        if self._reader is not None:
            raw = self._reader.read(RECORD_SIZE)[0]
            self.lost += self._reader.odd  # records of another size: never expected
            self._reader.odd = 0
            return raw
        assert self._ring is not None
        self._ring.consume()
        raw = b"".join(self._buf)
        self._buf.clear()
        return raw

    def drain(self) -> list[Event]:
        raw = self.drain_raw()
        size = RECORD_SIZE
        out = []
        for off in range(0, len(raw), size):
            rec = abi.ConnEventRecord.from_buffer_copy(raw, off)
            out.append(
                Event(int(rec.kind), abi.FlowKey.from_buffer_copy(bytes(rec.key)), int(rec.real_id))
            )
        return out

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._ring is not None:
            self._ring.close()


class ScanSource:
    """conn_table dumps, compared with the previous one (fallback)."""

    name = "table scan"

    def __init__(self, conn_map: Any) -> None:
        self.map = conn_map
        self.known: dict[bytes, int] = {}
        self.lost = 0

    def fileno(self) -> int | None:
        return None

    def drain(self) -> list[Event]:
        out: list[Event] = []
        seen: dict[bytes, int] = {}
        ks, vs = codec.KEY_DT.itemsize, codec.VAL_DT.itemsize
        for keys, values, n in libbpf.map_lookup_batch_raw(
            self.map.fd, ks, vs, self.map.max_entries
        ):
            v = np.frombuffer(values, dtype=codec.VAL_DT, count=n)
            rids = v["real_id"].tolist()
            local = (v["flags"] & int(abi.ConnFlags.SYNCED)) == 0
            for i in np.flatnonzero(local).tolist():
                kb = keys[i * ks : (i + 1) * ks]
                rid = rids[i]
                seen[kb] = rid
                old = self.known.get(kb)
                if old != rid:
                    kind = KIND_NEW if old is None else KIND_REPOINT
                    out.append(Event(kind, abi.FlowKey.from_buffer_copy(kb), rid))
        self.known = seen
        return out

    def close(self) -> None:
        pass


def open_source(dp: Any) -> Source | RawRingSource:
    """The ring buffer if the data plane has one, else the scan."""
    try:
        return RawRingSource(dp)
    except (KeyError, AttributeError, OSError) as exc:
        log.warning(
            "the data plane emits no connection events; syncing from table scans "
            "(adds up to %d ms of sync lag)",
            int(SCAN_S * 1000),
            extra={"why": str(exc)},
        )
        return ScanSource(dp["conn_table"])
