"""A BPF ring buffer consumer over the system libbpf (ring_buffer__*).

The data plane writes one event per new or changed connection entry; the
daemon consumes them from the event loop (the ring buffer's epoll fd is
readable when records are waiting) and hands each record's bytes to a
callback. Records are copied out before the callback returns to libbpf.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import select
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from carom.bpf import libbpf
from carom.bpf.libbpf import BpfError, _sig

_SAMPLE_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_vp = ctypes.c_void_p
_new = _sig("ring_buffer__new", _vp, ctypes.c_int, _SAMPLE_CB, _vp, _vp)
_consume = _sig("ring_buffer__consume", ctypes.c_int, _vp)
_poll = _sig("ring_buffer__poll", ctypes.c_int, _vp, ctypes.c_int)
_epoll_fd = _sig("ring_buffer__epoll_fd", ctypes.c_int, _vp)
_free = _sig("ring_buffer__free", None, _vp)


class RingBuffer:
    """Consumes one BPF_MAP_TYPE_RINGBUF map."""

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        self.on_record = on_record
        self.errors = 0  # exceptions raised by the callback (counted, not propagated)
        self._cb = _SAMPLE_CB(self._sample)  # kept alive as long as the ring buffer
        self._rb = _new(map_fd, self._cb, None, None)
        if not self._rb:
            raise BpfError(ctypes.get_errno(), f"ring_buffer__new(fd {map_fd}) failed")

    def _sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        try:
            self.on_record(ctypes.string_at(data or 0, size))
        except Exception:
            self.errors += 1
        return 0

    def fileno(self) -> int:
        """An epoll fd that is readable while records wait: for loop.add_reader."""
        return int(_epoll_fd(self._rb))

    def consume(self) -> int:
        """Hand every waiting record to the callback; returns how many."""
        n = int(_consume(self._rb))
        if n < 0:
            raise BpfError(-n, "ring_buffer__consume failed")
        return n

    def poll(self, timeout_ms: int) -> int:
        n = int(_poll(self._rb, timeout_ms))
        if n < 0:
            raise BpfError(-n, "ring_buffer__poll failed")
        return n

    def close(self) -> None:
        if self._rb:
            _free(self._rb)
            self._rb = None


# --- the batch reader: the ring's pages mapped into this process --------------------

BUSY_BIT = 1 << 31  # record reserved, not yet committed (kernel/bpf/ringbuf.c)
DISCARD_BIT = 1 << 30  # record discarded by the program: skip it
HEADER = 8  # u32 len (with the two bits), u32 page offset
# The reader's loads and stores are plain (numpy on the mapping). On x86-64 they
# are ordered as the ring's protocol needs (acquire loads, release store); on
# CPUs with weaker ordering the libbpf consumer above is used instead.
BATCH_OK = platform.machine() in ("x86_64", "AMD64")


def _round8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class Parsed:
    data: bytes  # the payloads of `count` records of the expected size, in order
    count: int
    pos: int  # the new consumer position
    odd: int  # committed records of another size, skipped


def parse(data: npt.NDArray[np.uint8], cons: int, prod: int, mask: int, size: int) -> Parsed:
    """Records between the consumer and producer positions of a ring whose data
    area `data` is mapped twice in a row (a record that wraps is contiguous).
    Stops at the first record not yet committed. Each header is read once and
    every decision about its record is taken on that one reading (a header read
    twice could change in between: busy at the first reading, committed at the
    second)."""
    total = _round8(size + HEADER)
    fields = [("len", "<u4"), ("pgoff", "<u4"), ("data", f"V{size}")]
    if total > HEADER + size:
        fields.append(("pad", f"V{total - HEADER - size}"))
    rec = np.dtype(fields)
    parts: list[bytes] = []
    count = odd = 0
    pos = cons
    while pos < prod:
        off = pos & mask
        n = (prod - pos) // total
        if n:
            run = data[off : off + n * total].view(rec)
            lens = run["len"].copy()  # the headers, read once, before the payloads
            bad = np.flatnonzero(lens != size)
            k = int(bad[0]) if len(bad) else n
            if k:
                parts.append(run["data"][:k].tobytes())
                count += k
                pos += k * total
            if k == n:
                continue
            length = int(lens[k])
        else:  # less than a whole record of the expected size is left
            length = int(data[off : off + 4].view(np.uint32)[0])
        if length & BUSY_BIT:
            break  # not committed yet: the next read takes it
        sample = length & ~(BUSY_BIT | DISCARD_BIT)
        if not length & DISCARD_BIT:
            odd += 1
        pos += _round8(sample + HEADER)
    return Parsed(b"".join(parts), count, pos, odd)


class RingReader:
    """Consumes one BPF_MAP_TYPE_RINGBUF map in batches, without a callback per
    record: the consumer page and the data pages (mapped twice, so a record that
    wraps is contiguous) are mapped here, and a read takes every record committed
    when it starts, with one numpy pass for runs of records of the expected size.

    Why: libbpf's ring_buffer__consume calls back into Python once per record
    (a few microseconds each) and keeps going while the producer keeps up, so at
    ~200k records/s it never returned and starved the daemon's event loop. A
    read here is bounded by the producer position it saw first."""

    def __init__(self, map_fd: int) -> None:
        size = int(libbpf.map_info(map_fd).max_entries)
        page = mmap.PAGESIZE
        self.size, self.mask = size, size - 1
        self.odd = 0  # committed records of another size than asked for (skipped)
        self._cons_map = mmap.mmap(
            map_fd, page, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._data_map = mmap.mmap(
            map_fd, page + 2 * size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=page
        )
        self._cons = np.frombuffer(self._cons_map, dtype=np.uint64, count=1)
        self._prod = np.frombuffer(self._data_map, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._data_map, dtype=np.uint8, offset=page)
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def fileno(self) -> int:
        """Readable while records wait: for loop.add_reader."""
        return self._epoll.fileno()

    def read(self, record_size: int) -> tuple[bytes, int]:
        """The payloads of every record committed now, oldest first, as one
        string of `record_size`-byte records, and their count. Records of
        another size are skipped and counted in `odd`."""
        cons, prod = int(self._cons[0]), int(self._prod[0])
        if cons >= prod:
            return b"", 0
        got = parse(self._data, cons, prod, self.mask, record_size)
        self.odd += got.odd
        self._cons[0] = got.pos  # after the copies: the kernel may now reuse the space
        return got.data, got.count

    def close(self) -> None:
        self._epoll.close()
        del self._cons, self._prod, self._data
        self._cons_map.close()
        self._data_map.close()
