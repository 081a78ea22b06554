"""The event loop's own health: how late a 10 ms timer wakes (the longest time
the loop could not answer a request or a neighbour event), and what kept it.

Attribution is cheap enough to stay on: a watchdog thread looks at the loop
only while a tick is overdue (SAMPLE_AFTER_S) and then samples its stack every
SAMPLE_EVERY_S; the cyclic collector's passes are timed through gc.callbacks
(a collection holds the GIL, whichever thread runs it). When a late tick ends,
the stall is described by the collections that overlapped it and the most
frequent loop-thread stack among the samples ("where"), the CPU the daemon and
the loop thread got meanwhile, and the busiest other thread's stack: a loop
sampled idle in select() during a stall was waiting for the GIL or a CPU."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any

LAG_INTERVAL_S = 0.01
LAG_WINDOW_S = 60.0
SAMPLE_AFTER_S = 0.01  # a tick this late gets the loop's stack sampled
SAMPLE_EVERY_S = 0.005
STALL_REPORT_S = 0.05  # a stall this long is logged with its attribution
STUCK_S = 1.0  # a loop still stuck after this long is logged at once, with every stack
GC_KEPT = 256  # recent collections kept for attribution
IDLE = "selectors.py:"  # a label of the loop waiting in select()

# The GIL is handed to a waiting thread after this long. The loop waits that
# long for the GIL after each syscall while a worker thread computes (a status
# of 4096 services, a desired image): at Python's default of 5 ms, a dozen
# syscalls in one loop iteration stalled it by ~60 ms.
SWITCH_INTERVAL_S = 0.001

log = logging.getLogger("carom.daemon")


class QuietGC:
    """No cyclic collection while big object graphs are built (a config, a
    desired image, a status of 4096 services): a collection over 10^5 young
    objects holds the GIL for 60+ ms (measured: a generation-2 pass during a
    neighbour apply). With `freeze` (state that stays: a config, an image),
    what lives afterwards is frozen (gc.freeze) out of the collector's reach;
    objects freed by reference counting still go at once, only garbage cycles
    made meanwhile stay (a few small asyncio objects per apply). A status
    reply is garbage right after it is sent: it is not frozen. Nested and
    threads: the collector runs again when the last one leaves."""

    def __init__(self) -> None:
        self._depth = 0
        self._freeze = False
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, freeze: bool = True) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            gc.disable()
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                self._freeze = self._freeze or freeze
                if not self._depth:
                    if self._freeze:
                        gc.freeze()
                    self._freeze = False
                    gc.enable()


quiet_gc = QuietGC()


@dataclass
class Stall:
    """One late tick: how long, and what the instrumentation saw during it."""

    ms: float
    time: float  # wall clock at the end of the stall
    gc_ms: float  # cyclic collections overlapping it (they hold the GIL)
    cpu_ms: float  # CPU time the whole daemon got meanwhile (all threads)
    loop_cpu_ms: float  # CPU time the loop thread got: ~ms when it was busy itself
    gc_generations: list[int]
    samples: int  # loop-thread stack samples taken while it was late
    where: str  # the most frequent sampled loop-thread stack, innermost first
    where_share: float  # of the samples
    idle_share: float  # samples of the loop in select(): waiting for the GIL or a CPU
    others: str  # the most frequent stack of another busy thread meanwhile


@dataclass
class _Sampling:
    tick: float = 0.0
    loop: collections.Counter[str] = field(default_factory=collections.Counter)
    others: collections.Counter[str] = field(default_factory=collections.Counter)


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{frame.f_lineno} {code.co_name}"


def frame_label(frame: FrameType | None, depth: int = 3) -> str:
    """'file.py:line function < caller ...', innermost first, `depth` frames.
    When the innermost frame is library code (ipaddress, json, ...) called
    from carom, the carom frames that called it follow it ('... <' marks the
    gap), so the label names the carom code that did the work."""
    frames: list[FrameType] = []
    while frame is not None and len(frames) < 64:
        frames.append(frame)
        frame = frame.f_back
    if not frames:
        return ""
    inner = _where(frames[0])
    if _ours(frames[0]) or inner.startswith(IDLE) or "asyncio" in frames[0].f_code.co_filename:
        return " < ".join(_where(f) for f in frames[:depth])
    ours = next((i for i, f in enumerate(frames) if _ours(f)), None)
    if ours is None:
        return " < ".join(_where(f) for f in frames[:depth])
    gap = " <... " if ours > 1 else " < "
    return inner + gap + " < ".join(_where(f) for f in frames[ours : ours + depth - 1])


def _ours(frame: FrameType) -> bool:
    return f"{os.sep}carom{os.sep}" in frame.f_code.co_filename


def is_idle(label: str) -> bool:
    """The loop thread sampled in select(): not busy itself (in a stall: waiting
    for the GIL or for a CPU on its way out of select)."""
    return label.startswith(IDLE)


def overlap_ms(spans: Iterable[tuple[float, float, int]], t0: float, t1: float) -> float:
    """Milliseconds of [t0, t1] covered by the (start, end, generation) spans."""
    return sum(max(0.0, min(e, t1) - max(s, t0)) for s, e, _ in spans) * 1000


class LoopLag:
    """A probe task that sleeps LAG_INTERVAL_S and measures how late it wakes,
    with a watchdog thread that samples the loop while it is late."""

    def __init__(self) -> None:
        self.max_ms = 0.0
        self.recent: collections.deque[tuple[float, float]] = collections.deque()
        self.tick = time.monotonic()
        self.gc_max_ms = 0.0  # longest garbage collection (it holds the GIL throughout)
        self.gc_spans: collections.deque[tuple[float, float, int]] = collections.deque(
            maxlen=GC_KEPT
        )
        self.worst: Stall | None = None
        self.stalls = 0  # late ticks of at least STALL_REPORT_S
        self._gc_start = 0.0
        self._sampling = _Sampling()
        self._sample_lock = threading.Lock()
        gc.callbacks.append(self._gc)

    def close(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
            return
        end = time.monotonic()
        self.gc_spans.append((self._gc_start, end, int(info.get("generation", -1))))
        self.gc_max_ms = max(self.gc_max_ms, (end - self._gc_start) * 1000)

    # --- the watchdog thread ------------------------------------------------------------
    def _watch(self, loop_thread: int, stop: threading.Event) -> None:
        me = threading.get_ident()
        wait, reported = SAMPLE_EVERY_S, 0.0
        while not stop.wait(wait):
            tick = self.tick
            late = time.monotonic() - tick - LAG_INTERVAL_S
            if late <= SAMPLE_AFTER_S:  # on time: look again when it could be late
                wait = max(SAMPLE_EVERY_S, SAMPLE_AFTER_S - late)
                continue
            wait = SAMPLE_EVERY_S
            self.sample(tick, loop_thread, me)
            if late > STUCK_S and reported != tick:
                reported = tick
                stacks = {
                    str(ident): frame_label(frame, depth=8)
                    for ident, frame in sys._current_frames().items()
                    if ident != me
                }
                log.warning("event loop stuck", extra={"seconds": round(late, 1), **stacks})

    def sample(self, tick: float, loop_thread: int, me: int) -> None:
        """One sample of the loop thread's stack (and, if it is idle, of the others)."""
        frames = sys._current_frames()
        label = frame_label(frames.get(loop_thread))
        with self._sample_lock:
            s = self._sampling
            if s.tick != tick:
                s = self._sampling = _Sampling(tick)
            s.loop[label] += 1
            for ident, frame in frames.items():
                if ident in (loop_thread, me):
                    continue
                other = frame_label(frame, depth=2)
                if not _parked(other):
                    s.others[other] += 1

    # --- the probe task -----------------------------------------------------------------
    async def probe(self) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        watchdog = threading.Thread(
            target=self._watch,
            args=(threading.get_ident(), stop),
            name="carom-looplag",
            daemon=True,
        )
        watchdog.start()
        try:
            await self._probe(loop)
        finally:
            stop.set()

    async def _probe(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            t0 = loop.time()
            cpu0 = (time.process_time(), time.thread_time())
            self.tick = tick = time.monotonic()
            await asyncio.sleep(LAG_INTERVAL_S)
            now = loop.time()
            lag = max(0.0, (now - t0 - LAG_INTERVAL_S) * 1000)
            cpu = (time.process_time() - cpu0[0], time.thread_time() - cpu0[1])
            self.note(lag, tick, time.monotonic(), now, cpu)

    def note(
        self, lag: float, tick: float, end: float, now: float, cpu: tuple[float, float]
    ) -> None:
        """Record one tick `lag` ms late that started at monotonic `tick`, during
        which the daemon and its loop thread got `cpu` seconds of CPU."""
        if lag >= SAMPLE_AFTER_S * 1000 or lag > self.max_ms:
            stall = self.attribute(lag, tick, end, cpu)
            if self.worst is None or lag >= self.worst.ms:
                self.worst = stall
            if lag >= STALL_REPORT_S * 1000:
                self.stalls += 1
                log.warning("event loop stalled", extra=asdict(stall))
        self.max_ms = max(self.max_ms, lag)
        if lag >= 1.0:
            self.recent.append((now, lag))
        while self.recent and self.recent[0][0] < now - LAG_WINDOW_S:
            self.recent.popleft()

    def attribute(self, lag: float, tick: float, end: float, cpu: tuple[float, float]) -> Stall:
        spans = [s for s in list(self.gc_spans) if s[1] > tick and s[0] < end]
        with self._sample_lock:
            s = self._sampling if self._sampling.tick == tick else _Sampling(tick)
            self._sampling = _Sampling()
        n = sum(s.loop.values())
        where, count = s.loop.most_common(1)[0] if n else ("", 0)
        others = s.others.most_common(1)[0][0] if s.others else ""
        return Stall(
            ms=round(lag, 2),
            time=time.time(),
            gc_ms=round(overlap_ms(spans, tick, end), 2),
            cpu_ms=round(cpu[0] * 1000, 2),
            loop_cpu_ms=round(cpu[1] * 1000, 2),
            gc_generations=sorted({g for *_, g in spans}),
            samples=n,
            where=where,
            where_share=round(count / n, 2) if n else 0.0,
            idle_share=round(sum(c for w, c in s.loop.items() if is_idle(w)) / n, 2) if n else 0.0,
            others=others,
        )

    def summary(self) -> dict[str, Any]:
        # status is built in a worker thread while the loop appends: copy first
        # (one C call under the GIL) rather than iterate a deque being mutated
        last = max((lag for _, lag in self.recent.copy()), default=0.0)
        worst = self.worst
        return {
            "max": round(self.max_ms, 2),
            "max_last_minute": round(last, 2),
            "gc_max": round(self.gc_max_ms, 2),
            "stalls": self.stalls,
            "worst": asdict(worst) if worst is not None else None,
        }


def _parked(label: str) -> bool:
    """A thread waiting for work (an idle executor, a sleeping timer): not a
    competitor. An executor thread in `run` is calling a C function: busy."""
    inner = label.split(" < ")[0]
    if inner.startswith("thread.py:"):
        return inner.endswith(" _worker")
    return any(inner.startswith(p) for p in ("threading.py", "queue.py", "selectors.py"))
