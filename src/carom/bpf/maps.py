"""Typed access to one BPF map: keys and values are abi.Struct or ctypes ints,
per-CPU values come back as one value per CPU (or summed)."""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterable, Iterator
from typing import Any

from carom.bpf import libbpf

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}
ARRAY_TYPES = {BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY}
BPF_F_MMAPABLE = 1 << 10

CType = Any  # a ctypes type: abi.Struct subclass or c_uint32/c_uint64


def _pack(ctype: CType, value: Any) -> bytes:
    if isinstance(value, int):
        return bytes(ctype(value))
    return bytes(value)


def _unpack(ctype: CType, raw: bytes) -> Any:
    obj = ctype.from_buffer_copy(raw[: ctypes.sizeof(ctype)])
    return obj.value if isinstance(obj, ctypes._SimpleCData) else obj


class TypedMap:
    """A loaded map with its key and value types."""

    def __init__(
        self, name: str, fd: int, map_type: int, max_entries: int, key: CType, value: CType
    ) -> None:
        self.name = name
        self.fd = fd
        self.map_type = map_type
        self.max_entries = max_entries
        self.key_type = key
        self.value_type = value
        self.key_size = ctypes.sizeof(key)
        self.value_size = ctypes.sizeof(value)
        self.percpu = map_type in PERCPU_TYPES
        self.is_array = map_type in ARRAY_TYPES
        self.ncpus = libbpf.num_possible_cpus() if self.percpu else 1
        # Per-CPU values are laid out with each CPU's copy rounded up to 8 bytes.
        self.slot_size = (self.value_size + 7) & ~7 if self.percpu else self.value_size
        self._mapped: mmap.mmap | None = None

    # --- memory-mapped arrays (BPF_F_MMAPABLE) -----------------------------------------
    @property
    def elem_size(self) -> int:
        """Bytes per element in an array's memory: the kernel rounds values up to 8."""
        return (self.value_size + 7) & ~7

    def mapped(self) -> mmap.mmap | None:
        """The array's values mapped into this process (element i at byte
        i * elem_size), or None if the map was created without BPF_F_MMAPABLE
        (an older pinned layout). Stores into it are the map's contents at once:
        what the BPF program reads next, without a syscall."""
        if self._mapped is None and self.is_array and not self.percpu:
            if not int(libbpf.map_info(self.fd).map_flags) & BPF_F_MMAPABLE:
                return None
            size = -(-self.max_entries * self.elem_size // mmap.PAGESIZE) * mmap.PAGESIZE
            self._mapped = mmap.mmap(
                self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        return self._mapped

    def unmap(self) -> None:
        """Drop the mapping (it keeps the map alive); kept while a view of it lives."""
        if self._mapped is not None:
            try:
                self._mapped.close()
            except BufferError:  # a numpy view still uses it: unmapped when that goes
                return
            self._mapped = None

    def _split(self, raw: bytes) -> list[Any]:
        return [
            _unpack(self.value_type, raw[i * self.slot_size : (i + 1) * self.slot_size])
            for i in range(self.ncpus)
        ]

    def update(self, key: Any, value: Any, flags: int = libbpf.BPF_ANY) -> None:
        raw = _pack(self.value_type, value)
        if self.percpu:
            raw = raw.ljust(self.slot_size, b"\0") * self.ncpus
        libbpf.map_update(self.fd, _pack(self.key_type, key), raw, flags)

    def lookup(self, key: Any) -> Any | None:
        raw = libbpf.map_lookup(self.fd, _pack(self.key_type, key), self.slot_size * self.ncpus)
        if raw is None:
            return None
        return self._split(raw) if self.percpu else _unpack(self.value_type, raw)

    def delete(self, key: Any) -> bool:
        return libbpf.map_delete(self.fd, _pack(self.key_type, key))

    def keys(self) -> Iterator[Any]:
        for raw in libbpf.map_keys(self.fd, self.key_size):
            yield _unpack(self.key_type, raw)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every entry, dumped in batches (one syscall per 4096 entries)."""
        for kraw, vraw in libbpf.map_lookup_batch(
            self.fd, self.key_size, self.slot_size * self.ncpus, self.max_entries
        ):
            value = self._split(vraw) if self.percpu else _unpack(self.value_type, vraw)
            yield _unpack(self.key_type, kraw), value

    def read_range(self, start: int, count: int) -> bytes:
        """Raw values of array indices start..start+count-1, in batched reads."""
        if not self.is_array or self.percpu:
            raise TypeError(f"{self.name}: read_range is for plain arrays")
        out = bytearray()
        after = None if start == 0 else _pack(self.key_type, start - 1)
        for _, vraw in libbpf.map_lookup_batch(
            self.fd,
            self.key_size,
            self.value_size,
            self.max_entries,
            chunk=min(count, 65536),
            after=after,
        ):
            out += vraw
            if len(out) >= count * self.value_size:
                break
        return bytes(out[: count * self.value_size])

    def count(self) -> int:
        """Number of entries (batched dump; for hash maps)."""
        return sum(
            1
            for _ in libbpf.map_lookup_batch(
                self.fd, self.key_size, self.slot_size * self.ncpus, self.max_entries
            )
        )

    def update_batch(self, entries: Iterable[tuple[Any, Any]]) -> int:
        """Write many entries in one syscall; returns how many."""
        keys = bytearray()
        values = bytearray()
        n = 0
        for k, v in entries:
            keys += _pack(self.key_type, k)
            raw = _pack(self.value_type, v)
            if self.percpu:
                raw = raw.ljust(self.slot_size, b"\0") * self.ncpus
            values += raw
            n += 1
        libbpf.map_update_batch(self.fd, bytes(keys), bytes(values), n)
        return n

    def update_batch_raw(self, keys: bytes, values: bytes, count: int) -> None:
        """Batch write of pre-packed keys and values (e.g. numpy arrays' bytes)."""
        libbpf.map_update_batch(self.fd, keys, values, count)

    def delete_batch(self, keys: Iterable[Any]) -> int:
        packed = [_pack(self.key_type, k) for k in keys]
        libbpf.map_delete_batch(self.fd, b"".join(packed), len(packed))
        return len(packed)

    def clear(self) -> None:
        """Empty a hash map (arrays cannot be emptied; zero them instead)."""
        if self.is_array:
            raise TypeError(f"{self.name} is an array map")
        keys = list(self.keys())
        for i in range(0, len(keys), 4096):
            self.delete_batch(keys[i : i + 4096])

    def sum(self, key: Any) -> Any | None:
        """A per-CPU value summed over CPUs (ints, or TrafficCounter-like structs)."""
        vals = self.lookup(key)
        if vals is None:
            return None
        return sum_percpu(vals)


def sum_percpu(vals: list[Any]) -> Any:
    if isinstance(vals[0], int):
        return sum(vals)
    total = type(vals[0])()
    for name, *_ in total._fields_:
        setattr(total, name, sum(getattr(v, name) for v in vals))
    return total
