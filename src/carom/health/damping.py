"""Hysteresis and flap damping of one probe's results: pure functions of
(state, result, time), so that every rule has golden and property tests.

- A real starts UNKNOWN: usable, and its first result decides (up on success,
  down on failure), so a daemon start neither waits `rise` probes to send
  traffic nor sends it for long to a real that is already dead.
- Then `fall` consecutive failures take an UP real DOWN, `rise` consecutive
  successes bring a DOWN real UP; any other result resets the count.
- While a change is pending (the count is above 0) the next probe comes after
  `fast_interval`, so confirming a change costs less than a full interval.
- Flap damping, after BGP route-flap damping (RFC 2439): each UP -> DOWN adds a
  penalty that halves every `half_life` seconds. Above `suppress` the real is
  held DOWN even when its probes pass, until the penalty decays below `reuse`.
  The penalty is capped, which bounds how long a real can be held. Going down is
  never delayed by damping: only coming back is."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from carom.health.spec import Timing


class Health(enum.Enum):
    UNKNOWN = "unknown"  # no result yet: usable, the first result decides
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class FlapPolicy:
    """Flap damping constants. The defaults hold a real that went down 3 times
    within about 30 s; the longest hold is half_life * log2(max_penalty / reuse)."""

    penalty: float = 1000.0  # added at each UP -> DOWN
    suppress: float = 2500.0  # at or above: held DOWN
    reuse: float = 750.0  # below: released
    half_life: float = 20.0  # seconds for the penalty to halve
    max_penalty: float = 4000.0  # cap: the longest hold is 20 * log2(4000/750) = 48 s

    @property
    def max_hold(self) -> float:
        """Seconds a real stays held after its last flap, at most."""
        if self.max_penalty <= self.reuse:
            return 0.0
        return self.half_life * math.log2(self.max_penalty / self.reuse)


NO_DAMPING = FlapPolicy(penalty=0.0)
DEFAULT_FLAP = FlapPolicy()


@dataclass(frozen=True)
class HealthState:
    """What damping remembers of one probe."""

    health: Health = Health.UNKNOWN
    streak: int = 0  # consecutive results against `health` (a pending change)
    penalty: float = 0.0  # flap penalty as of `penalty_at`
    penalty_at: float = 0.0  # monotonic seconds of the last penalty update
    suppressed: bool = False  # held DOWN by flap damping
    changed_at: float = 0.0  # monotonic seconds of the last change of `health`
    flaps: int = 0  # UP -> DOWN transitions seen

    @property
    def usable(self) -> bool:
        """Whether new flows may go to the real (UNKNOWN counts as usable)."""
        return self.health is not Health.DOWN


def decayed(state: HealthState, now: float, policy: FlapPolicy) -> float:
    """The penalty at `now`."""
    if state.penalty <= 0.0:
        return 0.0
    age = max(0.0, now - state.penalty_at)
    return float(state.penalty * 0.5 ** (age / policy.half_life))


def step(
    state: HealthState, ok: bool, now: float, timing: Timing, policy: FlapPolicy = DEFAULT_FLAP
) -> HealthState:
    """The state after one probe result at monotonic time `now`."""
    if ok and state.health is Health.UP and not state.streak and not state.penalty:
        return state  # the steady case (nearly every probe): nothing changes
    penalty = decayed(state, now, policy)
    suppressed = state.suppressed and penalty >= policy.reuse
    state = replace(state, penalty=penalty, penalty_at=now, suppressed=suppressed)
    if state.health is Health.UNKNOWN:
        health = Health.UP if ok else Health.DOWN
        return replace(state, health=health, streak=0, changed_at=now)
    against = ok if state.health is Health.DOWN else not ok
    if not against:
        return replace(state, streak=0)
    streak = state.streak + 1
    if state.health is Health.UP:
        if streak < timing.fall:
            return replace(state, streak=streak)
        penalty = min(penalty + policy.penalty, policy.max_penalty)
        return replace(
            state,
            health=Health.DOWN,
            streak=0,
            penalty=penalty,
            suppressed=penalty >= policy.suppress and policy.penalty > 0.0,
            changed_at=now,
            flaps=state.flaps + 1,
        )
    # DOWN, and this probe passed
    if streak < timing.rise or state.suppressed:
        return replace(state, streak=min(streak, timing.rise))
    return replace(state, health=Health.UP, streak=0, changed_at=now)


def next_interval(state: HealthState, timing: Timing) -> float:
    """Seconds from this probe's start to the next one's."""
    if state.streak > 0 and not state.suppressed:
        return min(timing.fast_interval, timing.interval)
    return timing.interval


def worst_detection(timing: Timing) -> float:
    """Seconds from a real's death to DOWN, at most, when every probe of the dead
    real runs to its timeout (a black hole; a refused connection is faster):
    the first failing probe starts within one interval and ends a timeout later,
    the next fall-1 start at fast_interval after the previous start but not
    before it has ended (the scheduler never overlaps probes of one key)."""
    gap = max(min(timing.fast_interval, timing.interval), timing.timeout)
    return timing.interval + timing.timeout + (timing.fall - 1) * gap
