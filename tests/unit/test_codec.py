"""The numpy fast paths of cluster/codec.py against the record-by-record
reference (wire.encode_record / decode_records, sync.record_of / apply_records)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from carom import abi
from carom.cluster import codec, sync, wire
from carom.cluster.wire import ConnRecord, Op

ip = ipaddress.ip_address
NOW = 10**15
REALS = {ip("192.0.2.11"): 3, ip("192.0.2.12"): 7, ip("2001:db8:2::11"): 9}


class DictMap:
    """A connection table as a dict, keyed by packed FlowKey (pure logic only)."""

    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}

    def update(self, key: object, value: object) -> None:
        self.d[bytes(key)] = bytes(value)  # type: ignore[call-overload]

    def delete(self, key: object) -> bool:
        return self.d.pop(bytes(key), None) is not None  # type: ignore[call-overload]

    def update_batch_raw(self, keys: bytes, values: bytes, count: int) -> None:
        ks, vs = codec.KEY_DT.itemsize, codec.VAL_DT.itemsize
        for i in range(count):
            self.d[keys[i * ks : (i + 1) * ks]] = values[i * vs : (i + 1) * vs]


def _entries(n: int, seed: int = 1) -> list[tuple[abi.FlowKey, abi.ConnVal]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        v6 = i % 7 == 3
        src = ip(f"2001:db8:1::{i + 1:x}") if v6 else ip(f"198.51.{i // 250}.{i % 250 + 1}")
        dst = ip("2001:db8:2::100") if v6 else ip("192.0.2.100")
        rid = 9 if v6 else rnd.choice([3, 7, 3, 7, 42])  # 42: an id this node does not know
        key = sync.key_of(ConnRecord(Op.UPSERT, rnd.choice([6, 17]), src, dst, 1024 + i, 80, src))
        val = abi.ConnVal(real_id=rid, flags=0, ttl=64, last_seen_ns=NOW - rnd.randrange(10**10))
        out.append((key, val))
    return out


def _packed(entries: list[tuple[abi.FlowKey, abi.ConnVal]]) -> tuple[bytes, bytes]:
    return b"".join(bytes(k) for k, _ in entries), b"".join(bytes(v) for _, v in entries)


def test_encode_matches_the_reference() -> None:
    entries = _entries(300)
    reals = codec.RealMap.of(REALS)
    keys, values = _packed(entries)
    enc = codec.encode_entries(keys, values, len(entries), reals, NOW, 5 * 10**9)
    got = wire.decode_records(enc.fast, enc.fast_count) + enc.slow
    want = []
    unknown = 0
    for k, v in entries:
        idle = NOW - v.last_seen_ns
        if idle > 5 * 10**9:
            continue
        real = reals.by_id.get(v.real_id)
        if real is None:
            unknown += 1
            continue
        want.append(sync.record_of(Op.UPSERT, k, real, idle // 1_000_000))
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert enc.unknown_real == unknown
    assert enc.fast_count > 0 and enc.slow  # both paths were exercised


def test_payloads_fit_and_carry_everything() -> None:
    entries = _entries(500)
    keys, values = _packed(entries)
    enc = codec.encode_entries(keys, values, 500, codec.RealMap.of(REALS), NOW, 10**12)
    pieces = codec.payloads(enc, 1400 - wire.HEADER.size - wire.MAC_LEN)
    assert all(len(p) <= 1400 - wire.HEADER.size - wire.MAC_LEN for p, _ in pieces)
    assert sum(n for _, n in pieces) == enc.fast_count + len(enc.slow)


def test_apply_fast_equals_reference() -> None:
    entries = _entries(400)
    reals = codec.RealMap.of(REALS)
    keys, values = _packed(entries)
    enc = codec.encode_entries(keys, values, 400, reals, NOW, 10**12)
    fast, ref = DictMap(), DictMap()
    res = codec.apply_payload(enc.fast, enc.fast_count, fast, reals, NOW)
    sync.apply_records(wire.decode_records(enc.fast, enc.fast_count), ref, REALS, NOW)
    assert res.applied == enc.fast_count and res.unknown_real == 0
    assert fast.d == ref.d
    # the receiver marks every entry SYNCED and keeps the sender's idle time
    for raw in fast.d.values():
        v = abi.ConnVal.from_buffer_copy(raw)
        assert v.flags == abi.ConnFlags.SYNCED and v.last_seen_ns <= NOW


def test_apply_counts_unknown_reals_and_skips_newer_flows() -> None:
    reals_sender = codec.RealMap.of({ip("192.0.2.11"): 1, ip("192.0.2.99"): 2})
    reals_here = codec.RealMap.of({ip("192.0.2.11"): 5})
    entries = [
        (k, abi.ConnVal(real_id=1 + i % 2, last_seen_ns=NOW))
        for i, (k, _) in enumerate(e for e in _entries(40) if e[0].family == 4)
    ]
    keys, values = _packed(entries)
    enc = codec.encode_entries(keys, values, len(entries), reals_sender, NOW, 10**12)
    skip = {bytes(entries[0][0])}
    m = DictMap()
    res = codec.apply_payload(enc.fast, enc.fast_count, m, reals_here, NOW, skip=skip)
    assert res.unknown_real == sum(1 for _, v in entries if v.real_id == 2)
    assert res.skipped == 1
    assert bytes(entries[0][0]) not in m.d
    assert res.applied == len(m.d) == len(entries) - res.unknown_real - 1


def test_bad_payload_is_refused_and_writes_nothing() -> None:
    m = DictMap()
    with pytest.raises(wire.WireError):
        codec.apply_payload(b"\x01\x05" + bytes(22), 1, m, codec.RealMap.of(REALS), NOW)
    assert not m.d


def test_ring_records_encode_like_table_entries() -> None:
    """conn_events records (abi.ConnEventRecord, as the data plane writes them)
    encode to the same records as the reference path, with idle 0."""
    entries = _entries(100)
    raw = b"".join(
        bytes(abi.ConnEventRecord(key=k, real_id=v.real_id, kind=int(abi.ConnEventKind.NEW)))
        for k, v in entries
    )
    reals = codec.RealMap.of(REALS)
    enc = codec.encode_events(raw, reals, NOW)
    got = wire.decode_records(enc.fast, enc.fast_count) + enc.slow
    want = [
        sync.record_of(Op.UPSERT, k, reals.by_id[v.real_id], 0)
        for k, v in entries
        if v.real_id in reals.by_id
    ]
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert enc.unknown_real == sum(1 for _, v in entries if v.real_id not in reals.by_id)


def test_raw_batcher_fills_datagrams_with_whole_records() -> None:
    sent: list[tuple[bytes, int]] = []
    b = sync.RawBatcher(lambda p, n: sent.append((p, n)), codec.REC4_DT.itemsize)
    rec = bytes(range(24))
    b.add(rec * 100, 100)  # one full datagram goes at once, the rest waits
    assert [n for _, n in sent] == [b.per] and b.per == 56
    assert all(len(p) == n * 24 for p, n in sent)
    b.flush()
    assert [n for _, n in sent] == [56, 44]
    assert b.stats["records"] == 100 and not b.pending
