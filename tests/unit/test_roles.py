"""The role state machine and the election: every transition the table allows
works, every other one is refused, and the election follows its rules."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carom.cluster.roles import ALLOWED, Candidate, RoleMachine, State, TransitionError, elect


@pytest.mark.parametrize(("old", "new"), list(itertools.product(State, State)))
def test_transition_table_is_enforced(old: State, new: State) -> None:
    m = RoleMachine()
    m.state = old
    if old is new:
        assert m.go(new, "same") is None
    elif new in ALLOWED[old]:
        t = m.go(new, "test")
        assert t is not None and (t.old, t.new) == (old, new) and m.state is new
    else:
        with pytest.raises(TransitionError):
            m.go(new, "test")
        assert m.state is old


def test_a_syncing_node_can_never_become_active_directly() -> None:
    """Field note 6: no takeover before the bulk resync is complete."""
    assert State.ACTIVE not in ALLOWED[State.SYNCING]
    assert State.ACTIVE not in ALLOWED[State.STARTING]


def c(
    node_id: int, prio: int, active: bool = False, ready: bool = True, preempt: bool = False
) -> Candidate:
    return Candidate(node_id, prio, active, ready, preempt)


def test_election_rules() -> None:
    assert elect([]) is None
    assert elect([c(1, 100, ready=False)]) is None
    assert elect([c(1, 100), c(2, 200)]) == 2  # priority
    assert elect([c(1, 100), c(2, 100)]) == 1  # tie: lower id
    # No preemption: a live active keeps the role against a better node...
    assert elect([c(1, 100, active=True), c(2, 200)]) == 1
    # ...unless the better node preempts and is ready.
    assert elect([c(1, 100, active=True), c(2, 200, preempt=True)]) == 2
    assert elect([c(1, 100, active=True), c(2, 200, preempt=True, ready=False)]) == 1
    # Split brain heals: the better-ranked active keeps it.
    assert elect([c(1, 100, active=True), c(2, 200, active=True)]) == 2
    # Tables that differ (a table change on its way to the peers, a config
    # mismatch): the active is not ready but keeps the role; it used to hand
    # it to a peer whose last heartbeat still said ready (flows moved), or to
    # nobody.
    assert elect([c(1, 100, active=True, ready=False), c(2, 50)]) == 1
    assert elect([c(1, 100, active=True, ready=False), c(2, 200, ready=False)]) == 1
    assert elect([c(1, 100, active=True, ready=False), c(2, 200, preempt=True)]) == 2
    assert elect([c(1, 100, ready=False), c(2, 200, ready=False)]) is None


cands = st.lists(
    st.builds(
        Candidate,
        st.integers(0, 50),
        st.integers(0, 255),
        st.booleans(),
        st.booleans(),
        st.booleans(),
    ),
    max_size=6,
    unique_by=lambda x: x.node_id,
)


@given(cands)
def test_every_node_elects_the_same_one_whatever_the_order(cs: list[Candidate]) -> None:
    winner = elect(cs)
    assert elect(reversed(cs)) == winner
    if winner is not None:  # a ready node, or the incumbent active
        assert any(x.node_id == winner and (x.ready or x.active) for x in cs)
