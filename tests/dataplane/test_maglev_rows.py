"""Maglev rows through the memory-mapped `maglev` array (BPF_F_MMAPABLE), on
real kernel maps: what the daemon stores through the mapping is what a
syscall lookup (the program's view) reads, only changed slots are written and
counted, and a map of the older layout (no flag) gets the same contents
through batched updates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from carom.bpf import libbpf
from carom.bpf.loader import Dataplane
from carom.bpf.maps import BPF_F_MMAPABLE
from carom.config.limits import Limits
from carom.daemon.rows import MaglevRows
from tests.packets.oldlayout import build_old, set_map_flags

pytestmark = pytest.mark.root

SIZE = 1021
LIMITS = Limits(max_services=4, max_reals=64, maglev_table_size=SIZE, conn_table_size=4096)


def unmapped_object(tmp: Path) -> str:
    """Today's object with `maglev` created without BPF_F_MMAPABLE (the layout
    before it was memory-mapped)."""

    def strip(files: dict[str, str]) -> None:
        files["maps.h"] = set_map_flags(files["maps.h"], "maglev", None)

    return build_old(tmp, strip)


@pytest.fixture
def mapped() -> Iterator[Dataplane]:
    dp = Dataplane.load(LIMITS)
    yield dp
    dp.close()


def kernel_row(dp: Dataplane, sid: int) -> np.ndarray:
    """Row `sid` read with batched lookups (syscalls), not through the mapping."""
    raw = dp["maglev"].read_range(sid * SIZE, SIZE)
    return np.frombuffer(raw, dtype=np.uint32)


def table(seed: int) -> np.ndarray:
    row = np.random.default_rng(seed).integers(1, 9, SIZE, dtype=np.uint32)
    row.flags.writeable = False
    return row


def test_maglev_is_created_mmapable(mapped: Dataplane) -> None:
    assert int(libbpf.map_info(mapped["maglev"].fd).map_flags) & BPF_F_MMAPABLE
    assert MaglevRows(mapped["maglev"], SIZE).slots is not None


def test_stores_through_the_mapping_are_what_the_kernel_reads(mapped: Dataplane) -> None:
    rows = MaglevRows(mapped["maglev"], SIZE)
    zero = np.zeros(SIZE, dtype=np.uint32)
    a, b = table(1), table(2)
    assert rows.write(2, zero, a) == SIZE  # a fresh row: every slot
    assert (kernel_row(mapped, 2) == a).all()
    assert not kernel_row(mapped, 1).any() and not kernel_row(mapped, 3).any()
    # a changed table: only the slots that differ are written and counted
    changed = int((a != b).sum())
    assert 0 < changed < SIZE
    assert rows.write(2, a, b) == changed
    assert (kernel_row(mapped, 2) == b).all()
    assert rows.write(2, b, b) == 0
    # and what a syscall writes, the mapping reads
    mapped["maglev"].update(2 * SIZE + 5, 42)
    assert rows.read(2)[5] == 42


def test_a_map_without_the_flag_gets_the_same_rows_by_batched_updates(tmp_path: Path) -> None:
    old = Dataplane.load(LIMITS, obj_path=unmapped_object(tmp_path))
    try:
        rows = MaglevRows(old["maglev"], SIZE)
        assert rows.slots is None
        zero = np.zeros(SIZE, dtype=np.uint32)
        a, b = table(1), table(2)
        assert rows.write(1, zero, a) == SIZE
        assert rows.write(1, a, b) == int((a != b).sum())
        assert (kernel_row(old, 1) == b).all() and (rows.read(1) == b).all()
    finally:
        old.close()
