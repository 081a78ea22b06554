"""Connection sync: what the active director streams to its peers, and how a
peer turns the records into entries of its own connection table.

Field note 6: sync that starts late (IPVS from the 3rd packet, loxilb at 10 s,
vc5 at 60 s) leaves every young flow to luck at takeover. carom sends a
flow's record when the data plane creates its entry (first packet, UDP too),
batched for at most `max_delay` or one full datagram, whichever comes first.

Records carry the real's *address*; the receiver maps it to its own real id
(ids are local to a director) and marks the entry SYNCED, so `carom explain`
can tell a synced entry from a local one. An entry for a real this node does
not know is counted (`unknown_real`): the configs differ, which the Maglev
fingerprint check reports as well.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass
from typing import Protocol

from carom import abi
from carom.cluster import wire
from carom.cluster.wire import ConnRecord, Op

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_DELAY_S = 0.002  # a record waits at most this long for company


def flow_of(key: abi.FlowKey) -> tuple[Address, Address, int, int, int]:
    """(src, dst, sport, dport, proto) of a conn_table key, ports in host order."""
    return (
        key.src.to_ip(key.family),
        key.dst.to_ip(key.family),
        abi.port_host(key.sport),
        abi.port_host(key.dport),
        int(key.proto),
    )


def key_of(r: ConnRecord) -> abi.FlowKey:
    """The conn_table key of a record's flow."""
    return abi.FlowKey(
        src=abi.Addr.of(r.src),
        dst=abi.Addr.of(r.dst),
        sport=abi.port_be(r.sport),
        dport=abi.port_be(r.dport),
        proto=r.proto,
        family=int(abi.family_of(r.src)),
    )


def record_of(op: Op, key: abi.FlowKey, real: Address, idle_ms: int = 0) -> ConnRecord:
    src, dst, sport, dport, proto = flow_of(key)
    return ConnRecord(op, proto, src, dst, sport, dport, real, idle_ms)


class ConnMap(Protocol):
    """The part of a conn_table TypedMap the receiver needs."""

    def update(self, key: object, value: object) -> None: ...

    def delete(self, key: object) -> bool: ...


@dataclass
class ApplyResult:
    applied: int = 0  # entries written or deleted
    unknown_real: int = 0  # records naming a real this node does not have


def apply_records(
    records: Iterable[ConnRecord],
    conns: ConnMap,
    real_ids: Mapping[Address, int],
    now_ns: int,
) -> ApplyResult:
    """Write synced records into this node's connection table.

    last_seen is set to now minus the record's idle time, so the entry expires
    here when it would have expired on the sender."""
    res = ApplyResult()
    for r in records:
        key = key_of(r)
        if r.op is Op.DELETE:
            conns.delete(key)
            res.applied += 1
            continue
        rid = real_ids.get(r.real)
        if rid is None:
            res.unknown_real += 1
            continue
        seen = max(0, now_ns - r.idle_ms * 1_000_000)
        conns.update(
            key, abi.ConnVal(real_id=rid, flags=int(abi.ConnFlags.SYNCED), last_seen_ns=seen)
        )
        res.applied += 1
    return res


class _Delayed:
    """What both batchers share: a partial batch leaves at most `max_delay`
    after its first record arrived (run() is the timer task)."""

    pending: Sized

    def __init__(self, max_delay: float) -> None:
        self.max_delay = max_delay
        self.first_at = 0.0
        self._wake = asyncio.Event()
        self.stats: Counter[str] = Counter()

    def _first(self) -> None:
        """A record arrived into an empty batch: its clock starts."""
        self.first_at = time.monotonic()
        self._wake.set()

    def flush(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Flush whatever has waited max_delay; sleep while idle."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                wait = self.first_at + self.max_delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.pending and time.monotonic() - self.first_at >= self.max_delay:
                    self.flush()


class Batcher(_Delayed):
    """Collects records and hands them out in datagram-sized batches, at most
    `max_delay` after the first record of a batch arrived."""

    def __init__(
        self, send: Callable[[list[ConnRecord]], None], max_delay: float = MAX_DELAY_S
    ) -> None:
        super().__init__(max_delay)
        self.send = send
        self.room = wire.MAX_DATAGRAM - wire.HEADER.size - wire.MAC_LEN
        self.pending: list[ConnRecord] = []
        self.used = 0

    def add(self, r: ConnRecord) -> None:
        if self.used + r.size > self.room:
            self.flush()
        if not self.pending:
            self._first()
        self.pending.append(r)
        self.used += r.size
        if self.used + wire.record_size(4, 4) > self.room:
            self.flush()  # full: no point waiting

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending, self.used = self.pending, [], 0
        self.stats["datagrams"] += 1
        self.stats["records"] += len(batch)
        self.stats["bytes"] += sum(r.size for r in batch) + wire.HEADER.size + wire.MAC_LEN
        self.send(batch)


class GapTracker:
    """Sequence gaps per sender epoch: a lost sync datagram means flows this
    node does not know; counted and shown, and healed by the next bulk resync."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[int, int]] = {}  # sender -> (epoch, seq)
        self.gaps = 0

    def see(self, sender: int, epoch: int, seq: int) -> int:
        """Datagrams missing before this one (0 normally)."""
        prev = self.last.get(sender)
        self.last[sender] = (epoch, max(seq, prev[1]) if prev and prev[0] == epoch else seq)
        if prev is None or prev[0] != epoch or seq <= prev[1]:
            return 0
        missing = seq - prev[1] - 1
        self.gaps += missing
        return missing


class RawBatcher(_Delayed):
    """Batcher for records already encoded (fixed size, e.g. codec.REC4_DT):
    fills datagrams with whole records and sends a partial one at most
    `max_delay` after its first record arrived. The fast path for the stream."""

    def __init__(
        self,
        send: Callable[[bytes, int], None],
        record_size: int,
        max_delay: float = MAX_DELAY_S,
    ) -> None:
        super().__init__(max_delay)
        self.send = send
        self.size = record_size
        room = wire.MAX_DATAGRAM - wire.HEADER.size - wire.MAC_LEN
        self.per = room // record_size
        self.pending: bytearray = bytearray()

    def add(self, payload: bytes, count: int) -> None:
        if not count:
            return
        if not self.pending:
            self._first()
        self.pending += payload
        full = len(self.pending) // (self.per * self.size)
        if full:
            self._send(full * self.per)

    def _send(self, records: int) -> None:
        step = self.per * self.size
        data, self.pending = (
            self.pending[: records * self.size],
            self.pending[records * self.size :],
        )
        for off in range(0, len(data), step):
            chunk = bytes(data[off : off + step])
            n = len(chunk) // self.size
            self.stats["datagrams"] += 1
            self.stats["records"] += n
            self.stats["bytes"] += len(chunk) + wire.HEADER.size + wire.MAC_LEN
            self.send(chunk, n)
        if self.pending:
            self.first_at = time.monotonic()

    def flush(self) -> None:
        if self.pending:
            self._send(len(self.pending) // self.size)
