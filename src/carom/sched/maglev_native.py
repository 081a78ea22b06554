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
ABI = 1

_I64P = ctypes.POINTER(ctypes.c_int64)

_lock = threading.Lock()
_loaded = False
_fill_fn: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]


def _load() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The C function, or None (logged once) when the library is absent or
    from another version of the source."""
    global _loaded, _fill_fn
    with _lock:
        if _loaded:
            return _fill_fn
        _loaded = True
        try:
            lib = ctypes.CDLL(str(LIBRARY))
            lib.carom_maglev_abi.restype = ctypes.c_int
            lib.carom_maglev_abi.argtypes = []
            if lib.carom_maglev_abi() != ABI:
                raise OSError(f"ABI {lib.carom_maglev_abi()} != {ABI}; rebuild with `make`")
            fn = lib.carom_maglev_fill
        except (OSError, AttributeError) as e:
            log.warning(
                "compiled Maglev helper unavailable (%s): using the numpy path, "
                "same tables but ~30 ms each; `make bpf` builds it",
                e,
            )
            return None
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_int64,
            _I64P,
            _I64P,
            _I64P,
            ctypes.c_int64,
            ctypes.POINTER(ctypes.c_int32),
        ]
        _fill_fn = fn
        return fn


def available() -> bool:
    """Whether the compiled fill can be used in this process."""
    return _load() is not None


def fill(
    offset: npt.NDArray[np.int64],
    skip: npt.NDArray[np.int64],
    quota: npt.NDArray[np.int64],
    size: int,
) -> npt.NDArray[np.int32]:
    """Owner of every slot, as maglev._fill_numpy computes it. ctypes drops the
    GIL for the call, so builds in an executor run in parallel."""
    fn = _load()
    if fn is None:
        raise RuntimeError(f"compiled Maglev helper {LIBRARY} is not available")
    args = [np.ascontiguousarray(a, dtype=np.int64) for a in (offset, skip, quota)]
    owner = np.empty(size, dtype=np.int32)
    rc = fn(
        len(args[0]),
        *(a.ctypes.data_as(_I64P) for a in args),
        size,
        owner.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
    )
    if rc == -2:
        raise ValueError(f"Maglev fill refused its input: quotas must be >= 1 and sum to {size}")
    if rc != 0:
        raise MemoryError(f"out of memory filling a {size}-slot Maglev table")
    return owner
