"""A director's role: the states, the transitions that are allowed, and the
election that picks the active node. Pure: no clock, no sockets; the heartbeat
task feeds it observations and applies the role it returns.

    STARTING --(hold-down over, no peer alive)------------------> BACKUP
    STARTING --(a peer is alive)--------------------------------> SYNCING
    SYNCING  --(bulk snapshot received, stream caught up)-------> BACKUP
    BACKUP   --(elected: no live active, or preemption allowed)-> ACTIVE
    ACTIVE   --(a better node is active or takes over)----------> BACKUP
    ACTIVE   --(planned switchover)-----------------------------> RESIGNING
    RESIGNING --(the peer has taken over, or timeout)-----------> BACKUP
    any      --(data plane / interface failure)-----------------> FAULT
    FAULT    --(recovered)----------------------------------------> STARTING

Field note 6: a node must never become active before its bulk resync is
complete (SYNCING cannot go to ACTIVE), and a restarted node does not preempt
by default.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class State(enum.Enum):
    STARTING = "starting"
    SYNCING = "syncing"
    BACKUP = "backup"
    ACTIVE = "active"
    RESIGNING = "resigning"
    FAULT = "fault"


# keepalived mode: the states a notify script may report (`carom cluster vrrp`);
# only "master" lets this node be active. keepalived 2.x also notifies "stop"
# when it shuts down (it then gives up mastership: so does carom).
VRRP_STATES = ("master", "backup", "fault", "stop")

ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.SYNCING, State.BACKUP, State.FAULT}),
    State.SYNCING: frozenset({State.BACKUP, State.FAULT, State.STARTING}),
    State.BACKUP: frozenset({State.ACTIVE, State.SYNCING, State.FAULT}),
    State.ACTIVE: frozenset({State.BACKUP, State.RESIGNING, State.FAULT}),
    State.RESIGNING: frozenset({State.BACKUP, State.FAULT}),
    State.FAULT: frozenset({State.STARTING}),
}


class TransitionError(RuntimeError):
    """A transition the table does not allow: a bug, never a runtime choice."""


@dataclass(frozen=True)
class Transition:
    old: State  # state before
    new: State  # state after
    reason: str  # why, in an operator's words (logged)
    # when (time.monotonic(), given by the caller: this module reads no clock);
    # status shows it as ms ago, so a slow status reply is not taken for a slow
    # election
    at: float = field(default=0.0, compare=False)


class RoleMachine:
    """Holds the current state and refuses any transition not in ALLOWED."""

    def __init__(self) -> None:
        self.state = State.STARTING
        self.history: list[Transition] = []

    def go(self, new: State, reason: str, at: float = 0.0) -> Transition | None:
        """Move to `new`; None if already there. Raises on a forbidden move."""
        if new is self.state:
            return None
        if new not in ALLOWED[self.state]:
            raise TransitionError(f"{self.state.value} -> {new.value} is not allowed ({reason})")
        t = Transition(self.state, new, reason, at)
        self.state = new
        self.history.append(t)
        del self.history[:-64]
        return t


@dataclass(frozen=True)
class Candidate:
    """What the election knows about one node (ourselves or a live peer)."""

    node_id: int  # unique in the cluster; the final tie-break (lower wins)
    priority: int  # higher wins
    active: bool  # it says it is active now
    ready: bool  # may become active: bulk sync done, stream caught up, tables agree
    preempt: bool  # takes over from a lower-priority active once ready

    def rank(self) -> tuple[int, int]:
        """Sort key: best first is the smallest key."""
        return (-self.priority, self.node_id)


def elect(candidates: Iterable[Candidate]) -> int | None:
    """The node id that should be active, among live nodes; None if nobody can be.

    1. Only ready nodes can be elected; a live active keeps the role even when
       it is not ready (its tables differ from a peer's for a moment).
    2. A live active node keeps the role (no preemption by default), unless a
       ready node that ranks better has `preempt` set.
    3. Two nodes both claiming active (split brain after a partition heals):
       the better-ranked keeps it.
    4. Otherwise the best-ranked ready node: priority, then lower node id.
    """
    candidates = list(candidates)
    ready = sorted((c for c in candidates if c.ready), key=Candidate.rank)
    # An active keeps the role even while its tables differ from a peer's (not
    # ready): every table change reaches the peers a few ms apart, and a config
    # mismatch is the operator's to fix (the fingerprint alarm); handing the
    # role to the peer would move flows, or leave the VIPs without a director.
    actives = sorted((c for c in candidates if c.active), key=Candidate.rank)
    if actives:
        incumbent = actives[0]  # best-ranked of those claiming active
        if ready and ready[0].rank() < incumbent.rank() and ready[0].preempt:
            return ready[0].node_id
        return incumbent.node_id
    return ready[0].node_id if ready else None
