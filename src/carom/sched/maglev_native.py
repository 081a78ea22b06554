"""The compiled Maglev fill (maglev_fill.c, built by `make` into
_maglev_fill.so next to this file), loaded through ctypes like the libbpf layer.

Optional by design: without the library, maglev.py uses its numpy path, which
gives the same tables, only slower. The missing library is logged once.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

log = logging.getLogger("carom.maglev")

LIBRARY = Path(__file__).with_name("_maglev_fill.so")
# Must match CAROM_MAGLEV_ABI in maglev_fill.c; a stale build is not used.
ABI = 2
# Scratch kept per thread between builds stays below this; bigger tables get a
# buffer of their own for one build.
_KEEP_SCRATCH = 16 << 20

_I64P = ctypes.POINTER(ctypes.c_int64)
_U32P = ctypes.POINTER(ctypes.c_uint32)

_lock = threading.Lock()
_loaded = False
_lib: ctypes.CDLL | None = None
_scratch = threading.local()


def _load() -> ctypes.CDLL | None:
    """The library, or None (logged once) when it is absent or from another
    version of the source."""
    global _loaded, _lib
    with _lock:
        if _loaded:
            return _lib
        _loaded = True
        try:
            lib = ctypes.CDLL(str(LIBRARY))
            lib.carom_maglev_abi.restype = ctypes.c_int
            lib.carom_maglev_abi.argtypes = []
            if lib.carom_maglev_abi() != ABI:
                raise OSError(f"ABI {lib.carom_maglev_abi()} != {ABI}; rebuild with `make`")
            lib.carom_maglev_scratch_size.restype = ctypes.c_int64
            lib.carom_maglev_scratch_size.argtypes = [ctypes.c_int64, ctypes.c_int64]
            fn = lib.carom_maglev_fill
        except (OSError, AttributeError) as e:
            log.warning(
                "compiled Maglev helper unavailable (%s): using the numpy path, "
                "same tables but ~30 ms each; `make bpf` builds it",
                e,
            )
            return None
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64, _I64P, _I64P, _I64P, _U32P, ctypes.c_int64, _U32P]
        fn.argtypes += [ctypes.c_void_p, ctypes.c_int64]
        _lib = lib
        return lib


def available() -> bool:
    """Whether the compiled fill can be used in this process."""
    return _load() is not None


def _scratch_for(lib: ctypes.CDLL, n: int, size: int) -> npt.NDArray[np.uint64]:
    """Scratch memory for one build, reused by the thread's next builds: a fresh
    megabyte per build costs more in page faults than the fill itself."""
    need = int(lib.carom_maglev_scratch_size(n, size))
    words = -(-need // 8)
    buf: npt.NDArray[np.uint64] | None = getattr(_scratch, "buf", None)
    if buf is not None and len(buf) >= words:
        return buf
    buf = np.empty(words, dtype=np.uint64)  # 8-byte aligned, as the C side needs
    if need <= _KEEP_SCRATCH:
        _scratch.buf = buf
    return buf


def fill(
    offset: npt.NDArray[np.int64],
    skip: npt.NDArray[np.int64],
    quota: npt.NDArray[np.int64],
    value: npt.NDArray[np.uint32],
    size: int,
) -> npt.NDArray[np.uint32]:
    """The table value[owner of each slot], owner as maglev._fill_numpy computes
    it. ctypes drops the GIL for the call, so builds in an executor run in
    parallel (each thread has its own scratch)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"compiled Maglev helper {LIBRARY} is not available")
    args = [np.ascontiguousarray(a, dtype=np.int64) for a in (offset, skip, quota)]
    value = np.ascontiguousarray(value, dtype=np.uint32)
    n = len(args[0])
    if {len(a) for a in args} | {len(value)} != {n}:
        raise ValueError("offset, skip, quota and value must have one entry per real")
    scratch = _scratch_for(lib, n, size)
    out = np.empty(size, dtype=np.uint32)
    rc = lib.carom_maglev_fill(
        n,
        *(a.ctypes.data_as(_I64P) for a in args),
        value.ctypes.data_as(_U32P),
        size,
        out.ctypes.data_as(_U32P),
        scratch.ctypes.data,
        scratch.nbytes,
    )
    if rc != 0:
        raise ValueError(f"Maglev fill refused its input: quotas must be >= 1 and sum to {size}")
    return out
