"""How Maglev rows reach the `maglev` map and come back from it.

The map is created BPF_F_MMAPABLE (bpf/maps.h): its memory is mapped into the
daemon and a row's changed slots are stored through a numpy view, at memcpy
speed, where a batched update costs a syscall element copy per slot (~0.25 us:
268M slots at 4096 services took over a minute). A pinned map of an older
layout, created without the flag, is written with batched updates until the
layout migration replaces it (bpf/migrate.py)."""

from __future__ import annotations

import numpy as np

from carom.bpf.maps import TypedMap


def slot_view(m: TypedMap) -> np.ndarray | None:
    """The array's slots as uint32 over its mapped memory (elements are 8 bytes
    apart: the kernel rounds array values up to 8), or None if it is not mapped."""
    mem = m.mapped()
    if mem is None:
        return None
    return np.ndarray((m.max_entries,), dtype="<u4", buffer=mem, strides=(m.elem_size,))


class MaglevRows:
    """Rows of `size` slots, row `sid` at slot sid * size."""

    def __init__(self, m: TypedMap, size: int) -> None:
        self.map = m
        self.size = size
        self.slots = slot_view(m)  # None: batched syscalls

    def read(self, sid: int) -> np.ndarray:
        """A copy of row `sid`, read-only."""
        lo = sid * self.size
        if self.slots is not None:
            row = np.array(self.slots[lo : lo + self.size])
        else:
            row = np.frombuffer(self.map.read_range(lo, self.size), dtype=np.uint32).copy()
        row.flags.writeable = False
        return row

    def write(self, sid: int, old_row: np.ndarray, row: np.ndarray) -> int:
        """Write the slots of row `sid` where `row` differs from `old_row` (what
        the map holds); the number of slots written. A store through the mapping
        counts as one write, as one element of a batched update does."""
        changed = np.flatnonzero(old_row != row)
        if not len(changed):
            return 0
        base = sid * self.size
        if self.slots is not None:
            # Aligned 4-byte stores: the program reads each slot whole, old or
            # new. They are all done before the services write (a syscall) that
            # points a service at this row.
            if len(changed) == self.size:
                self.slots[base : base + self.size] = row
            else:
                self.slots[base + changed] = row[changed]
            return len(changed)
        idx = (changed + base).astype(np.uint32)
        vals = np.ascontiguousarray(row[changed], dtype=np.uint32)
        self.map.update_batch_raw(idx.tobytes(), vals.tobytes(), len(idx))
        return len(idx)
