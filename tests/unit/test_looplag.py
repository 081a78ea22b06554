"""The event loop's stall probe: a stall is measured and attributed (what the
loop ran, collections during it, CPU the daemon got), and QuietGC keeps the
cyclic collector away while big object graphs are built."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from carom.config.schema import addr_key
from carom.daemon import looplag
from carom.daemon.looplag import LoopLag, QuietGC, frame_label, is_idle, overlap_ms


@pytest.fixture
def lag() -> Iterator[LoopLag]:
    probe = LoopLag()
    try:
        yield probe
    finally:
        probe.close()


def test_overlap_counts_only_the_part_inside_the_window() -> None:
    spans = [(0.0, 1.0, 0), (1.5, 2.5, 2), (3.0, 4.0, 1)]
    assert overlap_ms(spans, 2.0, 3.5) == pytest.approx(1000.0)  # 0.5 + 0.5 s
    assert overlap_ms(spans, 5.0, 6.0) == 0.0


def test_frame_label_names_the_innermost_frames() -> None:
    label = frame_label(sys._getframe(), depth=2)
    assert label.startswith("test_looplag.py:")
    assert " test_frame_label_names_the_innermost_frames < " in label


def test_frame_label_follows_library_code_with_the_carom_frame_that_called_it() -> None:
    """ipaddress's __int__ called by carom's addr_key, called by this test: the
    label is the library frame, then carom's frames (not this test's)."""
    seen: list[str] = []

    def hook(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == "__int__" and not seen:
            seen.append(frame_label(frame, depth=2))

    sys.setprofile(hook)
    try:
        addr_key(ipaddress.IPv4Address("192.0.2.7"))
    finally:
        sys.setprofile(None)
    assert seen and seen[0].startswith("ipaddress.py:"), seen
    assert seen[0].split(" < ")[1].startswith("schema.py:") and seen[0].endswith(" addr_key")


def test_idle_loop_is_recognised() -> None:
    assert is_idle("selectors.py:468 select < base_events.py:1884 _run_once")
    assert not is_idle("reconcile.py:300 desired < app.py:296 work")


def test_a_stall_is_attributed_to_what_the_loop_ran(lag: LoopLag) -> None:
    """The probe on a real loop, a callback that blocks it for 120 ms: the
    stall is measured, the watchdog's samples name the blocking function, and
    the loop thread's own CPU time shows it was the one busy."""

    def block_the_loop() -> None:
        end = time.monotonic() + 0.12
        while time.monotonic() < end:
            pass

    async def run() -> None:
        probe = asyncio.create_task(lag.probe())
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_soon(block_the_loop)
        await asyncio.sleep(0.1)
        probe.cancel()

    asyncio.run(run())
    worst = lag.summary()["worst"]
    assert worst is not None
    assert worst["ms"] >= 100
    assert lag.summary()["stalls"] >= 1
    assert worst["samples"] >= 5
    assert "block_the_loop" in worst["where"]
    assert worst["where_share"] >= 0.8
    # the process's CPU went to the loop thread (how much CPU depends on the
    # machine's load; the share does not)
    assert worst["loop_cpu_ms"] >= 0.8 * worst["cpu_ms"] > 0


def test_a_collection_during_a_stall_is_counted(lag: LoopLag) -> None:
    """A stall with a full collection in it (simulated spans from gc.callbacks)."""
    t0 = time.monotonic()
    lag.gc_spans.append((t0 + 0.01, t0 + 0.05, 2))
    lag.note(70.0, t0, t0 + 0.08, t0 + 0.08, (0.07, 0.0))
    worst = lag.summary()["worst"]
    assert worst["gc_ms"] == pytest.approx(40.0, abs=0.1)
    assert worst["gc_generations"] == [2]
    assert worst["cpu_ms"] == 70.0 and worst["loop_cpu_ms"] == 0.0


def test_gc_callbacks_time_real_collections(lag: LoopLag) -> None:
    before = len(lag.gc_spans)
    gc.collect()
    assert len(lag.gc_spans) > before
    start, end, generation = lag.gc_spans[-1]
    assert end >= start and generation == 2


def test_short_ticks_are_not_attributed(lag: LoopLag) -> None:
    t0 = time.monotonic()
    lag.note(30.0, t0, t0 + 0.04, t0 + 0.04, (0.0, 0.0))  # the first: largest so far
    lag.note(2.0, t0, t0 + 0.012, t0 + 0.012, (0.0, 0.0))
    s = lag.summary()
    assert s["max"] == 30.0 and s["worst"]["ms"] == 30.0 and s["stalls"] == 0


def test_quiet_gc_nests_and_freezes_on_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen: list[int] = []
    monkeypatch.setattr(looplag.gc, "freeze", lambda: frozen.append(1))
    quiet = QuietGC()
    assert gc.isenabled()
    with quiet():
        assert not gc.isenabled()
        with quiet():
            assert not gc.isenabled()
        assert not gc.isenabled() and not frozen  # the outer one still runs
    assert gc.isenabled() and frozen == [1]


def test_quiet_gc_without_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    """A status reply is garbage once sent: not frozen, unless an apply that
    wants a freeze was inside at the same time."""
    frozen: list[int] = []
    monkeypatch.setattr(looplag.gc, "freeze", lambda: frozen.append(1))
    quiet = QuietGC()
    with quiet(freeze=False):
        assert not gc.isenabled()
    assert gc.isenabled() and not frozen
    with quiet(freeze=False), quiet():
        pass
    assert gc.isenabled() and frozen == [1]


def test_quiet_gc_from_two_threads() -> None:
    """The collector runs again only when the last user (any thread) leaves."""
    quiet = QuietGC()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with quiet():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(5)
    try:
        with quiet():
            pass
        assert not gc.isenabled()  # the other thread is still inside
    finally:
        release.set()
        t.join()
    assert gc.isenabled()
