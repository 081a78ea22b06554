"""Layouts of map keys and values as BTF describes them, and converters between
two versions of a layout.

A pinned map keeps the layout it was created with; a new carom version may
have changed it. `describe` turns a BTF type into a plain tree (scalars,
arrays, records of named fields), so two versions compare with `==` whatever
their type ids, and `converter` builds a function that rewrites a value of the
old layout into the new one: fields are matched by name, recursively, a field
the old layout lacks is zero, a field the new one dropped is dropped. Anything
that cannot be converted without losing meaning (a narrowed integer, a changed
union, a bitfield) raises LayoutError instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from carom.bpf.libbpf import Btf

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FLOAT, KIND_TYPE_TAG, KIND_ENUM64 = 16, 18, 19
_TRANSPARENT = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


class LayoutError(Exception):
    """Two layouts cannot be converted into each other without losing meaning."""


@dataclass(frozen=True)
class Scalar:
    """An integer, enum, float or pointer: converted by value (zero-extended)."""

    size: int


@dataclass(frozen=True)
class Opaque:
    """A union or bitfield-carrying struct: only ever copied whole, unchanged."""

    name: str
    size: int
    detail: str


@dataclass(frozen=True)
class Array:
    elem: Layout
    count: int

    @property
    def size(self) -> int:
        return self.elem.size * self.count


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    layout: Layout


@dataclass(frozen=True)
class Record:
    """A struct: its C name (informational), size and named fields."""

    name: str
    size: int
    fields: tuple[Field, ...]


Layout = Scalar | Opaque | Array | Record


def describe(btf: Btf, tid: int) -> Layout:
    """The layout tree of BTF type `tid` (typedefs and qualifiers resolved)."""
    t = btf.type_at(tid)
    kind = (t.info >> 24) & 0x1F
    if kind in _TRANSPARENT:
        return describe(btf, t.size)  # `size` is the referenced type here
    if kind in (KIND_INT, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
        return Scalar(int(t.size))
    if kind == KIND_PTR:
        return Scalar(8)
    if kind == KIND_ARRAY:
        elem, count = btf.raw_array(tid)
        return Array(describe(btf, elem), count)
    name = btf.name(t.name_off) or "(anon)"
    if kind == KIND_UNION:
        return Opaque(name, int(t.size), _signature(btf, tid))
    if kind == KIND_STRUCT:
        members = btf.raw_members(tid)
        if any(bits or off % 8 for _, off, _, bits in members):
            return Opaque(name, int(t.size), _signature(btf, tid))
        fields = tuple(Field(n, off // 8, describe(btf, mt)) for n, off, mt, _ in members)
        return Record(name, int(t.size), fields)
    raise LayoutError(f"BTF type {tid} (kind {kind}) cannot be a map key or value")


def _signature(btf: Btf, tid: int) -> str:
    """Members of a union or bitfield struct, so two versions compare exactly."""
    return ";".join(
        f"{n}@{off}:{bits}:{describe(btf, mt)}" for n, off, mt, bits in btf.raw_members(tid)
    )


Op = tuple[int, int, int, int]  # (source offset, source size, target offset, target size)


def _ops(old: Layout, new: Layout, src: int, dst: int, path: str, out: list[Op]) -> None:
    if old == new:
        out.append((src, old.size, dst, new.size))
        return
    if isinstance(old, Scalar) and isinstance(new, Scalar):
        if new.size < old.size:
            raise LayoutError(f"{path}: narrowed from {old.size} to {new.size} bytes")
        out.append((src, old.size, dst, new.size))  # little-endian zero extension
        return
    if isinstance(old, Array) and isinstance(new, Array):
        if new.count < old.count:
            raise LayoutError(f"{path}: array shrank from {old.count} to {new.count} elements")
        for i in range(old.count):
            _ops(
                old.elem, new.elem, src + i * old.elem.size, dst + i * new.elem.size,
                f"{path}[{i}]", out,
            )  # fmt: skip
        return
    if isinstance(old, Record) and isinstance(new, Record):
        olds = {f.name: f for f in old.fields if f.name}
        for f in new.fields:
            o = olds.get(f.name)
            if o is not None:
                _ops(o.layout, f.layout, src + o.offset, dst + f.offset, f"{path}.{f.name}", out)
        return
    raise LayoutError(f"{path}: {_kind(old)} became {_kind(new)}")


def _kind(layout: Layout) -> str:
    if isinstance(layout, Opaque):
        return f"{layout.name} ({layout.size} bytes, not convertible by field)"
    if isinstance(layout, Record):
        return f"struct {layout.name}"
    return f"{type(layout).__name__.lower()} of {layout.size} bytes"


def converter(old: Layout, new: Layout, what: str) -> Callable[[bytes], bytes]:
    """A function from an old-layout value to the new layout; LayoutError if none."""
    ops: list[Op] = []
    _ops(old, new, 0, 0, what, ops)
    if old == new:
        return bytes
    # Merge neighbouring same-size copies into single slices: conversion runs once
    # per entry of tables with up to millions of entries.
    merged: list[Op] = []
    for s, ss, d, ds in ops:
        if merged and ss == ds:
            ps, pss, pd, pds = merged[-1]
            if pss == pds and ps + pss == s and pd + pds == d:
                merged[-1] = (ps, pss + ss, pd, pds + ds)
                continue
        merged.append((s, ss, d, ds))
    size = new.size

    def convert(raw: bytes) -> bytes:
        out = bytearray(size)
        for s, ss, d, _ in merged:
            out[d : d + ss] = raw[s : s + ss]  # target >= source: the rest stays zero
        return bytes(out)

    return convert


def changes(old: Layout, new: Layout, path: str = "") -> list[str]:
    """Human-readable differences (added, dropped, moved or resized fields)."""
    if old == new:
        return []
    if isinstance(old, Record) and isinstance(new, Record):
        out = []
        olds = {f.name: f for f in old.fields}
        news = {f.name: f for f in new.fields}
        for f in new.fields:
            o = olds.get(f.name)
            p = f"{path}.{f.name}" if path else f.name
            if o is None:
                out.append(f"+{p}")
            elif o.offset != f.offset and o.layout == f.layout:
                out.append(f"{p} moved {o.offset}->{f.offset}")
            else:
                if o.offset != f.offset:
                    out.append(f"{p} moved {o.offset}->{f.offset}")
                out += changes(o.layout, f.layout, p)
        out += [f"-{path}.{n}" if path else f"-{n}" for n in olds if n not in news]
        return out
    return [f"{path or 'value'}: {_kind(old)} -> {_kind(new)}"]
