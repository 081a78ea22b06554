"""Checks src/carom/abi.py against the BTF of the compiled object.

Run at every load (a mismatch refuses to start) and by the tests, so the
layouts shared by C and Python are never kept in step by hand alone."""

from __future__ import annotations

import ctypes

from carom import abi
from carom.bpf.libbpf import Btf


class AbiMismatch(Exception):
    """The Python ABI definitions disagree with the compiled data plane."""


def check_abi(btf: Btf) -> None:
    problems: list[str] = []
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
