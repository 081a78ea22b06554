"""A BPF ring buffer consumer over the system libbpf (ring_buffer__*).

The data plane writes one event per new or changed connection entry; the
daemon consumes them from the event loop (the ring buffer's epoll fd is
readable when records are waiting) and hands each record's bytes to a
callback. Records are copied out before the callback returns to libbpf.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

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
