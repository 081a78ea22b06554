"""Runs the probes: one task per ProbeKey, jittered, bounded, cancellation-safe.

- One probe per (target, check definition): services that share a real and a
  definition share its probe and its state (`update` takes a set of keys).
- Jitter: a new key's first probe starts at a random point of its first
  interval, so a thousand checks configured at once do not fire together; after
  that each key keeps its own phase (start-to-start timing).
- Bounded concurrency: at most `max_concurrent` probes are in flight; a probe's
  timeout starts once it has a slot. A key's probes never overlap.
- `update` keeps the state of keys that stay (a reload never flaps a real) and
  cancels the tasks of keys that go; `close` cancels everything and waits.
- Every change of a key's state (or of what its agent asks for) is reported to `on_change` with the
  result that caused it, after the state is stored (so a reconcile triggered by
  the callback reads the new state)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from carom.health.damping import DEFAULT_FLAP, FlapPolicy, HealthState, next_interval, step
from carom.health.probe import run_check
from carom.health.spec import CheckResult, ProbeKey

log = logging.getLogger("carom.health")

Prober = Callable[[ProbeKey], Awaitable[CheckResult]]
OnChange = Callable[[ProbeKey, HealthState, HealthState, CheckResult], None]


@dataclass(frozen=True)
class ProbeStatus:
    """What `carom status` shows for one probe."""

    state: HealthState
    last: CheckResult | None  # the latest result, None before the first
    probes: int  # results seen
    failures: int  # failed results seen


class HealthScheduler:
    """Probe tasks for a set of keys, and their damped states."""

    def __init__(
        self,
        on_change: OnChange | None = None,
        *,
        max_concurrent: int = 256,
        flap: FlapPolicy = DEFAULT_FLAP,
        prober: Prober = run_check,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_change = on_change
        self._slots = asyncio.Semaphore(max_concurrent)
        self._flap = flap
        self._prober = prober
        self._rng = rng or random.Random()
        self._clock = clock
        self._tasks: dict[ProbeKey, asyncio.Task[None]] = {}
        self._status: dict[ProbeKey, ProbeStatus] = {}
        self._closed = False

    # --- the daemon's API ---------------------------------------------------

    def update(self, keys: Iterable[ProbeKey]) -> None:
        """Probe exactly `keys` from now on. Must run in the event loop's thread."""
        if self._closed:
            raise RuntimeError("the health scheduler is closed")
        wanted = set(keys)
        for key in [k for k in self._tasks if k not in wanted]:
            self._tasks.pop(key).cancel()
            self._status.pop(key, None)
        for key in wanted - self._tasks.keys():
            self._status[key] = ProbeStatus(state=HealthState(), last=None, probes=0, failures=0)
            self._tasks[key] = asyncio.create_task(self._run(key), name=f"health {_name(key)}")

    def status(self, key: ProbeKey) -> ProbeStatus | None:
        return self._status.get(key)

    def usable(self, key: ProbeKey) -> bool:
        """Whether new flows may go to the key's real (unknown keys: usable)."""
        status = self._status.get(key)
        return status is None or status.state.usable

    def snapshot(self) -> dict[ProbeKey, ProbeStatus]:
        return dict(self._status)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every probe and wait until they have all ended (exec children reaped)."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- one key ------------------------------------------------------------

    async def _run(self, key: ProbeKey) -> None:
        timing = key.check.timing
        await asyncio.sleep(self._rng.uniform(0.0, timing.interval))
        while True:
            started = self._clock()
            async with self._slots:
                try:
                    result = await self._prober(key)
                except Exception as exc:  # run_check never raises; a custom prober might
                    result = CheckResult(ok=False, reason=f"prober error: {exc!r}"[:200])
            self._record(key, result)
            state = self._status[key].state
            wait = started + next_interval(state, timing) - self._clock()
            await asyncio.sleep(max(0.0, wait))

    def _record(self, key: ProbeKey, result: CheckResult) -> None:
        old = self._status.get(key)
        if old is None:  # removed while the probe ran
            return
        new_state = step(old.state, result.ok, self._clock(), key.check.timing, self._flap)
        self._status[key] = ProbeStatus(
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


def _name(key: ProbeKey) -> str:
    address = key.target.address
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{key.check.kind} {host}:{key.target.port}"
