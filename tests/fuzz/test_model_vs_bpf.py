"""Property tests: for random and mutated frames, the reference model and the
compiled program must agree on everything: verdict, output frame, counters,
traffic counters and the connection and persistence tables afterwards."""

from __future__ import annotations

import copy
import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from carom import abi
from carom.model.state import State
from tests.harness.testrun import TestRunner, model_outcome
from tests.packets.cases import (
    CASES,
    CLIENT,
    DIRECTOR_MAC,
    REALS,
    ROUTER_MAC,
    VIP,
    VIP6,
    VIP_ALL_PORTS,
    VIP_PERSIST,
    base_state,
    flow_key,
    pending_slot,
)

pytestmark = pytest.mark.root

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_same(runner: TestRunner, state: State, frame: bytes) -> None:
    if len(frame) < 14:  # the kernel refuses these before XDP runs
        return
    want = model_outcome(copy.deepcopy(state), frame)
    got = runner.outcome(copy.deepcopy(state), frame)
    assert got.verdict == want.verdict
    assert got.frame == want.frame
    assert dict(got.counters) == dict(want.counters)
    assert got.svc_traffic == want.svc_traffic
    assert got.real_traffic == want.real_traffic
    assert got.conns == want.conns
    assert got.persist == want.persist
    assert got.pending == want.pending
    assert got.events == want.events


@given(data=st.binary(min_size=14, max_size=160))
@FUZZ
def test_random_bytes(bpf_runner: TestRunner, data: bytes) -> None:
    assert_same(bpf_runner, base_state(), data)


@given(
    data=st.binary(min_size=0, max_size=120), ethertype=st.sampled_from([b"\x08\x00", b"\x86\xdd"])
)
@FUZZ
def test_random_ip_payload(bpf_runner: TestRunner, data: bytes, ethertype: bytes) -> None:
    head = abi.mac_bytes(DIRECTOR_MAC) + abi.mac_bytes(ROUTER_MAC) + ethertype
    assert_same(bpf_runner, base_state(), head + data)


mutation = st.tuples(st.integers(min_value=0, max_value=200), st.integers(0, 255))


@given(
    case=st.sampled_from([c for c in CASES if c.kernel]),
    flips=st.lists(mutation, max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=14, max_value=200)),
    extend=st.binary(max_size=16),
)
@FUZZ
def test_mutated_cases(bpf_runner: TestRunner, case, flips, cut, extend) -> None:  # type: ignore[no-untyped-def]
    frame = bytearray(case.frame)
    for pos, val in flips:
        if pos < len(frame):
            frame[pos] = val
    out = bytes(frame[:cut] if cut else frame) + extend
    state = base_state()
    case.setup(state, 0)  # times relative to 0: entries look very old, also a valid state
    assert_same(bpf_runner, state, out)


@given(
    v6=st.booleans(),
    udp=st.booleans(),
    vip=st.sampled_from([VIP, VIP_ALL_PORTS, VIP_PERSIST, "192.0.2.77"]),
    dport=st.sampled_from([80, 53, 443, 22, 8443]),
    sport=st.integers(1, 65535),
    client=st.integers(1, 2**32 - 1),
    flags=st.one_of(st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x01, 0x04]), st.integers(0, 255)),
    payload=st.binary(max_size=24),
    seeded_real=st.one_of(st.none(), st.sampled_from(list(REALS)), st.just(99)),
    age_s=st.one_of(
        st.floats(min_value=0.0, max_value=3.0),
        st.sampled_from([299.0, 301.0, 400.0, 899.0, 901.0, 5000.0]),
    ),
    persist_age_s=st.one_of(
        st.floats(min_value=0.0, max_value=3.0), st.sampled_from([299.0, 301.0, 5000.0])
    ),
    unusable=st.sets(st.sampled_from(list(REALS))),
    role=st.sampled_from(list(abi.Role)),
    table=st.sampled_from(["conn", "pending"]),
    ttl=st.sampled_from([64, 63, 62, 1, 255]),
    entry_ttl=st.sampled_from([0, 64]),
    from_real=st.booleans(),
    peer=st.sampled_from(["none", "listed", "sender"]),
    lease_s=st.sampled_from([None, -5.0, 5.0]),
    down=st.sets(st.sampled_from(list(REALS))),
)
@FUZZ
def test_structured_flows(  # type: ignore[no-untyped-def]
    bpf_runner: TestRunner,
    v6,
    udp,
    vip,
    dport,
    sport,
    client,
    flags,
    payload,
    seeded_real,
    age_s,
    persist_age_s,
    unusable,
    role,
    table,
    ttl,
    entry_ttl,
    from_real,
    peer,
    lease_s,
    down,
) -> None:
    if v6:
        l3 = IPv6(src=str(ipaddress.IPv6Address((0x20010DB8 << 96) | client)), dst=VIP6, hlim=ttl)
    else:
        l3 = IP(src=str(ipaddress.IPv4Address(client)), dst=vip, ttl=ttl)
    l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport, flags=flags)
    src_mac = REALS[3][1] if from_real else ROUTER_MAC
    peer_mac = "02:ca:00:00:00:02"
    if peer == "sender":
        src_mac = peer_mac
    frame = bytes(Ether(src=src_mac, dst=DIRECTOR_MAC) / l3 / l4 / payload)
    state = base_state()
    assert state.node is not None
    state.node.role = role
    if peer != "none":
        state.node.peer_macs = (abi.mac_bytes(peer_mac),)
    import time

    if lease_s is not None:  # else the base state's lease that never runs out
        state.node.lease_until_ns = time.monotonic_ns() + int(lease_s * 1e9)
    for svc in state.services:  # down for every service; tables unchanged (mid-reload)
        svc.down = frozenset(down)

    # The data plane's clock is up to a tick behind (bpf/clock.h): ages within
    # a few ms of the 1 s refresh granularity may fall either way.
    assume(abs(age_s - 1.0) > 0.02 and abs(persist_age_s - 1.0) > 0.02)
    now = time.monotonic_ns()
    if seeded_real is not None and table == "conn":
        state.conns[flow_key(frame)] = abi.ConnVal(
            real_id=seeded_real, ttl=entry_ttl, last_seen_ns=now - int(age_s * 1e9)
        )
    elif seeded_real is not None:
        state.pending[pending_slot(frame)] = abi.PendingConn(
            key=abi.FlowKey.from_buffer_copy(flow_key(frame)),
            real_id=seeded_real,
            ttl=entry_ttl,
            seen_ns=now - int(age_s * 1e9),
        )
    if not v6 and vip == VIP_PERSIST and seeded_real is not None:
        from tests.packets.cases import persist_key

        state.persist[persist_key(str(l3.src), 4)] = abi.PersistVal(
            real_id=seeded_real, last_seen_ns=now - int(persist_age_s * 1e9)
        )
    for rid in unusable:
        state.reals[rid].usable = False
    for svc in state.services:
        svc.down = frozenset(down)
    assert_same(bpf_runner, state, frame)
    _ = CLIENT


@given(
    v6=st.booleans(),
    udp=st.booleans(),
    icmp_type=st.integers(0, 15),
    vip=st.sampled_from([VIP, VIP_ALL_PORTS, VIP_PERSIST, "192.0.2.77"]),
    vip_port=st.sampled_from([80, 53, 443, 22, 8443]),
    client_port=st.integers(1, 65535),
    client=st.integers(1, 2**32 - 1),
    quote_len=st.integers(0, 60),
    seeded_real=st.one_of(st.none(), st.sampled_from(list(REALS)), st.just(99)),
    unusable=st.sets(st.sampled_from(list(REALS))),
    down=st.sets(st.sampled_from(list(REALS))),
)
@FUZZ
def test_icmp_errors_quoting_flows(  # type: ignore[no-untyped-def]
    bpf_runner: TestRunner,
    v6,
    udp,
    icmp_type,
    vip,
    vip_port,
    client_port,
    client,
    quote_len,
    seeded_real,
    unusable,
    down,
) -> None:
    """ICMP errors (and non-errors) to a VIP quoting a reply of some flow, with
    or without its connection entry: the model and the program agree."""
    from scapy.layers.inet import ICMP
    from scapy.layers.inet6 import ICMPv6Unknown

    from tests.packets.icmp_cases import _key

    if v6:
        cl, v = str(ipaddress.IPv6Address((0x20010DB8 << 96) | client)), VIP6
        outer, quote_l3 = IPv6(src="2001:db8:9::1", dst=v), IPv6(src=v, dst=cl)
        head = ICMPv6Unknown(type=icmp_type, msgbody=bytes(4))  # 4 more header bytes
    else:
        cl, v = str(ipaddress.IPv4Address(client)), vip
        outer, quote_l3 = IP(src="203.0.113.1", dst=v), IP(src=v, dst=cl)
        head = ICMP(type=icmp_type)
    l4 = UDP(sport=vip_port, dport=client_port) if udp else TCP(sport=vip_port, dport=client_port)
    quote = bytes(quote_l3 / l4)[:quote_len]
    frame = bytes(Ether(src=ROUTER_MAC, dst=DIRECTOR_MAC) / outer / head / quote)
    state = base_state()
    if seeded_real is not None:
        key = _key(cl, v, client_port, vip_port, 17 if udp else 6)
        state.conns[key] = abi.ConnVal(real_id=seeded_real, last_seen_ns=0)
    for rid in unusable:
        state.reals[rid].usable = False
    for svc in state.services:
        svc.down = frozenset(down)
    assert_same(bpf_runner, state, frame)
