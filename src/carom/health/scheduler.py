"""Runs the probes: one timing wheel for every key, batched, bounded, cancellation-safe.

- One probe per (target, check definition): services that share a real and a
  definition share its probe and its state (`update` takes a set of keys).
- Jitter: a new key's first probe starts at a random point of its first
  interval, so a thousand checks configured at once do not fire together; after
  that each key keeps its own phase (due-to-due timing: a start up to TICK
  late does not shift the next).
- Cheap at scale (1,000 reals x 2 checks a second): no task and no timer per
  key. Start times sit in a timing wheel of TICK-wide slots (a dict of lists,
  and a heap of the few slot numbers in use), served by one timer at the end
  of the earliest slot that starts everything due; TCP and plain HTTP probes
  run as callbacks on one epoll set (engine.py) whose tick falls on the same
  TICK boundaries, other kinds as a task per probe.
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
import functools
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from carom.health import engine
from carom.health.damping import (
    DEFAULT_FLAP,
    FlapPolicy,
    Health,
    HealthState,
    next_interval,
    step,
)
from carom.health.probe import run_check
from carom.health.spec import CheckResult, ProbeKey

log = logging.getLogger("carom.health")

Prober = Callable[[ProbeKey], Awaitable[CheckResult]]
OnChange = Callable[[ProbeKey, HealthState, HealthState, CheckResult], None]
TICK = engine.TICK  # start times are served in batches this far apart at most
_EARLY = 1e-4  # seconds: a timer that fires this much early still serves its slot


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
    hot path than the nested frozen ProbeKey). Its status is kept in mutable
    fields and made a ProbeStatus only when asked: a probe's result then costs
    no allocation beyond the CheckResult itself."""

    key: ProbeKey
    gen: int  # -1 once removed: its wheel entry (and a waiting one) is then stale
    # set for keys run on the socket engine (tcp, plain http): where and what,
    # worked out once, and the callback its results come back to (one per key)
    route: engine.Route | None = None
    done: Callable[[CheckResult], None] | None = field(default=None, repr=False)
    state: HealthState = field(default_factory=HealthState)
    last: CheckResult | None = None
    probes: int = 0
    failures: int = 0
    due: float = 0.0  # when the probe in flight (or the next) was due
    task: asyncio.Task[CheckResult] | None = field(default=None, repr=False)
    probe: engine.SocketProbe | None = field(default=None, repr=False)

    @property
    def busy(self) -> bool:
        return self.task is not None or self.probe is not None

    @property
    def status(self) -> ProbeStatus:
        return ProbeStatus(self.state, self.last, self.probes, self.failures)


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
        # the timing wheel: keys by the TICK slot their next probe is due in, and
        # a heap of the slots that hold keys (a few hundred a second, as ints)
        self._wheel: dict[int, list[_Key]] = {}
        self._slots: list[int] = []
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
        if self._engine is not None:
            self._engine.drop_idle()  # sockets of a probe namespace that may be gone
        for key in [k for k in self._keys if k not in wanted]:
            self._drop(self._keys.pop(key))
        now = self._clock()
        for key in wanted - self._keys.keys():
            k = self._keys[key] = _Key(key, gen=next(self._gens))
            if self._prober is None and engine.handles(key):
                k.route = engine.Route(key)
                k.done = functools.partial(self._done, k, k.gen)  # one per key, not per probe
            self._push(now + self._rng.uniform(0.0, key.check.timing.interval), k)
        self._arm()

    def status(self, key: ProbeKey) -> ProbeStatus | None:
        k = self._keys.get(key)
        return k.status if k is not None else None

    def usable(self, key: ProbeKey) -> bool:
        """Whether new flows may go to the key's real (unknown keys: usable)."""
        k = self._keys.get(key)
        return k is None or k.state.usable

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
        """Due at `due`: into the wheel's slot that ends at or after it. A key has
        at most one entry (pushed when it is added and after each result)."""
        k.due = due
        slot = math.ceil(due / TICK)
        keys = self._wheel.get(slot)
        if keys is None:
            self._wheel[slot] = [k]
            heapq.heappush(self._slots, slot)
        else:
            keys.append(k)

    def _arm(self) -> None:
        """One timer, for the end of the earliest slot that holds keys: starts
        due close together are served by one wake-up."""
        if self._closed or not self._slots:
            return
        first = self._slots[0] * TICK
        if self._timer is not None and self._timer_at <= first:
            return  # the common case, after each result: armed early enough
        at = max(first, self._clock())
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(at - self._clock(), self._wake)

    def _wake(self) -> None:
        self._timer = None
        last = (self._clock() + _EARLY) / TICK  # the last slot to serve now
        slots, wheel = self._slots, self._wheel
        while slots and slots[0] <= last:
            for k in wheel.pop(heapq.heappop(slots)):
                if k.gen != -1 and k.task is None and k.probe is None:  # removed: gen -1
                    self._start(k)
        self._arm()

    # --- one probe ----------------------------------------------------------

    def _start(self, k: _Key) -> None:
        if self._in_flight >= self._max:
            self._waiting.append((k.gen, k))
            return
        self._in_flight += 1
        gen, key = k.gen, k.key
        if k.route is not None:
            if self._engine is None:
                self._engine = engine.SocketEngine(self._clock)
            assert k.done is not None
            try:
                probe = self._engine.start(key, k.done, k.route)
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
        state = k.state
        if (
            result.ok
            and k.route is not None
            and state.health is Health.UP
            and not state.streak
            and not state.penalty
        ):
            # nearly every probe: an engine result (no agent fields) that passed
            # for a real that is up with nothing pending: step() would return the
            # same state and nothing is logged; only the record and the next start
            k.last = result
            k.probes += 1
            due = k.due + k.key.check.timing.interval
        else:
            self._record(k.key, k, result)
            due = k.due + next_interval(k.state, k.key.check.timing)
        # from the due time, not the start: a start up to TICK late does not
        # stretch every interval (the key keeps its phase)
        now = self._clock()
        self._push(due if due > now else now, k)
        if self._waiting:
            while self._waiting and self._in_flight < self._max:
                wgen, wk = self._waiting.popleft()
                if wk.gen == wgen and not wk.busy:
                    self._start(wk)
        if self._timer is None or self._timer_at > self._slots[0] * TICK:
            self._arm()  # else armed early enough for this start (the common case)

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
        old_state, old_last = k.state, k.last
        new_state = step(old_state, result.ok, self._clock(), key.check.timing, self._flap)
        k.state, k.last = new_state, result
        k.probes += 1
        if not result.ok:
            k.failures += 1
        agent_said = (result.drain, result.weight_percent)
        before = (old_last.drain, old_last.weight_percent) if old_last else (False, None)
        if new_state.health is not old_state.health or agent_said != before:
            held = " (held: flapping)" if new_state.suppressed else ""
            log.info(
                "%s: %s -> %s%s: %s",
                _name(key),
                old_state.health.value,
                new_state.health.value,
                held,
                result.reason,
            )
            if self._on_change is not None:
                try:
                    self._on_change(key, old_state, new_state, result)
                except Exception:  # a broken callback must not stop the probes
                    log.exception("health: on_change failed for %s", _name(key))


async def _call(prober: Prober, key: ProbeKey) -> CheckResult:
    return await prober(key)


def _name(key: ProbeKey) -> str:
    address = key.target.address
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{key.check.kind} {host}:{key.target.port}"
