"""Every packet case, against the reference model and the compiled program."""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable

import pytest

from carom import abi
from carom.abi import Counter as C
from carom.bpf import libbpf
from carom.model.state import State
from tests.harness.testrun import Outcome, TestRunner, model_outcome
from tests.packets.cases import (
    CASES,
    PacketCase,
    expected_frame,
    expected_real,
    flow_key,
    prepared,
    ttl_of,
)

Impl = Callable[[State, bytes], Outcome]


@pytest.fixture(params=["model", pytest.param("bpf", marks=pytest.mark.root)])
def impl(request: pytest.FixtureRequest) -> tuple[str, Impl]:
    if request.param == "model":
        return "model", model_outcome
    runner: TestRunner = request.getfixturevalue("bpf_runner")
    return "bpf", runner.outcome


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_packet_case(case: PacketCase, impl: tuple[str, Impl]) -> None:
    name, run = impl
    state, _ = prepared(case)
    seeded_conns = {k: v.real_id for k, v in state.conns.items()}
    seeded_pending = {i: (bytes(v.key), v.real_id) for i, v in state.pending.items()}
    want_real = expected_real(case, state)
    want_frame = expected_frame(case, state)
    if name == "bpf" and not case.kernel:
        with pytest.raises(libbpf.BpfError) as err:
            run(state, case.frame)
        assert err.value.errno == errno.EINVAL, case.note
        return

    out = run(copy.deepcopy(state), case.frame)

    assert out.verdict == case.verdict, f"{name}: verdict"
    assert out.frame == want_frame, f"{name}: output frame"
    counters = {C.RX: 1, case.reason: 1, **case.extra}
    assert dict(out.counters) == counters, f"{name}: counters"
    if want_real:
        assert case.svc_id is not None
        assert out.real_traffic == {want_real: (1, len(case.frame))}
        assert out.svc_traffic == {case.svc_id: (1, len(case.frame))}
        # per service and per real: a new decision (Maglev or persistence) is a
        # new flow, a conn_table entry used is a hit; a confirmation is neither
        new = case.extra.get(C.NEW_FLOW, 0) + case.extra.get(C.PERSIST_HIT, 0)
        flows = (new, case.extra.get(C.CONN_HIT, 0))
        want_flows = {case.svc_id: flows} if any(flows) else {}
        assert out.svc_flows == want_flows, f"{name}: svc_stats new_flows/conn_hits"
        assert out.real_flows == ({want_real: flows} if any(flows) else {})
    else:
        assert out.real_traffic == {} and out.svc_traffic == {}
        assert out.real_flows == {} and out.svc_flows == {}
    assert out.traces == [], f"{name}: tracing is off, no trace_events record"
    if case.conn_created:
        key = flow_key(case.frame)
        real_id, _, ttl, seen = out.conns[key]
        # the entry keeps the TTL of the flow's first packet
        if C.CONN_HIT in case.extra:
            assert ttl == state.conns[key].ttl
        elif C.CONN_CONFIRMED in case.extra:
            assert ttl == next(v.ttl for v in state.pending.values() if bytes(v.key) == key)
        else:
            assert ttl == ttl_of(case.frame)
        assert real_id == want_real
        if C.CONN_HIT not in case.extra or case.refreshed:
            assert seen == -1, "the entry carries the time of the run"
        else:
            assert seen != -1, "a recent entry is not rewritten (1 s granularity)"
    else:
        assert {k: v[0] for k, v in out.conns.items()} == seeded_conns, "conn table unchanged"
    if case.pending_created:
        key = flow_key(case.frame)
        entry = next(v for v in out.pending.values() if v[0] == key)
        assert entry[1:] == (want_real, ttl_of(case.frame), -1), "pending entry of this run"
    else:
        assert {i: v[:2] for i, v in out.pending.items()} == seeded_pending, "pending unchanged"
    assert out.events == expected_events(case, state), f"{name}: conn_events records"


REPOINTED = (C.SYN_RESCHEDULE, C.CONN_EXPIRED, C.CONN_REAL_GONE, C.CONN_REAL_DOWN)


def expected_events(case: PacketCase, state: State) -> list[tuple[int, bytes, int, int, int]]:
    """conn_events records of a case: NEW when the flow entered conn_table (its
    pending entry's TTL), REPOINT when its entry was rescheduled in place (this
    packet's TTL; flags 0: a local decision); none for anything else."""
    if not case.conn_created:
        return []
    key = flow_key(case.frame)
    real = expected_real(case, state)
    assert real is not None
    if C.CONN_CONFIRMED in case.extra:
        ttl = next(v.ttl for v in state.pending.values() if bytes(v.key) == key)
        return [(int(abi.ConnEventKind.NEW), key, real, 0, ttl)]
    if any(c in case.extra for c in REPOINTED):
        return [(int(abi.ConnEventKind.REPOINT), key, real, 0, ttl_of(case.frame))]
    return []


def test_table_covers_every_verdict_reason() -> None:
    """Each pass/drop/tx reason of the data plane has at least one case."""
    covered = {c.reason for c in CASES}
    reasons = {c for c in C if c != C.RX and abi.verdict_of(c) != abi.Verdict.DROP}
    reasons |= {c for c in C if C.DROP_SHORT_ETH <= c <= C.DROP_UNSUPPORTED}
    missing = reasons - covered - {C.DROP_UNSUPPORTED}  # no non-DSR method exists yet
    assert not missing, f"no packet case for {sorted(m.name for m in missing)}"


def test_dsr_leaves_the_ip_packet_untouched() -> None:
    """Field note 1: only the Ethernet header of a forwarded frame may change."""
    for case in CASES:
        if case.reason == C.TX_DSR:
            state, _ = prepared(case)
            assert expected_frame(case, state)[12:] == case.frame[12:]


def test_neighbour_advertisements_are_valid_icmpv6() -> None:
    """Every NA the table expects carries a checksum scapy agrees with, hop limit 255,
    Solicited+Override and (for multicast solicitations) our MAC as target option."""
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import Ether

    from tests.packets.cases import DIRECTOR_MAC

    checked = 0
    for case in CASES:
        if case.reason != C.TX_ND_ADVERT:
            continue
        assert case.out is not None
        pkt = Ether(case.out)
        na = pkt[ICMPv6ND_NA]
        sent = na.cksum
        del na.cksum
        assert Ether(bytes(pkt))[ICMPv6ND_NA].cksum == sent, case.name
        assert pkt[IPv6].hlim == 255 and (na.R, na.S, na.O) == (0, 1, 1)
        if ICMPv6NDOptDstLLAddr in pkt:
            assert pkt[ICMPv6NDOptDstLLAddr].lladdr == DIRECTOR_MAC
        checked += 1
    assert checked >= 2


@pytest.mark.root
def test_kernel_advertisement_checksum_checked_by_scapy(bpf_runner: TestRunner) -> None:
    """The NA the program builds, decoded by scapy with its checksum recomputed."""
    from scapy.layers.inet6 import ICMPv6ND_NA
    from scapy.layers.l2 import Ether

    from tests.packets.neighbour_cases import NS_MCAST

    case = next(c for c in CASES if c.name == "ns-multicast-for-vip-answered")
    state, _ = prepared(case)
    out = bpf_runner.outcome(state, NS_MCAST)
    assert out.verdict == abi.Verdict.TX
    pkt = Ether(out.frame)
    sent = pkt[ICMPv6ND_NA].cksum
    del pkt[ICMPv6ND_NA].cksum
    assert Ether(bytes(pkt))[ICMPv6ND_NA].cksum == sent
