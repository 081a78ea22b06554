"""abi.py agrees with the compiled object's BTF (structs, enums, counters)."""

from __future__ import annotations

import ctypes

import pytest

from carom import abi
from carom.bpf import libbpf
from carom.bpf.btfcheck import AbiMismatch, check_abi
from carom.bpf.loader import object_path


def test_abi_matches_btf() -> None:
    with libbpf.BpfObject(object_path()) as obj:
        check_abi(obj.btf())


def test_abi_check_catches_a_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    class Drifted(abi.Struct):
        _c_name_ = "conn_val"
        _fields_ = [("real_id", ctypes.c_uint32), ("last_seen_ns", ctypes.c_uint64)]

    monkeypatch.setattr(abi, "STRUCTS", (*abi.STRUCTS, Drifted))
    with libbpf.BpfObject(object_path()) as obj, pytest.raises(AbiMismatch, match="conn_val"):
        check_abi(obj.btf())


def test_every_map_has_an_abi_entry() -> None:
    with libbpf.BpfObject(object_path()) as obj:
        names = {m.name for m in obj.maps()}
    assert names == set(abi.MAPS)


def test_verdict_reasons() -> None:
    assert abi.verdict_of(abi.Counter.PASS_LOCAL_REAL) == abi.Verdict.PASS
    assert abi.verdict_of(abi.Counter.TX_DSR) == abi.Verdict.TX
    assert abi.verdict_of(abi.Counter.DROP_SHORT_ETH) == abi.Verdict.DROP
