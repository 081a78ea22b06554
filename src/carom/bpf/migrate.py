"""Upgrading pinned maps whose layout changed, without an outage.

A new carom version may change a map's key or value layout, or the counter
list. The loader asks `plan` before loading: every pinned map is compared with
the new object's definition of it (type, flags, key and value size,
max_entries, and the key/value layout read from BTF, so a reordered struct of
the same size is caught too). The old layout is read from the kernel: a map
created by libbpf carries the id of the BTF it was created with, which the
kernel keeps as long as the map lives, so nothing has to be saved beside the
pins and the description can never be stale.

A map that matches is reused through its pin as before. A map that differs is
created fresh by the load, and `Migration.copy` fills it from the old one,
converting every entry field by field (carom.bpf.layout). A change of flags
that only says how the kernel keeps the map (MIGRATABLE_FLAGS, e.g. the Maglev
array becoming BPF_F_MMAPABLE) is a move too: same entries, copied whole
(arrays in big raw chunks, through the new map's memory when it is mapped).
The old program keeps forwarding on the old maps meanwhile. The daemon then applies its config and
swaps the program (an atomic XDP replace), and `Migration.finish` completes
the move: connection and persistence entries created by the old program since
the copy are added, counters are carried over (by counter name for `stats`),
the new maps are pinned in place of the old ones (rename over the old pin, so
the path never is empty) and pins of maps the new version no longer has are
removed. The old maps die with their last reference.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carom.bpf import libbpf
from carom.bpf.layout import Layout, LayoutError, Record, Scalar, changes, converter, describe
from carom.bpf.maps import (
    ARRAY_TYPES,
    BPF_F_MMAPABLE,
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LRU_HASH,
    PERCPU_TYPES,
)

log = logging.getLogger("carom.migrate")

STAGING = "__migrating"  # a new map's pin before it replaces the old one (bpffs allows no dots)
# Array maps indexed by a C enum: entries are carried by the enum constant's name.
INDEX_ENUMS = {"stats": ("carom_counter", "__MAX")}
CHUNK = 4096
ARRAY_CHUNK = 65536  # raw array copies: entries per batched read
BPF_F_NO_PREALLOC, BPF_F_NO_COMMON_LRU = 1 << 0, 1 << 1
# Flags about how the kernel keeps a map, not what it holds: a change of these
# moves the entries into a map created with the new flags.
MIGRATABLE_FLAGS = BPF_F_NO_PREALLOC | BPF_F_NO_COMMON_LRU | BPF_F_MMAPABLE
# LRU entries carry the time they were last used: the more recent copy wins.
SEEN_FIELD = "last_seen_ns"


class MigrationError(libbpf.BpfError):
    """Pinned maps cannot be carried over to this version; nothing was changed."""


@dataclass(frozen=True)
class Shape:
    """Everything about a map that decides whether a pin can be reused as is."""

    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key: Layout | None
    value: Layout | None
    index: tuple[tuple[str, int], ...] | None  # INDEX_ENUMS maps: the enum's values

    def differences(self, new: Shape) -> list[str]:
        out = []
        for attr in ("map_type", "flags", "key_size", "value_size", "max_entries"):
            a, b = getattr(self, attr), getattr(new, attr)
            if a != b:
                out.append(f"{attr} {a:#x} -> {b:#x}" if attr == "flags" else f"{attr} {a} -> {b}")
        for what, a, b in (("key", self.key, new.key), ("value", self.value, new.value)):
            if a is not None and b is not None and a != b:
                out.append(f"{what} layout: " + ", ".join(changes(a, b) or ["changed"]))
        if self.index is not None and new.index is not None and self.index != new.index:
            old_names = [n for n, _ in self.index]
            new_names = [n for n, _ in new.index]
            out.append(
                "counters: "
                + ", ".join(
                    [f"+{n}" for n in new_names if n not in old_names]
                    + [f"-{n}" for n in old_names if n not in new_names]
                    or ["renumbered"]
                )
            )
        return out


def _index(btf: libbpf.Btf, name: str) -> tuple[tuple[str, int], ...] | None:
    enum, skip = INDEX_ENUMS.get(name, (None, ""))
    if enum is None:
        return None
    try:
        values = btf.enum_values(enum)
    except KeyError:
        return None
    return tuple(sorted((k, v) for k, v in values.items() if not k.endswith(skip)))


def object_shape(m: libbpf.BpfMap, btf: libbpf.Btf) -> Shape:
    """The shape the new object will create `m` with (after its resize)."""
    kid, vid = libbpf.map_btf_ids(m)
    return Shape(
        m.map_type,
        m.key_size,
        m.value_size,
        m.max_entries,
        libbpf.map_flags(m),
        describe(btf, kid) if kid else None,
        describe(btf, vid) if vid else None,
        _index(btf, m.name),
    )


def pinned_shape(fd: int, name: str) -> Shape:
    """The shape of a live map, its layouts read from the BTF the kernel keeps for it."""
    info = libbpf.map_info(fd)
    key = value = None
    index = None
    btf = None
    if info.btf_id:
        try:
            btf = libbpf.kernel_btf(info.btf_id)
        except libbpf.BpfError as exc:
            log.warning("no BTF for pinned map %s (%s): comparing sizes only", name, exc)
    if btf is not None:
        try:
            key = describe(btf, info.btf_key_type_id) if info.btf_key_type_id else None
            value = describe(btf, info.btf_value_type_id) if info.btf_value_type_id else None
            index = _index(btf, name)
        finally:
            btf.close()
    return Shape(
        int(info.type),
        int(info.key_size),
        int(info.value_size),
        int(info.max_entries),
        int(info.map_flags),
        key,
        value,
        index,
    )


@dataclass
class MapMove:
    """One map to carry over: the old map (by fd) into the new one."""

    name: str
    old_fd: int
    old: Shape
    new: Shape
    reasons: list[str]
    convert_key: Callable[[bytes], bytes]
    convert_value: Callable[[bytes], bytes]
    index_map: dict[int, int] | None  # INDEX_ENUMS maps: old index -> new index
    new_fd: int = -1
    copied: int = 0

    @property
    def percpu(self) -> bool:
        return self.new.map_type in PERCPU_TYPES

    @property
    def is_array(self) -> bool:
        return self.new.map_type in ARRAY_TYPES

    @property
    def is_lru(self) -> bool:
        return self.new.map_type == BPF_MAP_TYPE_LRU_HASH

    @property
    def raw_array(self) -> bool:
        """A plain array whose entries need no conversion: copied in raw chunks."""
        return (
            self.new.map_type == BPF_MAP_TYPE_ARRAY
            and self.old.map_type == BPF_MAP_TYPE_ARRAY
            and self.index_map is None
            and self.old.value_size == self.new.value_size
            and self.convert_value is bytes
        )


@dataclass
class Migration:
    pin_dir: str
    moves: list[MapMove]
    dropped: list[str]  # pins of maps this version does not have
    ncpus: int = field(default_factory=libbpf.num_possible_cpus)
    finished: bool = False

    def describe(self) -> list[str]:
        out = [f"{mv.name}: {'; '.join(mv.reasons)}" for mv in self.moves]
        return out + [f"{n}: no longer used, removed after the swap" for n in self.dropped]

    # --- step 1: after load, before the program runs -----------------------------
    def copy(self, new_fds: dict[str, int]) -> dict[str, int]:
        """Fill the new maps from the old ones (counters wait for `finish`)."""
        for mv in self.moves:
            mv.new_fd = new_fds[mv.name]
            if mv.percpu:
                continue  # counters are carried at the swap, see finish()
            if mv.raw_array:
                mv.copied = _copy_array(mv)
                continue
            mv.copied = self._write(mv, self._converted(mv), flags=libbpf.BPF_ANY)
        return {mv.name: mv.copied for mv in self.moves if not mv.percpu}

    # --- step 2: after the new program replaced the old one ----------------------
    def finish(self) -> dict[str, int]:
        """Carry what the old program wrote since `copy`, then swap the pins."""
        carried: dict[str, int] = {}
        for mv in self.moves:
            if mv.is_lru:  # entries the old program created after the copy
                carried[mv.name] = self._add_missing(mv)
            elif mv.percpu:
                carried[mv.name] = self._add_counters(mv)
        for mv in self.moves:
            final = os.path.join(self.pin_dir, mv.name)
            staging = final + STAGING
            _unlink(staging)
            libbpf.obj_pin(mv.new_fd, staging)
            os.rename(staging, final)  # bpffs renames atomically over the old pin
        for name in self.dropped:
            _unlink(os.path.join(self.pin_dir, name))
        self.close()
        self.finished = True
        return carried

    def close(self) -> None:
        for mv in self.moves:
            if mv.old_fd >= 0:
                os.close(mv.old_fd)
                mv.old_fd = -1

    # --- entry conversion --------------------------------------------------------
    def _old_slot(self, mv: MapMove) -> int:
        return (mv.old.value_size + 7) & ~7 if mv.percpu else mv.old.value_size

    def _new_slot(self, mv: MapMove) -> int:
        return (mv.new.value_size + 7) & ~7 if mv.percpu else mv.new.value_size

    def _converted(self, mv: MapMove) -> Iterable[tuple[bytes, bytes]]:
        """Old entries in the new layout (keys remapped, out-of-range indices skipped)."""
        ncpu = self.ncpus if mv.percpu else 1
        oslot, nslot = self._old_slot(mv), self._new_slot(mv)
        for kraw, vraw in libbpf.map_lookup_batch(
            mv.old_fd, mv.old.key_size, oslot * ncpu, mv.old.max_entries, chunk=CHUNK
        ):
            if mv.is_array:
                idx = int.from_bytes(kraw[:4], "little")
                if mv.index_map is not None:
                    if idx not in mv.index_map:
                        continue
                    idx = mv.index_map[idx]
                if idx >= mv.new.max_entries:
                    continue
                key = idx.to_bytes(4, "little")
            else:
                key = mv.convert_key(kraw)
            value = b"".join(
                mv.convert_value(vraw[c * oslot : c * oslot + mv.old.value_size]).ljust(
                    nslot, b"\0"
                )
                for c in range(ncpu)
            )
            yield key, value

    def _write(self, mv: MapMove, entries: Iterable[tuple[bytes, bytes]], flags: int) -> int:
        n = 0
        keys, values, count = bytearray(), bytearray(), 0
        for k, v in entries:
            keys += k
            values += v
            count += 1
            if count == CHUNK:
                libbpf.map_update_batch(mv.new_fd, bytes(keys), bytes(values), count, flags)
                n += count
                keys, values, count = bytearray(), bytearray(), 0
        libbpf.map_update_batch(mv.new_fd, bytes(keys), bytes(values), count, flags)
        return n + count

    def _add_missing(self, mv: MapMove) -> int:
        """Carry what the old program did since the copy: entries it created are
        added; an entry both have is replaced only if the old one was used more
        recently (its `last_seen_ns` is newer), so the new program's writes win."""
        seen = _field(mv.new.value, SEEN_FIELD)
        current = dict(
            libbpf.map_lookup_batch(
                mv.new_fd, mv.new.key_size, mv.new.value_size, mv.new.max_entries, chunk=CHUNK
            )
        )
        carried = 0
        for k, v in self._converted(mv):
            cur = current.get(k)
            if cur is None:
                flags = libbpf.BPF_NOEXIST
            elif seen is not None and _int(v, seen) > _int(cur, seen):
                flags = libbpf.BPF_EXIST
            else:
                continue
            try:
                libbpf.map_update(mv.new_fd, k, v, flags)
                carried += 1
            except libbpf.BpfError as exc:  # the new program raced us to it: it wins
                if exc.errno not in (errno.EEXIST, errno.ENOENT):
                    raise
        return carried

    def _add_counters(self, mv: MapMove) -> int:
        """new += old, word by word: the new map holds what it counted since the swap."""
        nslot = self._new_slot(mv)
        total = nslot * self.ncpus
        n = 0
        for k, v in list(self._converted(mv)):
            cur = libbpf.map_lookup(mv.new_fd, k, total) or bytes(total)
            a = (ctypes.c_uint64 * (total // 8)).from_buffer_copy(cur)
            b = (ctypes.c_uint64 * (total // 8)).from_buffer_copy(v)
            summed = (ctypes.c_uint64 * (total // 8))(*(x + y for x, y in zip(a, b, strict=True)))
            libbpf.map_update(mv.new_fd, k, bytes(summed))
            n += 1
        return n


def _copy_array(mv: MapMove) -> int:
    """Every element of a plain array, old into new, in chunks of ARRAY_CHUNK:
    one batched read each, and a store into the new map's memory when it is
    BPF_F_MMAPABLE (else one batched update). The Maglev array of 4096
    services is 268M elements: one Python step per element would take hours."""
    vsize, count = mv.new.value_size, min(mv.old.max_entries, mv.new.max_entries)
    mem = None
    if mv.new.flags & BPF_F_MMAPABLE:
        esize = (vsize + 7) & ~7  # the kernel's element stride
        size = -(-mv.new.max_entries * esize // mmap.PAGESIZE) * mmap.PAGESIZE
        mem = mmap.mmap(mv.new_fd, size, flags=mmap.MAP_SHARED)
    copied = 0
    dst: np.ndarray | None = None
    try:
        if mem is not None:
            dst = np.ndarray((count, vsize), dtype=np.uint8, buffer=mem, strides=(esize, 1))
        for kraw, vraw, n in libbpf.map_lookup_batch_raw(
            mv.old_fd, 4, mv.old.value_size, mv.old.max_entries, chunk=ARRAY_CHUNK
        ):
            first = int.from_bytes(kraw[:4], "little")
            n = min(n, count - first)
            if n <= 0:
                break
            if dst is not None:  # the keys of an array chunk are first..first+n-1
                dst[first : first + n] = np.frombuffer(vraw, np.uint8, n * vsize).reshape(n, vsize)
            else:
                libbpf.map_update_batch(mv.new_fd, kraw[: 4 * n], vraw[: n * vsize], n)
            copied += n
    finally:
        dst = None  # the view goes before the mapping
        if mem is not None:
            mem.close()
    return copied


def _field(layout: Layout | None, name: str) -> tuple[int, int] | None:
    """(offset, size) of a top-level scalar field of a record layout."""
    if isinstance(layout, Record):
        for f in layout.fields:
            if f.name == name and isinstance(f.layout, Scalar):
                return f.offset, f.layout.size
    return None


def _int(raw: bytes, at: tuple[int, int]) -> int:
    return int.from_bytes(raw[at[0] : at[0] + at[1]], "little")


def _same_object(path: str, btf_ids: set[int]) -> bool:
    """Whether a pin is a map of the previous carom object (it shares that object's
    BTF), so one the new version dropped; anything else pinned there is left alone."""
    try:
        fd = libbpf.obj_get(path)
    except libbpf.BpfError:
        return False
    try:
        btf_id = int(libbpf.map_info(fd).btf_id)
    except libbpf.BpfError:  # not a map
        return False
    finally:
        os.close(fd)
    return btf_id != 0 and btf_id in btf_ids


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _index_map(old: Shape, new: Shape, name: str) -> dict[int, int] | None:
    if old.index is None or new.index is None:
        return None
    new_by_name = dict(new.index)
    return {v: new_by_name[n] for n, v in old.index if n in new_by_name}


def plan(obj: libbpf.BpfObject, pin_dir: str, sized: Iterable[str]) -> Migration | None:
    """Compare the pins in `pin_dir` with `obj` (opened, resized, not loaded).

    Maps that must move get their pin path cleared, so the load creates them
    fresh; the caller loads, then calls copy(). None: every pin is reusable.
    Raises MigrationError (and changes nothing) when a pin cannot be carried."""
    if not os.path.isdir(pin_dir):
        return None
    sized = set(sized)
    for leftover in os.listdir(pin_dir):
        if leftover.endswith(STAGING):  # an interrupted earlier migration
            _unlink(os.path.join(pin_dir, leftover))
    btf = obj.btf()
    names = {m.name for m in obj.maps()}
    moves: list[MapMove] = []
    problems: list[str] = []
    old_btfs: set[int] = set()  # BTF ids of the previous object's maps
    try:
        for m in obj.maps():
            path = os.path.join(pin_dir, m.name)
            if not os.path.exists(path):
                continue
            fd = libbpf.obj_get(path)
            keep = False
            try:
                old, new = pinned_shape(fd, m.name), object_shape(m, btf)
                old_btfs.add(int(libbpf.map_info(fd).btf_id))
                if old == new:
                    continue
                reasons = old.differences(new)
                if old.map_type != new.map_type or (old.flags ^ new.flags) & ~MIGRATABLE_FLAGS:
                    problems.append(f"{m.name}: {'; '.join(reasons)} (type or flags changed)")
                    continue
                if old.max_entries != new.max_entries and m.name in sized:
                    problems.append(
                        f"{m.name}: max_entries {old.max_entries} -> {new.max_entries}: the "
                        "configuration's limits changed; that needs `carom stop --detach` "
                        "first, which interrupts traffic"
                    )
                    continue
                if not reasons:
                    continue
                try:
                    mv = _move(m.name, fd, old, new, reasons)
                except LayoutError as exc:
                    problems.append(f"{m.name}: {exc}")
                    continue
                libbpf.clear_pin_path(m)
                moves.append(mv)
                keep = True
            finally:
                if not keep:
                    os.close(fd)
        if problems:
            raise MigrationError(
                errno.EEXIST,
                f"the maps pinned in {pin_dir} cannot be carried over to this version:\n  "
                + "\n  ".join(problems),
            )
    except BaseException:
        for mv in moves:
            os.close(mv.old_fd)
        raise
    dropped = [
        n
        for n in sorted(os.listdir(pin_dir))
        if n not in names and _same_object(os.path.join(pin_dir, n), old_btfs)
    ]
    if not moves and not dropped:
        return None
    return Migration(pin_dir, moves, dropped)


def _move(name: str, fd: int, old: Shape, new: Shape, reasons: list[str]) -> MapMove:
    """Converters for one map; LayoutError if an entry cannot be converted."""

    def conv(a: Layout | None, b: Layout | None, a_size: int, b_size: int, what: str) -> Any:
        if a is not None and b is not None:
            return converter(a, b, f"{name} {what}")
        if a_size == b_size and (a is None) == (b is None):
            return bytes
        raise LayoutError(
            f"{what} size {a_size} -> {b_size} and no BTF to convert by (was the map "
            "created without BTF?)"
        )

    convert_value = conv(old.value, new.value, old.value_size, new.value_size, "value")
    if new.map_type in ARRAY_TYPES:
        convert_key: Callable[[bytes], bytes] = bytes
    else:
        convert_key = conv(old.key, new.key, old.key_size, new.key_size, "key")
    if new.map_type not in ARRAY_TYPES | {BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH} | PERCPU_TYPES:
        raise LayoutError(f"map type {new.map_type} cannot be migrated")
    return MapMove(
        name, fd, old, new, reasons, convert_key, convert_value, _index_map(old, new, name)
    )
