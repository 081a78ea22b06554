"""The batch ring reader's parser (carom.bpf.ringbuf.parse) on a ring built
here, laid out as the kernel lays out a BPF ring buffer: 8-byte headers (length
with the busy and discard bits, page offset), records padded to 8 bytes, the
data area seen twice in a row. The reader on the kernel's own ring is tested in
tests/packets/test_conn_events.py."""

from __future__ import annotations

import struct

import numpy as np

from carom.bpf.ringbuf import BUSY_BIT, DISCARD_BIT, parse

SIZE = 128  # ring bytes
REC = 12  # payload of the expected records: 8 + 12 -> 24 bytes with padding


class Ring:
    def __init__(self) -> None:
        self.buf = bytearray(SIZE)
        self.prod = 0

    def put(self, payload: bytes, bits: int = 0) -> int:
        pos = self.prod
        rec = struct.pack("<II", len(payload) | bits, 0) + payload
        rec += bytes(-len(rec) % 8)
        for i, b in enumerate(rec):
            self.buf[(pos + i) % SIZE] = b
        self.prod += len(rec)
        return pos

    def set_bits(self, pos: int, length: int) -> None:
        for i, b in enumerate(struct.pack("<I", length)):
            self.buf[(pos + i) % SIZE] = b

    def data(self) -> np.ndarray:
        return np.frombuffer(bytes(self.buf) * 2, dtype=np.uint8)


def p(i: int) -> bytes:
    return bytes([i]) * REC


def test_records_in_order_odd_and_discarded_skipped_stops_at_busy() -> None:
    r = Ring()
    r.put(p(1))
    r.put(p(2), DISCARD_BIT)  # the program discarded it: skipped, not odd
    r.put(b"x" * 4)  # another size: skipped, counted
    busy = r.put(p(3), BUSY_BIT)  # reserved, not committed yet
    got = parse(r.data(), 0, r.prod, SIZE - 1, REC)
    assert (got.data, got.count, got.odd, got.pos) == (p(1), 1, 1, busy)
    r.set_bits(busy, REC)  # committed now: the next read takes it
    r.put(p(4))
    got = parse(r.data(), busy, r.prod, SIZE - 1, REC)
    assert (got.data, got.count, got.odd, got.pos) == (p(3) + p(4), 2, 0, r.prod)


def test_records_across_the_end_of_the_ring_are_read_whole() -> None:
    r = Ring()
    cons = 0
    seen = b""
    for i in range(1, 12):  # 11 records of 24 bytes through a 128-byte ring, twice around
        r.put(p(i))
        if i % 2 == 0:
            got = parse(r.data(), cons, r.prod, SIZE - 1, REC)
            seen += got.data
            cons = got.pos
    got = parse(r.data(), cons, r.prod, SIZE - 1, REC)
    assert seen + got.data == b"".join(p(i) for i in range(1, 12))
    assert got.pos == r.prod == 11 * 24


def test_nothing_committed_reads_nothing() -> None:
    r = Ring()
    busy = r.put(p(1), BUSY_BIT)
    got = parse(r.data(), 0, r.prod, SIZE - 1, REC)
    assert (got.data, got.count, got.pos) == (b"", 0, busy)
