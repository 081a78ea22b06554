"""Connection records in bulk: conn_table chunks -> wire records, and wire
records -> conn_table batch writes, with numpy, so a 1M-entry resync and a
100k flows/s stream do not go through one Python object per flow.

The byte layouts are the ones of cluster/wire.py (records) and abi.FlowKey /
abi.ConnVal (map entries); `tests/unit/test_codec.py` checks every fast path
against the record-by-record reference (wire.encode_record, sync.apply_records).
Anything the fast path does not cover (IPv6 flows or reals, deletes) goes
through the reference path.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
from collections.abc import Container, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from carom import abi
from carom.cluster import sync, wire
from carom.cluster.wire import ConnRecord, Op

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

KEY_DT = np.dtype(
    [
        ("src", "u1", (16,)),
        ("dst", "u1", (16,)),
        ("sport", "u1", (2,)),  # network order, copied as bytes
        ("dport", "u1", (2,)),
        ("proto", "u1"),
        ("family", "u1"),
        ("pad", "u1", (2,)),
    ]
)
VAL_DT = np.dtype(
    [
        ("real_id", "<u4"),
        ("flags", "<u2"),
        ("ttl", "u1"),
        ("reserved", "u1"),
        ("last_seen_ns", "<u8"),
    ]
)
# An IPv4 flow to an IPv4 real: wire.encode_record's 24 bytes.
REC4_DT = np.dtype(
    [
        ("op", "u1"),
        ("fam", "u1"),
        ("proto", "u1"),
        ("pad", "u1"),
        ("src", "u1", (4,)),
        ("dst", "u1", (4,)),
        ("sport", "u1", (2,)),
        ("dport", "u1", (2,)),
        ("real", ">u4"),
        ("idle_ms", ">u4"),
    ]
)
assert KEY_DT.itemsize == ctypes.sizeof(abi.FlowKey)
assert VAL_DT.itemsize == ctypes.sizeof(abi.ConnVal)
assert REC4_DT.itemsize == wire.record_size(4, 4)
IDLE_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class RealMap:
    """This node's reals, both ways: id -> address (to send) and address -> id
    (to receive); ids are local to each director, addresses are not."""

    by_id: Mapping[int, Address]
    by_address: Mapping[Address, int]

    @classmethod
    def of(cls, real_ids: Mapping[Address, int]) -> RealMap:
        return cls({rid: a for a, rid in real_ids.items()}, dict(real_ids))

    @functools.cached_property
    def v4_lut(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.bool_]]:
        """id -> IPv4 address as an integer, and whether the id is an IPv4 real."""
        size = max(self.by_id, default=0) + 1
        addr = np.zeros(size, dtype=np.uint32)
        ok = np.zeros(size, dtype=bool)
        for rid, a in self.by_id.items():
            if a.version == 4:
                addr[rid] = int(a)
                ok[rid] = True
        return addr, ok

    @functools.cached_property
    def v4_sorted(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
        """IPv4 real addresses sorted, and their ids in the same order."""
        pairs = sorted((int(a), rid) for a, rid in self.by_address.items() if a.version == 4)
        return (
            np.array([p[0] for p in pairs], dtype=np.uint32),
            np.array([p[1] for p in pairs], dtype=np.uint32),
        )


@dataclass
class Encoded:
    """One table chunk as wire records."""

    fast: bytes  # IPv4 records, REC4_DT packed
    fast_count: int
    slow: list[ConnRecord]  # everything else
    unknown_real: int  # entries naming a real id this node does not know


def encode_entries(
    keys: bytes, values: bytes, count: int, reals: RealMap, now_ns: int, idle_limit_ns: int
) -> Encoded:
    """conn_table entries (packed, as map_lookup_batch_raw returns them) -> UPSERT
    records. Entries idle for longer than `idle_limit_ns` are expired: left out."""
    k = np.frombuffer(keys, dtype=KEY_DT, count=count)
    v = np.frombuffer(values, dtype=VAL_DT, count=count)
    idle_ns = np.maximum(np.int64(now_ns) - v["last_seen_ns"].astype(np.int64), 0)
    live = idle_ns <= idle_limit_ns
    lut_addr, lut_ok = reals.v4_lut
    rid = v["real_id"].astype(np.int64)
    known_id = rid < len(lut_ok)
    rid_safe = np.where(known_id, rid, 0)
    real_v4 = known_id & lut_ok[rid_safe]
    fast = live & real_v4 & (k["family"] == int(abi.Family.IPV4))
    out = np.zeros(int(fast.sum()), dtype=REC4_DT)
    kf = k[fast]
    out["op"] = int(Op.UPSERT)
    out["proto"] = kf["proto"]
    out["src"] = kf["src"][:, :4]
    out["dst"] = kf["dst"][:, :4]
    out["sport"] = kf["sport"]
    out["dport"] = kf["dport"]
    out["real"] = lut_addr[rid_safe[fast]]
    out["idle_ms"] = np.minimum(idle_ns[fast] // 1_000_000, IDLE_MAX)
    slow: list[ConnRecord] = []
    unknown = 0
    for i in np.flatnonzero(live & ~fast):
        key = abi.FlowKey.from_buffer_copy(keys, int(i) * KEY_DT.itemsize)
        real = reals.by_id.get(int(rid[i]))
        if real is None:
            unknown += 1
            continue
        slow.append(sync.record_of(Op.UPSERT, key, real, int(idle_ns[i]) // 1_000_000))
    return Encoded(out.tobytes(), len(out), slow, unknown)


EVENT_DT = np.dtype(
    [("key", "V40"), ("real_id", "<u4"), ("flags", "<u2"), ("kind", "u1"), ("ttl", "u1")]
)
assert EVENT_DT.itemsize == ctypes.sizeof(abi.ConnEventRecord)


def encode_events(raw: bytes, reals: RealMap, now_ns: int) -> Encoded:
    """conn_events ring-buffer records (packed, abi.ConnEventRecord) -> UPSERT
    records: the same encoding as a table dump, one numpy pass per drain."""
    n = len(raw) // EVENT_DT.itemsize
    ev = np.frombuffer(raw, dtype=EVENT_DT, count=n)
    vals = np.zeros(n, dtype=VAL_DT)
    vals["real_id"] = ev["real_id"]
    vals["last_seen_ns"] = now_ns
    return encode_entries(ev["key"].tobytes(), vals.tobytes(), n, reals, now_ns, 1 << 62)


def payloads(enc: Encoded, room: int) -> list[tuple[bytes, int]]:
    """Split encoded records into (payload, count) pieces of at most `room` bytes."""
    out: list[tuple[bytes, int]] = []
    per = max(1, room // REC4_DT.itemsize)
    for start in range(0, enc.fast_count, per):
        n = min(per, enc.fast_count - start)
        out.append((enc.fast[start * REC4_DT.itemsize : (start + n) * REC4_DT.itemsize], n))
    for batch in wire.pack_records(enc.slow, room + wire.HEADER.size + wire.MAC_LEN):
        out.append((b"".join(wire.encode_record(r) for r in batch), len(batch)))
    return out


@dataclass
class Applied:
    """What one payload did to the table."""

    applied: int = 0  # entries written or deleted
    unknown_real: int = 0  # records naming a real this node does not have
    skipped: int = 0  # snapshot records for flows the live stream already updated
    keys: list[bytes] | None = None  # packed keys touched (when asked for)


def _fast_records(payload: bytes, count: int) -> npt.NDArray[np.void] | None:
    """The payload as REC4_DT, if every record is an IPv4 upsert to an IPv4 real."""
    if count == 0 or len(payload) != count * REC4_DT.itemsize:
        return None
    r = np.frombuffer(payload, dtype=REC4_DT, count=count)
    if (r["fam"] != 0).any() or (r["op"] != int(Op.UPSERT)).any():
        return None
    return r


def apply_payload(
    payload: bytes,
    count: int,
    conns: sync.ConnMap,
    reals: RealMap,
    now_ns: int,
    skip: Container[bytes] = (),
    want_keys: bool = False,
) -> Applied:
    """Write a CONN_SYNC or BULK_CHUNK payload into the connection table: one
    batch write for IPv4 records, the reference path for the rest. Raises
    WireError for a payload that does not decode (nothing is written then).
    Records whose packed key is in `skip` are left out (bulk de-duplication)."""
    res = Applied(keys=[] if want_keys else None)
    r = _fast_records(payload, count)
    if r is None:
        records = wire.decode_records(payload, count)
        todo = []
        for rec in records:
            kb = bytes(sync.key_of(rec))
            if kb in skip:
                res.skipped += 1
                continue
            todo.append(rec)
            if res.keys is not None:
                res.keys.append(kb)
        got = sync.apply_records(todo, conns, reals.by_address, now_ns)
        res.applied, res.unknown_real = got.applied, got.unknown_real
        return res
    addrs, ids = reals.v4_sorted
    pos = np.searchsorted(addrs, r["real"].astype(np.uint32)) if len(addrs) else None
    if pos is None:
        known = np.zeros(count, dtype=bool)
        pos = np.zeros(count, dtype=np.int64)
    else:
        pos = np.minimum(pos, len(addrs) - 1)
        known = addrs[pos] == r["real"]
    keys = np.zeros(count, dtype=KEY_DT)
    keys["src"][:, :4] = r["src"]
    keys["dst"][:, :4] = r["dst"]
    keys["sport"] = r["sport"]
    keys["dport"] = r["dport"]
    keys["proto"] = r["proto"]
    keys["family"] = int(abi.Family.IPV4)
    keep = known.copy()
    if skip or res.keys is not None:
        raw = keys.tobytes()
        size = KEY_DT.itemsize
        packed = [raw[i * size : (i + 1) * size] for i in range(count)]
        if skip:
            dup = np.fromiter((kb in skip for kb in packed), dtype=bool, count=count)
            res.skipped = int((dup & known).sum())
            keep &= ~dup
        if res.keys is not None:
            res.keys.extend(kb for kb, k in zip(packed, keep, strict=True) if k)
    res.unknown_real = int((~known).sum())
    n = int(keep.sum())
    if n:
        vals = np.zeros(n, dtype=VAL_DT)
        vals["real_id"] = ids[pos[keep]]
        vals["flags"] = int(abi.ConnFlags.SYNCED)
        idle = r["idle_ms"][keep].astype(np.int64) * 1_000_000
        vals["last_seen_ns"] = np.maximum(np.int64(now_ns) - idle, 0)
        update_raw = getattr(conns, "update_batch_raw", None)
        if update_raw is not None:
            update_raw(keys[keep].tobytes(), vals.tobytes(), n)
        else:  # a plain ConnMap (tests): entry by entry
            kk, vv = keys[keep].tobytes(), vals.tobytes()
            for i in range(n):
                conns.update(
                    abi.FlowKey.from_buffer_copy(kk, i * KEY_DT.itemsize),
                    abi.ConnVal.from_buffer_copy(vv, i * VAL_DT.itemsize),
                )
        res.applied = n
    return res
