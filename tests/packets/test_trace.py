"""`carom trace` in the data plane (bpf/trace.h): every packet case with tracing
on, through the model and the kernel; sampling, the filter, and a full ring.
With tracing off no case writes a record (test_packet_table checks that)."""

from __future__ import annotations

import copy
import ipaddress

import pytest

from carom import abi
from carom.abi import Counter as C
from carom.model.forward import decide
from carom.model.state import State
from tests.harness.testrun import TestRunner, model_outcome, trace_tuple
from tests.packets.cases import CASES, PacketCase, expected_frame, expected_real, flow_key

KERNEL_CASES = [c for c in CASES if c.kernel]
HIT = next(c for c in CASES if c.reason == C.TX_DSR and C.CONN_HIT in c.extra)


def _traced(case: PacketCase, one_in: int = 1) -> State:
    from tests.packets.cases import prepared

    state, _ = prepared(case)
    if state.node is not None:
        state.node.trace_one_in = one_in
    return state


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: c.name)
def test_record_of_every_case_model_and_kernel(case: PacketCase, bpf_runner: TestRunner) -> None:
    state = _traced(case)
    want_frame = expected_frame(case, state)
    model = model_outcome(copy.deepcopy(state), case.frame)
    kernel = bpf_runner.outcome(copy.deepcopy(state), case.frame)
    assert kernel.traces == model.traces
    assert kernel.counters == model.counters
    if not model.traces:
        return
    ((key, svc, real, ifindex, reason, length, data),) = kernel.traces
    assert reason == case.reason
    assert data == want_frame[: abi.TRACE_SNAP] and length == len(want_frame)
    assert ifindex == 1  # BPF_PROG_TEST_RUN: the loopback device
    if key[36] in (1, 58):  # ICMP errors: the quoted flow's service and real are not recorded
        assert (svc, real) == (abi.TRACE_NO_SVC, 0)
    elif case.reason in (C.TX_DSR, C.PASS_LOCAL_REAL) or C.CONN_HIT in case.extra:
        assert svc == case.svc_id and real == expected_real(case, state)
        assert key == flow_key(case.frame)  # the tuple as the client sent it


def test_most_cases_are_traced() -> None:
    """The record test above is not vacuous: VIP decisions of every kind are traced,
    and what is decided before node_cfg is read (not IP, not a VIP, ARP) is not."""
    traced = {c.reason for c in KERNEL_CASES if model_outcome(_traced(c), c.frame).traces}
    assert {C.TX_DSR, C.PASS_BACKUP, C.DROP_NO_REAL, C.DROP_LOOP, C.PASS_NO_SERVICE} <= traced
    assert {C.TX_ICMP_ERROR, C.PASS_LEASE_EXPIRED, C.DROP_FRAGMENT} <= traced
    assert not {C.PASS_NOT_VIP, C.PASS_NOT_IP, C.TX_ARP_REPLY} & traced


def test_one_in_n_model_and_kernel(bpf_runner: TestRunner) -> None:
    """1 in 3 of ten packets: the first, fourth, seventh and tenth."""
    for run in ("model", "kernel"):
        state = _traced(HIT, one_in=3)
        if run == "kernel":
            bpf_runner.write_state(state)
            for _ in range(10):
                bpf_runner.run(HIT.frame)
            records = bpf_runner.traces()
            sampled = bpf_runner.counters()[C.TRACE_SAMPLED]
        else:
            got = [decide(HIT.frame, state, 0).trace for _ in range(10)]
            assert [i for i, t in enumerate(got) if t is not None] == [0, 3, 6, 9]
            records = [t for t in got if t is not None]
            sampled = len(records)
        assert len(records) == sampled == 4, run
        assert {trace_tuple(r)[4] for r in records} == {int(C.TX_DSR)}


@pytest.mark.parametrize(
    ("host", "port", "kept"),
    [
        (None, 0, True),
        ("198.51.100.99", 0, False),  # another client
        (None, 81, False),
        (None, 80, True),
    ],
)
def test_filter_model_and_kernel(
    host: str | None, port: int, kept: bool, bpf_runner: TestRunner
) -> None:
    state = _traced(HIT)
    assert state.node is not None
    fk = abi.FlowKey.from_buffer_copy(flow_key(HIT.frame))
    client = fk.src.to_ip(fk.family)
    assert str(client) != host
    state.node.trace_host, state.node.trace_port = (
        ipaddress.ip_address(host) if host else None,
        port,
    )
    model = model_outcome(copy.deepcopy(state), HIT.frame)
    kernel = bpf_runner.outcome(copy.deepcopy(state), HIT.frame)
    assert kernel.traces == model.traces
    assert bool(kernel.traces) == kept
    # the client's own address, and the VIP, match at either end
    for end in (client, fk.dst.to_ip(fk.family)):
        state.node.trace_host, state.node.trace_port = end, 0
        assert len(bpf_runner.outcome(copy.deepcopy(state), HIT.frame).traces) == 1


def test_full_ring_counts_the_lost_records(bpf_runner: TestRunner) -> None:
    """Nobody reads: the ring holds what it can, the rest is counted as dropped."""
    state = _traced(HIT)
    bpf_runner.write_state(state)
    bpf_runner.run(HIT.frame, repeat=2000)
    counts = bpf_runner.counters()
    records = bpf_runner.traces()
    assert counts[C.TRACE_DROPPED] > 0
    assert counts[C.TRACE_SAMPLED] == len(records)
    assert counts[C.TRACE_SAMPLED] + counts[C.TRACE_DROPPED] == 2000
    size = bpf_runner.dp.map_size("trace_events")
    assert len(records) == size // (abi.ctypes.sizeof(abi.TraceEvent) + 8)
