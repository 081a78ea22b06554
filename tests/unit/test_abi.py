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
    assert names == set(abi.MAPS) | set(abi.RINGBUFS)


def test_verdict_reasons() -> None:
    assert abi.verdict_of(abi.Counter.PASS_LEASE_EXPIRED) == abi.Verdict.PASS
    assert abi.verdict_of(abi.Counter.PASS_PEER_DIRECTOR) == abi.Verdict.PASS
    assert abi.Counter.CONN_EVENTS_DROPPED in abi.DETAIL_COUNTERS
    assert abi.verdict_of(abi.Counter.PASS_LOCAL_REAL) == abi.Verdict.PASS
    assert abi.verdict_of(abi.Counter.TX_DSR) == abi.Verdict.TX
    assert abi.verdict_of(abi.Counter.DROP_SHORT_ETH) == abi.Verdict.DROP


def test_vip_filter_bit_golden() -> None:
    """bpf/vip_filter.h: xor of the four little-endian address words, folded to
    16 bits. Values worked out by hand from the address bytes."""
    import ipaddress

    ip = ipaddress.ip_address
    # 192.0.2.100: word 0x640200c0 -> 0x6402 ^ 0x00c0
    assert abi.vip_filter_bit(ip("192.0.2.100")) == 0x64C2
    # 2001:db8::1: words 0xb80d0120, 0, 0, 0x01000000 -> 0xb90d0120 -> 0xb90d ^ 0x0120
    assert abi.vip_filter_bit(ip("2001:db8::1")) == 0xB82D
    words = abi.vip_filter_words([ip("192.0.2.100"), ip("2001:db8::1")])
    assert words == {0x64C2 // 64: 1 << (0x64C2 % 64), 0xB82D // 64: 1 << (0xB82D % 64)}


def test_rx_is_the_sum_of_the_reasons() -> None:
    C = abi.Counter
    got = abi.with_rx({C.TX_DSR: 5, C.PASS_NOT_VIP: 2, C.CONN_HIT: 4, C.RX: 0})
    assert got == {C.TX_DSR: 5, C.PASS_NOT_VIP: 2, C.CONN_HIT: 4, C.RX: 7}
