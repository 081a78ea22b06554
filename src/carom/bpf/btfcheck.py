"""Checks src/carom/abi.py against the BTF of the compiled object.

Run at every load (a mismatch refuses to start) and by the tests, so the
layouts shared by C and Python are never kept in step by hand alone."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any

from carom import abi
from carom.bpf import libbpf
from carom.bpf.layout import Layout, LayoutError, Record, Scalar, describe
from carom.bpf.libbpf import Btf

BPF_MAP_TYPE_RINGBUF = 27


class AbiMismatch(Exception):
    """The Python ABI definitions disagree with the compiled data plane."""


def check_abi(btf: Btf, maps: Iterable[libbpf.BpfMap] = ()) -> None:
    """Structs and enums of abi.py against BTF; with `maps`, also each map's key
    and value: size and BTF type must be the ones abi.MAPS names."""
    problems: list[str] = []
    maps = list(maps)
    if maps:
        problems += _check_maps(btf, maps)
    for struct in abi.STRUCTS:
        name = struct._c_name_
        try:
            size, members = btf.struct_layout(name)
        except KeyError:
            problems.append(f"struct {name}: not in BTF")
            continue
        if size != ctypes.sizeof(struct):
            problems.append(f"struct {name}: C size {size}, Python {ctypes.sizeof(struct)}")
        py = [
            (fname, getattr(struct, fname).offset, getattr(struct, fname).size)
            for fname, *_ in struct._fields_
        ]
        if py != members:
            problems.append(f"struct {name}: C members {members}, Python {py}")
    for cname, (pyenum, prefix) in abi.ENUMS.items():
        try:
            cvals = btf.enum_values(cname)
        except KeyError:
            problems.append(f"enum {cname}: not in BTF")
            continue
        cvals = {k.removeprefix(prefix): v for k, v in cvals.items() if not k.endswith("__MAX")}
        pyvals = {m.name: int(m.value) for m in pyenum}
        if cvals != pyvals:
            problems.append(f"enum {cname}: C {cvals}, Python {pyvals}")
    try:
        counter_max = btf.enum_values("carom_counter")["CAROM_CNT__MAX"]
        if counter_max != abi.COUNTER_MAX:
            problems.append(f"CAROM_CNT__MAX is {counter_max}, abi.COUNTER_MAX {abi.COUNTER_MAX}")
    except KeyError:
        problems.append("CAROM_CNT__MAX missing")
    if problems:
        raise AbiMismatch("data plane ABI mismatch:\n  " + "\n  ".join(problems))


def _expected(ctype: Any) -> str:
    if isinstance(ctype, type) and issubclass(ctype, abi.Struct):
        return f"struct {ctype._c_name_}"
    return f"{ctypes.sizeof(ctype)}-byte integer"


def _actual(layout: Layout) -> str:
    if isinstance(layout, Record):
        return f"struct {layout.name}"
    if isinstance(layout, Scalar):
        return f"{layout.size}-byte integer"
    return f"{type(layout).__name__.lower()} of {layout.size} bytes"


def _check_maps(btf: Btf, maps: list[libbpf.BpfMap]) -> list[str]:
    problems = []
    names = {m.name for m in maps}
    problems += [f"map {n}: in abi.MAPS, not in the object" for n in abi.MAPS if n not in names]
    problems += [
        f"map {m.name}: abi.RINGBUFS names it, but it is map type {m.map_type}, not a ring buffer"
        for m in maps
        if m.name in abi.RINGBUFS and m.map_type != BPF_MAP_TYPE_RINGBUF
    ]
    problems += [
        f"ring {n}: in abi.RINGBUFS, not in the object" for n in abi.RINGBUFS.keys() - names
    ]
    for m in maps:
        if m.name not in abi.MAPS:
            continue
        kid, vid = libbpf.map_btf_ids(m)
        key_t, value_t = abi.MAPS[m.name]
        sides: list[tuple[str, int, int, Any]] = [
            ("key", m.key_size, kid, key_t),
            ("value", m.value_size, vid, value_t),
        ]
        for what, size, tid, ctype in sides:
            if size != ctypes.sizeof(ctype):
                problems.append(
                    f"map {m.name}: {what} is {size} bytes, abi.MAPS says "
                    f"{ctypes.sizeof(ctype)} ({_expected(ctype)})"
                )
                continue
            if not tid:
                problems.append(f"map {m.name}: {what} has no BTF type")
                continue
            try:
                actual = _actual(describe(btf, tid))
            except LayoutError as exc:
                problems.append(f"map {m.name}: {what}: {exc}")
                continue
            if actual != _expected(ctype):
                problems.append(
                    f"map {m.name}: {what} is {actual}, abi.MAPS says {_expected(ctype)}"
                )
    return problems
