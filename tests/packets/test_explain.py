"""`carom explain` over the packet table: for every case that is a plain TCP or
UDP frame from the router, the explanation names the verdict and the real that
the case expects (which the model and the kernel both give, see
test_packet_table.py). Once on the model State directly, once on the kernel's
maps holding the same State."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from carom import abi
from carom.abi import Counter as C
from carom.daemon import explain
from tests.harness.testrun import TestRunner
from tests.packets.cases import (
    CASES,
    ROUTER_MAC,
    PacketCase,
    expected_real,
    flow_key,
    prepared,
)

VERDICTS = {
    C.TX_DSR: "forward",
    C.PASS_LOCAL_REAL: "local",
    C.DROP_NO_REAL: "drop",
    C.PASS_NOT_VIP: "pass",
    C.PASS_BACKUP: "pass",
    C.PASS_LEASE_EXPIRED: "pass",
    C.PASS_NO_SERVICE: "pass",
    C.DROP_AWAIT_ACTIVE: "drop",
}


def flow_of(case: PacketCase) -> tuple[str, str, bool] | None:
    """(client, service, syn) of a plain TCP/UDP case, None for the others."""
    if case.reason not in VERDICTS or not case.kernel:
        return None
    pkt = Ether(case.frame)
    if pkt.src != ROUTER_MAC:
        return None
    if IP not in pkt and IPv6 not in pkt:
        return None
    l3 = pkt[IP] if IP in pkt else pkt[IPv6]
    if not isinstance(l3.payload, TCP | UDP):
        return None
    if isinstance(l3, IP) and (l3.flags.MF or l3.frag):
        return None
    l4 = l3.payload
    host = (lambda a: f"[{a}]") if isinstance(l3, IPv6) else str
    proto = "tcp" if isinstance(l4, TCP) else "udp"
    syn = isinstance(l4, TCP) and (int(l4.flags) & 0x12) == 0x02
    return f"{host(l3.src)}:{l4.sport}", f"{host(l3.dst)}:{l4.dport}/{proto}", syn


EXPLAINABLE = [c for c in CASES if flow_of(c) is not None]


def check(case: PacketCase, e: explain.Explanation) -> None:
    state, _ = prepared(case)
    assert e.verdict == VERDICTS[case.reason], e.steps
    want = expected_real(case, state)
    if want is not None:
        assert e.real_id == want, e.steps
        assert e.real == str(state.reals[want].address)
    if C.CONN_HIT in case.extra:
        assert e.path == "connection"
        synced = state.conns[flow_key(case.frame)].flags & abi.ConnFlags.SYNCED
        assert e.entry == ("synced" if synced else "local")
        assert any("synced from a peer director" in s for s in e.steps) == bool(synced), e.steps
    elif C.CONN_CONFIRMED in case.extra:
        assert e.path == "pending"
    elif C.PERSIST_HIT in case.extra:
        assert e.path == "persistence"
    elif case.reason in (C.TX_DSR, C.PASS_LOCAL_REAL):
        assert e.path == "maglev"
        svc = next(s for s in state.services if s.svc_id == case.svc_id)
        assert e.slot is not None and int(svc.table[e.slot]) == e.real_id


def test_the_table_has_explainable_cases() -> None:
    assert len(EXPLAINABLE) >= 15
    assert {c.reason for c in EXPLAINABLE} == set(VERDICTS)  # every verdict explained
    paths = {k for c in EXPLAINABLE for k in c.extra}
    assert {C.CONN_HIT, C.PERSIST_HIT, C.SYN_RESCHEDULE, C.CONN_EXPIRED, C.CONN_REAL_GONE} <= paths
    assert C.CONN_REAL_DOWN in paths


@pytest.mark.parametrize("case", EXPLAINABLE, ids=lambda c: c.name)
def test_explain_on_the_model_state(case: PacketCase) -> None:
    client, service, syn = flow_of(case)  # type: ignore[misc]
    state, now = prepared(case)
    flow = explain.Flow.parse(client, service, syn)
    check(case, explain.explain_state(state, flow, now))


@pytest.mark.root
@pytest.mark.parametrize("case", EXPLAINABLE, ids=lambda c: c.name)
def test_explain_on_the_kernel_maps(case: PacketCase, bpf_runner: TestRunner) -> None:
    client, service, syn = flow_of(case)  # type: ignore[misc]
    state, _ = prepared(case)
    bpf_runner.write_state(state)
    check(case, explain.explain(bpf_runner.dp, client, service, syn))


def test_bad_input_is_a_sentence() -> None:
    for client, service, message in [
        ("1.2.3.4", "192.0.2.1:80", "expected ADDRESS:PORT"),
        ("999.1.1.1:5", "192.0.2.1:80", "not an IP address"),
        ("1.2.3.4:5", "192.0.2.1:80/sctp", "protocol must be tcp or udp"),
        ("[2001:db8::1]:5", "192.0.2.1:80", "same address family"),
    ]:
        with pytest.raises(ValueError, match=message):
            explain.Flow.parse(client, service)
