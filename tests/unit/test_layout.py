"""Layout descriptions from BTF and the converters between two versions."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import Any

import pytest

from carom import abi
from carom.bpf import libbpf
from carom.bpf.btfcheck import AbiMismatch, check_abi
from carom.bpf.layout import (
    Array,
    Field,
    Layout,
    LayoutError,
    Opaque,
    Record,
    Scalar,
    changes,
    converter,
    describe,
)
from carom.bpf.loader import object_path
from tests.packets.oldlayout import build_old, older_layout

U8, U16, U32, U64 = Scalar(1), Scalar(2), Scalar(4), Scalar(8)


def rec(name: str, size: int, *fields: tuple[str, int, Layout]) -> Record:
    return Record(name, size, tuple(Field(n, o, lay) for n, o, lay in fields))


CONN = rec("conn_val", 16, ("real_id", 0, U32), ("flags", 4, U32), ("last_seen_ns", 8, U64))


def test_same_layout_copies_bytes() -> None:
    raw = bytes(range(16))
    assert converter(CONN, CONN, "v")(raw) == raw


def test_reordered_fields_move_by_name() -> None:
    old = rec("conn_val", 16, ("last_seen_ns", 0, U64), ("flags", 8, U32), ("real_id", 12, U32))
    conv = converter(old, CONN, "v")
    assert conv(struct.pack("<QII", 123456789, 1, 42)) == struct.pack("<IIQ", 42, 1, 123456789)
    assert changes(old, CONN) == [
        "real_id moved 12->0",
        "flags moved 8->4",
        "last_seen_ns moved 0->8",
    ]


def test_new_field_is_zero_and_dropped_field_goes() -> None:
    old = rec("v", 16, ("gone", 0, U64), ("real_id", 8, U32))
    new = rec("v", 24, ("real_id", 0, U32), ("added", 8, U64), ("more", 16, Array(U8, 8)))
    out = converter(old, new, "v")(struct.pack("<QI4x", 0xFFFFFFFFFFFFFFFF, 7))
    assert out == struct.pack("<I4xQ8x", 7, 0)
    assert changes(old, new) == ["real_id moved 8->0", "+added", "+more", "-gone"]


def test_widened_integer_is_zero_extended() -> None:
    old = rec("v", 4, ("a", 0, U16), ("b", 2, U16))
    new = rec("v", 16, ("b", 0, U64), ("a", 8, U32))
    out = converter(old, new, "v")(struct.pack("<HH", 0xBEEF, 0xFFFF))
    assert struct.unpack("<QI4x", out) == (0xFFFF, 0xBEEF)


def test_nested_records_and_arrays_convert_per_element() -> None:
    inner_old = rec("pt", 4, ("x", 0, U16), ("y", 2, U16))
    inner_new = rec("pt", 4, ("y", 0, U16), ("x", 2, U16))
    old = rec("v", 8, ("pts", 0, Array(inner_old, 2)))
    new = rec("v", 12, ("pts", 0, Array(inner_new, 3)))
    out = converter(old, new, "v")(struct.pack("<4H", 1, 2, 3, 4))
    assert struct.unpack("<6H", out) == (2, 1, 4, 3, 0, 0)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (rec("v", 8, ("a", 0, U64)), rec("v", 4, ("a", 0, U32)), r"v\.a: narrowed from 8 to 4"),
        (
            rec("v", 8, ("a", 0, Array(U32, 2))),
            rec("v", 4, ("a", 0, Array(U32, 1))),
            r"v\.a: array shrank",
        ),
        (
            rec("v", 4, ("a", 0, U32)),
            rec("v", 4, ("a", 0, rec("inner", 4, ("b", 0, U32)))),
            r"v\.a: scalar of 4 bytes became struct inner",
        ),
        (
            rec("v", 4, ("u", 0, Opaque("u", 4, "x@0"))),
            rec("v", 4, ("u", 0, Opaque("u", 4, "y@0"))),
            r"v\.u: u \(4 bytes, not convertible by field\) became",
        ),
    ],
)
def test_lossy_or_ambiguous_changes_are_refused(old: Layout, new: Layout, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        converter(old, new, "v")


def test_identical_opaque_is_copied() -> None:
    old = rec("v", 8, ("u", 0, Opaque("u", 4, "x@0")), ("a", 4, U32))
    new = rec("v", 8, ("a", 0, U32), ("u", 4, Opaque("u", 4, "x@0")))
    assert converter(old, new, "v")(b"UUUUaaaa") == b"aaaaUUUU"


def _of_ctypes(t: Any) -> Layout:
    """The layout abi.py declares for a type, built without BTF."""
    if issubclass(t, ctypes.Array):
        return Array(_of_ctypes(t._type_), t._length_)
    if issubclass(t, ctypes.Structure):
        return Record(
            t._c_name_,
            ctypes.sizeof(t),
            tuple(Field(n, getattr(t, n).offset, _of_ctypes(ft)) for n, ft in t._fields_),
        )
    return Scalar(ctypes.sizeof(t))


def test_describe_agrees_with_abi_for_every_map() -> None:
    """describe() reads the compiled object's BTF; abi.py is checked against the
    same BTF at load, so both must give the same tree for every key and value."""
    with libbpf.BpfObject(object_path()) as obj:
        btf = obj.btf()
        for m in obj.maps():
            if m.name in abi.RINGBUFS:  # no key or value: records of their own
                continue
            kid, vid = libbpf.map_btf_ids(m)
            key, value = abi.MAPS[m.name]
            assert describe(btf, kid) == _of_ctypes(key), m.name
            assert describe(btf, vid) == _of_ctypes(value), m.name


def test_map_keys_and_values_are_checked_against_abi_maps() -> None:
    with libbpf.BpfObject(object_path()) as obj:
        check_abi(obj.btf(), obj.maps())


def test_a_map_with_the_wrong_struct_of_the_right_size_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ctypes.sizeof(abi.PersistVal) == ctypes.sizeof(abi.ConnVal)
    monkeypatch.setitem(abi.MAPS, "conn_table", (abi.FlowKey, abi.PersistVal))
    with (
        libbpf.BpfObject(object_path()) as obj,
        pytest.raises(
            AbiMismatch,
            match=r"map conn_table: value is struct conn_val, abi\.MAPS says struct persist_val",
        ),
    ):
        check_abi(obj.btf(), obj.maps())


def test_an_older_object_is_refused_with_its_map_sizes(tmp_path: Path) -> None:
    with (
        libbpf.BpfObject(build_old(tmp_path, older_layout)) as obj,
        pytest.raises(AbiMismatch) as err,
    ):
        check_abi(obj.btf(), obj.maps())
    text = str(err.value)
    assert "map persist_table: value is 24 bytes, abi.MAPS says 16 (struct persist_val)" in text
    assert "struct conn_val: C members" in text
