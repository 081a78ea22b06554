"""Connection sync, pure parts: record <-> conn_table conversion, applying
records to a table (a dict standing in for the BPF map; the kernel map is
exercised in the dataplane tests), batching and gap counting."""

from __future__ import annotations

import asyncio
import ipaddress

from carom import abi
from carom.cluster import sync, wire
from carom.cluster.wire import ConnRecord, Op

ip = ipaddress.ip_address


class DictMap:
    def __init__(self) -> None:
        self.d: dict[bytes, abi.ConnVal] = {}

    def update(self, key: object, value: object) -> None:
        assert isinstance(key, abi.FlowKey) and isinstance(value, abi.ConnVal)
        self.d[key.to_bytes()] = value

    def delete(self, key: object) -> bool:
        assert isinstance(key, abi.FlowKey)
        return self.d.pop(key.to_bytes(), None) is not None


R4 = ConnRecord(
    Op.UPSERT, 6, ip("198.51.100.10"), ip("192.0.2.100"), 40000, 80, ip("192.0.2.11"), 1500
)
R6 = ConnRecord(
    Op.UPSERT, 17, ip("2001:db8:1::10"), ip("2001:db8:2::100"), 5353, 53, ip("2001:db8:2::12"), 0
)


def test_record_key_roundtrip() -> None:
    for r in (R4, R6):
        key = sync.key_of(r)
        assert sync.record_of(r.op, key, r.real, r.idle_ms) == r
        assert key.sport == abi.port_be(r.sport) and key.family == r.src.version


def test_apply_writes_synced_entries_with_the_senders_age() -> None:
    m = DictMap()
    ids = {ip("192.0.2.11"): 7, ip("2001:db8:2::12"): 9}
    now = 10_000_000_000
    res = sync.apply_records([R4, R6], m, ids, now)
    assert (res.applied, res.unknown_real) == (2, 0)
    v4 = m.d[sync.key_of(R4).to_bytes()]
    assert (v4.real_id, v4.flags, v4.last_seen_ns) == (7, abi.ConnFlags.SYNCED, now - 1_500_000_000)
    assert m.d[sync.key_of(R6).to_bytes()].real_id == 9
    gone = ConnRecord(
        Op.DELETE,
        *[getattr(R4, f) for f in ("proto", "src", "dst", "sport", "dport", "real", "idle_ms")],
    )
    assert sync.apply_records([gone], m, ids, now).applied == 1
    assert sync.key_of(R4).to_bytes() not in m.d


def test_a_real_unknown_here_is_counted_not_written() -> None:
    m = DictMap()
    res = sync.apply_records([R4], m, {}, 1)
    assert (res.applied, res.unknown_real, m.d) == (0, 1, {})


def test_batcher_fills_datagrams_and_flushes_after_max_delay() -> None:
    async def scenario() -> list[list[ConnRecord]]:
        sent: list[list[ConnRecord]] = []
        b = sync.Batcher(sent.append, max_delay=0.01)
        task = asyncio.create_task(b.run())
        for _ in range(60):  # 24-byte records: 56 fill a datagram, 4 wait
            b.add(R4)
        assert [len(x) for x in sent] == [56]
        await asyncio.sleep(0.05)
        assert [len(x) for x in sent] == [56, 4]
        b.add(R6)
        await asyncio.sleep(0.05)
        task.cancel()
        assert b.stats["records"] == 61 and b.stats["datagrams"] == 3
        return sent

    sent = asyncio.run(scenario())
    for batch in sent:
        payload = b"".join(wire.encode_record(r) for r in batch)
        h = wire.Header(wire.MsgType.CONN_SYNC, 1, 1, 1, len(batch))
        assert len(wire.seal(b"k" * 16, h, payload)) <= wire.MAX_DATAGRAM


def test_gap_tracker() -> None:
    g = sync.GapTracker()
    assert g.see(1, 100, 1) == 0
    assert g.see(1, 100, 2) == 0
    assert g.see(1, 100, 5) == 2
    assert g.see(1, 100, 4) == 0  # late arrival, not a new gap
    assert g.see(1, 200, 1) == 0  # restart: new epoch
    assert g.gaps == 2
