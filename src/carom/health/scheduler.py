"""Runs the probes: one timer heap for every key, batched, bounded, cancellation-safe.

- One probe per (target, check definition): services that share a real and a
  definition share its probe and its state (`update` takes a set of keys).
- Jitter: a new key's first probe starts at a random point of its first
  interval, so a thousand checks configured at once do not fire together; after
  that each key keeps its own phase (start-to-start timing).
- Cheap at scale (1,000 reals x 2 checks a second): no task per key. Start
  times sit in one heap served by one timer that wakes at most every TICK
  seconds and starts everything due; TCP and plain HTTP probes run as
  callbacks on one epoll set (engine.py), other kinds as a task per probe.
- Bounded concurrency: at most `max_concurrent` probes are in flight; a probe's
  timeout starts once it has a slot. A key's probes never overlap.
- `update` keeps the state of keys that stay (a reload never flaps a real) and
  drops the probes of keys that go; `close` cancels everything and waits.
- Every change of a key's state (or of what its agent asks for) is reported to `on_change` with the
  result that caused it, after the state is stored (so a reconcile triggered by
  the callback reads the new state)."""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from carom.health import engine
from carom.health.damping import DEFAULT_FLAP, FlapPolicy, HealthState, next_interval, step
from carom.health.probe import run_check
from carom.health.spec import CheckResult, ProbeKey

log = logging.getLogger("carom.health")

Prober = Callable[[ProbeKey], Awaitable[CheckResult]]
OnChange = Callable[[ProbeKey, HealthState, HealthState, CheckResult], None]
TICK = engine.TICK  # start times are served in batches this far apart at most


@dataclass(frozen=True)
class ProbeStatus:
    """What `carom status` shows for one probe."""

    state: HealthState
    last: CheckResult | None  # the latest result, None before the first
    probes: int  # results seen
    failures: int  # failed results seen


@dataclass(eq=False)
class _Key:
    """The scheduler's own record of one key (hashed by identity: cheaper on the
    hot path than the nested frozen ProbeKey)."""

    key: ProbeKey
    sockaddr: tuple[str, int]  # where the probe connects, worked out once
    status: ProbeStatus
    gen: int  # its heap entries carry this; a removed key's entries are stale
    started: float = 0.0  # clock() at the start of the probe in flight (or the last)
    task: asyncio.Task[CheckResult] | None = field(default=None, repr=False)
    probe: engine.SocketProbe | None = field(default=None, repr=False)

    @property
    def busy(self) -> bool:
        return self.task is not None or self.probe is not None


class HealthScheduler:
    """Probes for a set of keys, and their damped states. Must be made and used
    in the event loop's thread."""

    def __init__(
        self,
        on_change: OnChange | None = None,
        *,
        max_concurrent: int = 256,
        flap: FlapPolicy = DEFAULT_FLAP,
        prober: Prober | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_change = on_change
        self._max = max_concurrent
        self._flap = flap
        self._prober = prober  # None: the socket engine for tcp/http, run_check for the rest
        self._rng = rng or random.Random()
        self._clock = clock
        self._keys: dict[ProbeKey, _Key] = {}
        self._heap: list[tuple[float, int, int, _Key]] = []  # due, seq, gen, key
        self._seq = itertools.count()
        self._gens = itertools.count(1)
        self._waiting: collections.deque[tuple[int, _Key]] = collections.deque()
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._engine: engine.SocketEngine | None = None
        self._closed = False

    # --- the daemon's API ---------------------------------------------------

    def update(self, keys: Iterable[ProbeKey]) -> None:
        """Probe exactly `keys` from now on."""
        if self._closed:
            raise RuntimeError("the health scheduler is closed")
        wanted = set(keys)
        for key in [k for k in self._keys if k not in wanted]:
            self._drop(self._keys.pop(key))
        now = self._clock()
        for key in wanted - self._keys.keys():
            status = ProbeStatus(state=HealthState(), last=None, probes=0, failures=0)
            sockaddr = (str(key.target.address), key.target.port)
            k = self._keys[key] = _Key(key, sockaddr, status, gen=next(self._gens))
            self._push(now + self._rng.uniform(0.0, key.check.timing.interval), k)
        self._arm()

    def status(self, key: ProbeKey) -> ProbeStatus | None:
        k = self._keys.get(key)
        return k.status if k is not None else None

    def usable(self, key: ProbeKey) -> bool:
        """Whether new flows may go to the key's real (unknown keys: usable)."""
        k = self._keys.get(key)
        return k is None or k.status.state.usable

    def snapshot(self) -> dict[ProbeKey, ProbeStatus]:
        return {key: k.status for key, k in list(self._keys.items())}

    @property
    def running(self) -> int:
        """Keys being probed."""
        return len(self._keys)

    async def close(self) -> None:
        """Cancel every probe and wait until they have all ended (exec children reaped)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [k.task for k in self._keys.values() if k.task is not None]
        for k in list(self._keys.values()):
            self._drop(k)
        self._keys.clear()
        self._waiting.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # --- timing -------------------------------------------------------------

    def _push(self, due: float, k: _Key) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), k.gen, k))

    def _arm(self) -> None:
        """One timer for the earliest start, rounded up to the next TICK so that
        starts due close together are served by one wake-up."""
        if self._closed or not self._heap:
            return
        at = max(self._heap[0][0], self._clock())
        if self._timer is not None:
            if self._timer_at <= at + TICK:
                return
            self._timer.cancel()
        self._timer_at = at + TICK
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timer_at - self._clock(), self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self._clock()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, gen, k = heapq.heappop(heap)
            if k.gen == gen and not k.busy:  # a removed key's gen is -1
                self._start(k)
        self._arm()

    # --- one probe ----------------------------------------------------------

    def _start(self, k: _Key) -> None:
        if self._in_flight >= self._max:
            self._waiting.append((k.gen, k))
            return
        self._in_flight += 1
        k.started = self._clock()
        gen, key = k.gen, k.key
        if self._prober is None and engine.handles(key):
            if self._engine is None:
                self._engine = engine.SocketEngine(self._clock)
            try:
                probe = self._engine.start(key, lambda r: self._done(k, gen, r), k.sockaddr)
            except Exception as exc:  # a bug must fail one probe, not stop the timer
                log.exception("health: probe of %s failed to start", _name(key))
                self._done(k, gen, CheckResult(ok=False, reason=f"probe error: {exc!r}"[:200]))
                return
            if probe.done is not None:  # else it ended at once and _done has run
                k.probe = probe
            return
        prober = self._prober or run_check
        task = asyncio.get_running_loop().create_task(
            _call(prober, key), name=f"health {_name(key)}"
        )
        k.task = task
        task.add_done_callback(lambda t: self._task_done(k, gen, t))

    def _task_done(self, k: _Key, gen: int, task: asyncio.Task[CheckResult]) -> None:
        if task.cancelled():
            return  # dropped (removed or closing): _drop gave its slot back
        exc = task.exception()
        if exc is not None:  # run_check never raises; a custom prober might
            result = CheckResult(ok=False, reason=f"prober error: {exc!r}"[:200])
        else:
            result = task.result()
        self._done(k, gen, result)

    def _done(self, k: _Key, gen: int, result: CheckResult) -> None:
        if k.gen != gen:
            return  # removed while it ran: _drop gave its slot back
        k.task = k.probe = None
        self._in_flight -= 1
        self._record(k.key, k, result)
        state = k.status.state
        self._push(max(k.started + next_interval(state, k.key.check.timing), self._clock()), k)
        while self._waiting and self._in_flight < self._max:
            wgen, wk = self._waiting.popleft()
            if wk.gen == wgen and not wk.busy:
                self._start(wk)
        self._arm()

    def _drop(self, k: _Key) -> None:
        """Forget a key's probe in flight (without a result) and free its slot."""
        k.gen = -1
        if k.task is not None:
            k.task.cancel()
            self._in_flight -= 1
        elif k.probe is not None:
            if self._engine is not None:
                self._engine.abort(k.probe)
            self._in_flight -= 1
        k.task = k.probe = None

    def _record(self, key: ProbeKey, k: _Key, result: CheckResult) -> None:
        old = k.status
        new_state = step(old.state, result.ok, self._clock(), key.check.timing, self._flap)
        k.status = ProbeStatus(
            state=new_state,
            last=result,
            probes=old.probes + 1,
            failures=old.failures + (0 if result.ok else 1),
        )
        agent_said = (result.drain, result.weight_percent)
        before = (old.last.drain, old.last.weight_percent) if old.last else (False, None)
        if new_state.health is not old.state.health or agent_said != before:
            held = " (held: flapping)" if new_state.suppressed else ""
            log.info(
                "%s: %s -> %s%s: %s",
                _name(key),
                old.state.health.value,
                new_state.health.value,
                held,
                result.reason,
            )
            if self._on_change is not None:
                try:
                    self._on_change(key, old.state, new_state, result)
                except Exception:  # a broken callback must not stop the probes
                    log.exception("health: on_change failed for %s", _name(key))


async def _call(prober: Prober, key: ProbeKey) -> CheckResult:
    return await prober(key)


def _name(key: ProbeKey) -> str:
    address = key.target.address
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{key.check.kind} {host}:{key.target.port}"
