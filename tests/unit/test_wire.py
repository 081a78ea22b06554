"""Golden tables for the cluster wire format (ExaBGP style): each message with
its exact bytes, decoded back to the same value; and every way a datagram can
be bad, with the drop reason it must get."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carom.cluster import wire
from carom.cluster.wire import ConnRecord, Header, Heartbeat, MsgType, Op, Role

ip = ipaddress.ip_address
KEY = b"k" * 32

RECORDS = [
    (
        ConnRecord(
            Op.UPSERT, 6, ip("198.51.100.10"), ip("192.0.2.100"), 40000, 80, ip("192.0.2.11"), 0
        ),
        "01000600c633640ac00002649c400050c000020b00000000",
    ),
    (
        ConnRecord(
            Op.DELETE, 17, ip("198.51.100.11"), ip("192.0.2.100"), 5353, 53, ip("192.0.2.12"), 1500
        ),
        "02001100c633640bc000026414e90035c000020c000005dc",
    ),
    (
        ConnRecord(
            Op.UPSERT,
            6,
            ip("2001:db8:1::10"),
            ip("2001:db8:2::100"),
            443,
            443,
            ip("2001:db8:2::11"),
            7,
        ),
        "01030600"
        "20010db8000100000000000000000010"
        "20010db8000200000000000000000100"
        "01bb01bb"
        "20010db8000200000000000000000011"
        "00000007",
    ),
    (  # an IPv4 flow to a real reached over IPv6 is representable (tunnel modes)
        ConnRecord(
            Op.UPSERT, 6, ip("198.51.100.10"), ip("192.0.2.100"), 1, 2, ip("2001:db8:2::11"), 0
        ),
        "01020600c633640ac00002640001000220010db800020000000000000000001100000000",
    ),
]


@pytest.mark.parametrize(("record", "hexed"), RECORDS)
def test_record_golden(record: ConnRecord, hexed: str) -> None:
    raw = wire.encode_record(record)
    assert raw.hex() == hexed
    assert len(raw) == record.size
    assert wire.decode_records(raw, 1) == [record]


HB = Heartbeat("dir1", 200, Role.ACTIVE, True, False, bytes(range(16)), 123456)
HB_HEX = "c8030100000102030405060708090a0b0c0d0e0f0001e2400464697231"


def test_heartbeat_golden() -> None:
    assert wire.encode_heartbeat(HB).hex() == HB_HEX
    assert wire.decode_heartbeat(bytes.fromhex(HB_HEX)) == HB


def test_datagram_golden() -> None:
    h = Header(MsgType.HEARTBEAT, sender=7, epoch=1_790_000_000_000, seq=42)
    dgram = wire.seal(KEY, h, wire.encode_heartbeat(HB))
    head = dgram[: wire.HEADER.size].hex()
    assert head == "43524d010100000000000007000001a0c4506c00000000000000002a"
    assert dgram[-16:].hex() == "355df0b4174427328dfa99b66be8b704"
    header, payload = wire.open_datagram(KEY, dgram)
    assert header == h and wire.decode_heartbeat(payload) == HB


def _sync(records: list[ConnRecord]) -> bytes:
    payload = b"".join(wire.encode_record(r) for r in records)
    h = Header(MsgType.CONN_SYNC, sender=1, epoch=5, seq=1, count=len(records))
    return wire.seal(KEY, h, payload)


def test_sync_datagram_roundtrip() -> None:
    records = [r for r, _ in RECORDS]
    header, payload = wire.open_datagram(KEY, _sync(records))
    assert header.count == 4 and wire.decode_records(payload, header.count) == records


def _reason(key: bytes, data: bytes) -> str:
    with pytest.raises(wire.WireError) as err:
        header, payload = wire.open_datagram(key, data)
        wire.decode_records(payload, header.count)
    return err.value.reason


def test_bad_datagrams_get_their_drop_reason() -> None:
    good = _sync([RECORDS[0][0]])
    assert _reason(KEY, good[:20]) == "truncated"
    assert _reason(b"other key", good) == "bad_mac"
    flipped = bytearray(good)
    flipped[30] ^= 1
    assert _reason(KEY, bytes(flipped)) == "bad_mac"
    newer = bytearray(good)
    newer[3] = 2
    assert _reason(KEY, bytes(newer)) == "version"
    assert _reason(KEY, b"XYZ" + good[3:]) == "malformed"
    # A correctly signed datagram whose count promises more records than it holds.
    h = Header(MsgType.CONN_SYNC, sender=1, epoch=5, seq=2, count=2)
    short = wire.seal(KEY, h, wire.encode_record(RECORDS[0][0]))
    assert _reason(KEY, short) == "truncated"
    h = Header(MsgType.CONN_SYNC, sender=1, epoch=5, seq=3, count=0)
    trailing = wire.seal(KEY, h, b"\x01")
    assert _reason(KEY, trailing) == "malformed"
    h = Header(MsgType.CONN_SYNC, sender=1, epoch=5, seq=4, count=1)
    bad_op = wire.seal(KEY, h, b"\x09" + wire.encode_record(RECORDS[0][0])[1:])
    assert _reason(KEY, bad_op) == "malformed"


def test_replay_window() -> None:
    w = wire.ReplayWindow()
    assert w.accept(10, 1) is None
    assert w.accept(10, 1) == "replay"
    assert w.accept(10, 3) is None
    assert w.accept(10, 2) is None  # reordered, within the window
    assert w.accept(10, 2) == "replay"
    assert w.accept(10, 3 + wire.ReplayWindow.WIDTH) is None
    assert w.accept(10, 3) == "replay"  # fell out of the window
    assert w.accept(11, 1) is None  # the sender restarted
    assert w.accept(10, 5000) == "replay"  # an older epoch never comes back


def test_pack_records_fills_datagrams_without_exceeding_them() -> None:
    r4 = RECORDS[0][0]
    batches = wire.pack_records([r4] * 200)
    room = wire.MAX_DATAGRAM - wire.HEADER.size - wire.MAC_LEN
    assert sum(len(b) for b in batches) == 200
    assert all(len(b) * r4.size <= room for b in batches)
    assert len(batches[0]) == room // r4.size  # 24-byte records: 56 a datagram
    for b in batches:
        h = Header(MsgType.CONN_SYNC, 1, 1, 1, len(b))
        payload = b"".join(wire.encode_record(r) for r in b)
        assert len(wire.seal(KEY, h, payload)) <= wire.MAX_DATAGRAM


addr4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
addr6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def records(draw: st.DrawFn) -> ConnRecord:
    fam = draw(st.sampled_from([addr4, addr6]))
    return ConnRecord(
        draw(st.sampled_from(list(Op))),
        draw(st.sampled_from([6, 17])),
        draw(fam),
        draw(fam),
        draw(st.integers(0, 65535)),
        draw(st.integers(0, 65535)),
        draw(st.one_of(addr4, addr6)),
        draw(st.integers(0, 2**32 - 1)),
    )


@given(st.lists(records(), max_size=40))
def test_any_records_roundtrip(rs: list[ConnRecord]) -> None:
    payload = b"".join(wire.encode_record(r) for r in rs)
    assert wire.decode_records(payload, len(rs)) == rs


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        header, payload = wire.open_datagram(KEY, data)
        wire.decode_records(payload, header.count)
    except wire.WireError:
        pass


# --- the health view (HEALTH_VIEW) ---------------------------------------------------

VIEW_PART = wire.ViewPart(
    generation=7,
    part=0,
    parts=2,
    entries=(
        wire.ViewEntry(
            ip("192.0.2.100"), 6, 80, ip("192.0.2.11"), 0, wire.ViewState.DOWN, move=True
        ),
        wire.ViewEntry(
            ip("2001:db8:2::100"), 17, 53, ip("2001:db8:2::11"), 30, wire.ViewState.SLOW_START
        ),
    ),
)
VIEW_HEX = (
    "0100"
    "0000"
    "0002"
    "00000007"  # format 1, flags, part 0 of 2, generation 7
    "00"
    "06"
    "0050"
    "c0000264"
    "c000020b"
    "00000000"
    "01"
    "01"  # v4, down, flows move
    "03"
    "11"
    "0035"
    "20010db8000200000000000000000100"
    "20010db8000200000000000000000011"
    "0000001e"
    "03"
    "00"  # weight 30, slow-start
)


def test_view_part_golden() -> None:
    raw = wire.encode_view_part(VIEW_PART)
    assert raw.hex() == VIEW_HEX
    assert wire.decode_view_part(raw, 2) == VIEW_PART
    h = Header(MsgType.HEALTH_VIEW, sender=7, epoch=1_790_000_000_000, seq=43, count=2)
    dgram = wire.seal(KEY, h, raw)
    assert dgram[: wire.HEADER.size].hex() == (
        "43524d01070000020000000700000" + "1a0c4506c00000000000000002b"
    )
    assert wire.open_datagram(KEY, dgram) == (h, raw)


def test_empty_view_is_one_empty_part() -> None:
    (p,) = wire.split_view(3, [])
    assert p == wire.ViewPart(3, 0, 1, ())
    assert wire.encode_view_part(p).hex() == "01000000000100000003"


@pytest.mark.parametrize(
    ("hexed", "count", "reason"),
    [
        ("0100000000010000", 0, "truncated"),  # short header
        ("0200000000010000000" + "3", 0, "version"),  # a newer view format
        ("01000001000100000003", 0, "malformed"),  # part 1 of 1
        ("01000000000100000003" + "0006", 1, "truncated"),
        ("01000000000100000003" + "04060050", 1, "malformed"),  # family bits
        ("01000000000100000003" + "00060050c0000264c000020b000000000901", 1, "malformed"),  # state
        ("01000000000100000003" + "00", 0, "malformed"),  # bytes after the entries
    ],
)
def test_bad_view_parts_get_their_drop_reason(hexed: str, count: int, reason: str) -> None:
    with pytest.raises(wire.WireError) as exc:
        wire.decode_view_part(bytes.fromhex(hexed), count)
    assert exc.value.reason == reason


def test_split_view_fills_datagrams_and_keeps_order() -> None:
    entries = [
        wire.ViewEntry(
            ip("192.0.2.100"), 6, 80, ip(f"10.0.{i // 250}.{i % 250}"), i, wire.ViewState.UP
        )
        for i in range(500)
    ]
    parts = wire.split_view(9, entries)
    assert len(parts) > 1 and {p.parts for p in parts} == {len(parts)}
    assert [e for p in parts for e in p.entries] == entries
    for p in parts:
        h = Header(MsgType.HEALTH_VIEW, 1, 1, 1, len(p.entries))
        assert len(wire.seal(KEY, h, wire.encode_view_part(p))) <= wire.MAX_DATAGRAM
