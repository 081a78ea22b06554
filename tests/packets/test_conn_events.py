"""The conn_events ring buffer through the compiled program (BPF_PROG_TEST_RUN)
and the Python reader (carom.cluster.events): a flow produces exactly one NEW
record when it enters the connection table, a re-pointed entry one REPOINT, and
nothing else does: not a flood of SYNs, not a backup, not a node whose lease ran
out. The packet table checks the records of every case against the model too."""

from __future__ import annotations

import copy
import select
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from carom import abi
from carom.abi import Counter as C
from carom.cluster.events import RECORD_SIZE, ConnEvent
from carom.config.limits import Limits
from carom.model.forward import decide
from tests.harness.testrun import TestRunner, event_tuple
from tests.packets.cases import (
    CLIENT,
    DIRECTOR_MAC,
    ROUTER_MAC,
    VIP,
    base_state,
    flow_key,
    maglev_real,
)

NEW, REPOINT = int(abi.ConnEventKind.NEW), int(abi.ConnEventKind.REPOINT)


def _tcp(flags: str, sport: int = 41000, src: str = CLIENT, ttl: int = 61) -> bytes:
    return bytes(
        Ether(src=ROUTER_MAC, dst=DIRECTOR_MAC)
        / IP(src=src, dst=VIP, ttl=ttl)
        / TCP(sport=sport, dport=80, flags=flags)
    )


def _udp(sport: int = 41000) -> bytes:
    return bytes(
        Ether(src=ROUTER_MAC, dst=DIRECTOR_MAC)
        / IP(src=CLIENT, dst=VIP, ttl=60)
        / UDP(sport=sport, dport=53)
        / b"q"
    )


def _many(template: bytes, n: int) -> list[bytes]:
    """n copies of a TCP/UDP frame with distinct source addresses (scapy is slow)."""
    out = []
    for i in range(n):
        f = bytearray(template)
        f[26:30] = (0x0B000000 + i).to_bytes(4, "big")
        out.append(bytes(f))
    return out


def test_record_layout_and_bad_records() -> None:
    assert RECORD_SIZE == 48  # struct conn_event: 40-byte key + 8, no padding to leak
    key = abi.FlowKey.from_buffer_copy(flow_key(_tcp("A")))
    rec = abi.ConnEventRecord(key=key, real_id=7, flags=1, kind=REPOINT, ttl=64)
    ev = ConnEvent.from_record(bytes(rec))
    assert ev == ConnEvent(abi.ConnEventKind.REPOINT, key, 7, 1, 64)
    with pytest.raises(ValueError, match="47 bytes"):
        ConnEvent.from_record(bytes(rec)[:47])
    with pytest.raises(ValueError):
        ConnEvent.from_record(bytes(rec)[:44] + b"\0\0\x09\0")  # kind 9: no such kind


@pytest.mark.root
def test_a_flow_makes_one_new_event_in_kernel_and_model(bpf_runner: TestRunner) -> None:
    """SYN, ACK, data, data: one NEW record (at the ACK) naming the flow, its real
    and its first packet's TTL; the model writes the same record."""
    state = base_state()
    frames = [_tcp("S"), _tcp("A", ttl=62), _tcp("PA", ttl=62), _tcp("A", ttl=62)]
    model_state = copy.deepcopy(state)
    bpf_runner.write_state(state)
    seen = []
    for f in frames:
        bpf_runner.run(f)
        seen.append([event_tuple(e) for e in bpf_runner.events.drain()])
    model = [
        [event_tuple(e) for e in decide(f, model_state, time.monotonic_ns()).events] for f in frames
    ]
    key = flow_key(frames[0])
    want = [(NEW, key, maglev_real(state, 0, key), 0, 61)]
    assert seen == [[], want, [], []]
    assert model == seen


@pytest.mark.root
def test_udp_and_repoint_events(bpf_runner: TestRunner) -> None:
    """UDP flows are announced like TCP ones; a SYN reusing a known tuple re-points
    its entry: one REPOINT, with the new packet's TTL (a lower one would be a loop)."""
    state = base_state()
    bpf_runner.write_state(state)
    u = _udp()
    for f in (u, u):
        bpf_runner.run(f)
    ukey = flow_key(u)
    assert [event_tuple(e) for e in bpf_runner.events.drain()] == [
        (NEW, ukey, maglev_real(state, 1, ukey), 0, 60)
    ]
    for f in (_tcp("S", sport=41001), _tcp("A", sport=41001), _tcp("S", sport=41001, ttl=64)):
        bpf_runner.run(f)
    tkey = flow_key(_tcp("S", sport=41001))
    real = maglev_real(state, 0, tkey)
    assert [event_tuple(e) for e in bpf_runner.events.drain()] == [
        (NEW, tkey, real, 0, 61),
        (REPOINT, tkey, real, 0, 64),
    ]


@pytest.mark.root
def test_no_events_for_a_syn_flood(bpf_runner: TestRunner) -> None:
    bpf_runner.write_state(base_state())
    for f in _many(_tcp("S"), 3000):
        bpf_runner.run(f)
    assert bpf_runner.events.drain() == []
    assert bpf_runner.counters()[C.NEW_FLOW] == 3000
    assert list(bpf_runner.dp["conn_table"].keys()) == []


@pytest.mark.root
@pytest.mark.parametrize("inactive", ["backup", "lease-expired"])
def test_no_events_when_not_active(bpf_runner: TestRunner, inactive: str) -> None:
    """Two packets of each of 50 flows (which would confirm them on an active
    node), with and without their entries present: no record, no entry."""
    state = base_state()
    assert state.node is not None
    if inactive == "backup":
        state.node.role = abi.Role.BACKUP
    else:
        state.node.lease_until_ns = time.monotonic_ns() - 10**8
    flows = _many(_tcp("A"), 50)
    for f in flows[:25]:
        state.conns[flow_key(f)] = abi.ConnVal(real_id=3, ttl=64, last_seen_ns=1)  # idle
    bpf_runner.write_state(state)
    for f in flows + flows:
        bpf_runner.run(f)
    assert bpf_runner.events.drain() == []
    # hold.h: the 25 flows with an entry (another real's) are held, not reset by
    # the stack; the 25 without one go to the stack
    reason = C.PASS_BACKUP if inactive == "backup" else C.PASS_LEASE_EXPIRED
    assert dict(bpf_runner.counters()) == {C.RX: 100, C.DROP_AWAIT_ACTIVE: 50, reason: 50}


@pytest.mark.root
def test_a_full_ring_loses_events_counted_and_forwards_anyway() -> None:
    """The smallest ring (64 KiB) holds 1170 records of 56 bytes; 1500 confirmed
    flows without a reader: 1170 arrive, 330 are counted as dropped, every packet
    is forwarded. The reader's fd is readable while records wait."""
    runner = TestRunner(
        Limits(
            max_services=16,
            max_reals=64,
            maglev_table_size=1021,
            conn_table_size=4096,
            persist_table_size=4096,
            max_vips=16,
            conn_events_bytes=1 << 16,
        )
    )
    try:
        runner.write_state(base_state())
        flows = _many(_tcp("A"), 1500)
        for f in flows:
            runner.run(f)
            runner.run(f)
        counters = runner.counters()
        assert counters[C.TX_DSR] == 3000 and counters[C.CONN_CONFIRMED] == 1500
        assert select.select([runner.events.fileno()], [], [], 1.0)[0]
        got = runner.events.drain()
        assert len(got) == (1 << 16) // 56
        assert counters[C.CONN_EVENTS_DROPPED] == 1500 - len(got)
        assert [bytes(e.key) for e in got] == [flow_key(f) for f in flows[: len(got)]]
        assert not select.select([runner.events.fileno()], [], [], 0)[0]
    finally:
        runner.close()


@pytest.mark.root
def test_the_batch_reader_follows_the_ring_around() -> None:
    """The reader maps the ring (carom.bpf.ringbuf.RingReader): 5 rounds of 1000
    flows through a 64 KiB ring (1170 records), read after each round, cross its
    end four times; a record that wraps is read whole (the data pages are mapped
    twice), every flow arrives once, in order, and nothing is dropped."""
    runner = TestRunner(
        Limits(
            max_services=16,
            max_reals=64,
            maglev_table_size=1021,
            conn_table_size=8192,
            persist_table_size=4096,
            max_vips=16,
            conn_events_bytes=1 << 16,
        )
    )
    try:
        runner.write_state(base_state())
        flows = _many(_udp(), 5000)
        for r in range(5):
            for f in flows[r * 1000 : (r + 1) * 1000]:
                runner.run(f)
                runner.run(f)
            got = runner.events.drain()
            assert [bytes(e.key) for e in got] == [
                flow_key(f) for f in flows[r * 1000 : (r + 1) * 1000]
            ]
            assert {e.kind for e in got} == {abi.ConnEventKind.NEW}
            assert runner.events.drain() == []
        counters = runner.counters()
        assert counters[C.CONN_CONFIRMED] == 5000 and counters[C.CONN_EVENTS_DROPPED] == 0
        assert runner.events.malformed == 0
    finally:
        runner.close()


def test_limits_refuse_a_ring_that_is_not_a_power_of_two() -> None:
    with pytest.raises(
        ValueError, match="not a power of two; a ring buffer needs one: use 65536 or 131072"
    ):
        Limits(conn_events_bytes=100000)
    with pytest.raises(ValueError, match="out of range"):
        Limits(conn_events_bytes=4096)
