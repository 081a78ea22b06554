"""Part 1: per-packet cost in the kernel, with BPF_PROG_TEST_RUN.

carom's paths against a bare XDP_TX reflector (the floor), alternated in the
same run. Each repeated run is checked against carom's own counters so the
average describes the path we meant (measuring.md: repetitions run on the same
buffer, and a program that rewrites bytes sees its own output).

DSR rewrites only MACs, but after one repetition the destination MAC is the
real's, which the program passes as not addressed to it (`pass_not_our_mac`),
and after two the source MAC is the real's, which the new-flow loop check would
drop. The benchmark's reals therefore all carry the director's own MAC, so the
rewrite is a fixed point (the same copies as for real traffic), and the state
keeps the real servers' forwarding MACs out of `real_macs` (which holds other
MACs, so the lookup is still a miss in a populated map, as for real traffic).

A flow enters the connection table with its second packet (bpf/sched.h), so the
hit rows are seeded with two packets of their flow. The new-flow rows use tuples
that never get a second packet: every repetition after the first finds the
flow's own pending slot and schedules it again (Maglev, persistence) and rewrites
the slot, the same work as a flow never seen (a slot read, the choice, a slot
write), so the rows time a new flow's real cost.

The connection-table hit rows with `carom trace` on (bpf/trace.h) set the
tracing fields of node_cfg as the daemon does: sampled one in 1000 (the ring
holds every record of a timed run, so none is dropped), or with a host filter
that matches nothing (the filter's cost alone). Off, tracing is one test of a
node_cfg field: the plain hit row is the tracing-off row.

A flow's connection event (a NEW record in the `conn_events` ring buffer) is
written when its second packet confirms it, which a repeated run cannot repeat:
the confirmation row times single runs, each the second packet of a fresh flow.
A SYN reusing a known tuple re-points the entry on every repetition (a REPOINT
record each time), so that row times the event's cost with 200k repetitions; its
records are drained after every timed run (the ring would otherwise fill and the
failing output is cheaper than a real one)."""

from __future__ import annotations

import ipaddress
import time

import numpy as np
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from tests.harness.testrun import TestRunner

from benchmarks.common import Budget, Row, alternate
from carom import abi
from carom.abi import Counter as C
from carom.bpf import libbpf
from carom.bpf.loader import object_path
from carom.config.limits import Limits
from carom.model.forward import LOOPBACK_IFINDEX
from carom.model.state import Node, Real, Service, State
from carom.sched.maglev import build_ids

SECTION = "1 per-packet cost (BPF_PROG_TEST_RUN)"
SIZE = 65537
DIR_MAC, ROUTER_MAC = "02:ca:00:00:00:02", "02:ca:00:00:00:01"
VIP, VIP6, VIP_P = "192.0.2.100", "2001:db8:2::100", "192.0.2.102"
VIP_M = "192.0.2.103"  # a multi-port service (ports: [25, 110, 143, "5222-5223"])
CLIENT, CLIENT6 = "198.51.100.10", "2001:db8:1::10"


def _row(ids: list[int], keys: list[bytes]) -> np.ndarray:
    return build_ids({k: (i, 1) for i, k in zip(ids, keys, strict=True)}, SIZE)


def bench_state() -> State:
    ip = ipaddress.ip_address
    own = abi.mac_bytes(DIR_MAC)  # see the module doc: the rewrite stays a fixed point
    reals = {i: Real(i, ip(f"192.0.2.{10 + i}"), mac=own) for i in (1, 2, 3)}
    reals |= {i: Real(i, ip(f"2001:db8:2::{i}"), mac=own) for i in (4, 5)}
    k4 = [bytes([4]) + reals[i].address.packed for i in (1, 2, 3)]
    k6 = [bytes([6]) + reals[i].address.packed for i in (4, 5)]
    return State(
        node=Node(maglev_size=SIZE, lease_until_ns=2**64 - 1),  # a lease that never runs out
        if_macs={LOOPBACK_IFINDEX: abi.mac_bytes(DIR_MAC)},  # test runs arrive on lo
        reals=reals,
        services=[
            Service(vip=ip(VIP), proto=6, port=80, svc_id=0, table=_row([1, 2, 3], k4)),
            Service(vip=ip(VIP6), proto=6, port=80, svc_id=1, table=_row([4, 5], k6)),
            Service(
                vip=ip(VIP_P),
                proto=6,
                port=443,
                svc_id=2,
                table=_row([1, 2, 3], k4),
                persist_timeout_s=300,
            ),
            Service(
                vip=ip(VIP_M),
                proto=6,
                port=25,
                more_ports=(110, 143, 5222, 5223),
                svc_id=3,
                table=_row([1, 2, 3], k4),
                persist_timeout_s=300,
            ),
        ],
    )


def _frame(l3: object, flags: str, dport: int = 80, sport: int = 40000) -> bytes:
    return bytes(
        Ether(src=ROUTER_MAC, dst=DIR_MAC)
        / l3
        / TCP(sport=sport, dport=dport, flags=flags)
        / (b"x" * 20)
    )


class KernelBench:
    def __init__(self) -> None:
        ring = {"conn_events_bytes": 1 << 26} if "conn_events_bytes" in Limits.model_fields else {}
        self.runner = TestRunner(
            Limits(
                max_services=8,  # services-map entries: the multi-port service has five
                max_reals=16,
                maglev_table_size=SIZE,
                conn_table_size=1 << 20,
                persist_table_size=4096,
                max_vips=16,
                **ring,  # 64 MiB: the REPOINT row's records of one timed run
            )
        )
        refl = libbpf.BpfObject(object_path("bench_reflector.bpf.o"))
        refl.load()
        self.reflector = refl
        self.reflector_fd = refl.program_fd("carom_reflect")

    def close(self) -> None:
        self.runner.close()
        self.reflector.close()

    def prepare(self, state: State, seed: list[bytes]) -> None:
        """Write the state, run the seeding frames once (they create conn and
        persistence entries), then replace real_macs by decoys (see module doc)."""
        self.runner.write_state(state)
        for f in seed:
            self.runner.run(f)
        rm = self.runner.dp["real_macs"]
        rm.clear()
        for i in range(3):
            rm.update(abi.MacKey.from_buffer_copy(bytes([2, 0xEE, 0, 0, 0, i, 0, 0])), 100 + i)

    def timed(self, frame: bytes, repeat: int, expect: dict[C, int]) -> float:
        """Mean ns per packet of `repeat` runs, after checking the counters show
        that every run took the intended path."""
        self.runner.zero_counters()
        _, _, ns = self.runner.run(frame, repeat=repeat)
        got = self.runner.counters()
        for counter, per_run in expect.items():
            if got.get(counter, 0) != per_run * repeat:
                raise AssertionError(
                    f"repeated run took another path: {counter.name}={got.get(counter, 0)}, "
                    f"expected {per_run * repeat}; counters {dict(got)}"
                )
        return float(ns)

    def drained(self, ns: float) -> float:
        """Empty the conn_events ring (a version without one: nothing to do)."""
        events = getattr(self.runner, "events", None)
        if events is not None:
            events.drain()
        return ns

    def traced(
        self, frame: bytes, repeat: int, one_in: int, host: str | None = None, records: int = 0
    ) -> float:
        """A connection-table hit timed with `carom trace` on (node_cfg, as the
        daemon writes it): one in `one_in` sampled, or none if `host` matches
        nothing. Then off again, the ring drained, and the records counted: the
        ring holds them all (CAROM_TRACE_EVENTS_BYTES), so no drop is timed."""
        dp = self.runner.dp
        node = dp["node_cfg"].lookup(0)
        node.trace_one_in = one_in
        if host is not None:
            node.trace_addr = abi.Addr.of(ipaddress.ip_address(host))
            node.trace_family = 4
        dp["trace_state"].update(0, 0)
        dp["node_cfg"].update(0, node)
        try:
            ns = self.timed(frame, repeat, {C.CONN_HIT: 1, C.TX_DSR: 1, C.TRACE_DROPPED: 0})
        finally:
            node.trace_one_in, node.trace_family, node.trace_addr = 0, 0, abi.Addr()
            dp["node_cfg"].update(0, node)
        got = len(self.runner.traces())
        if got != records:
            raise AssertionError(f"tracing 1 in {one_in}: {got} records, expected {records}")
        return ns

    def reflect(self, frame: bytes, repeat: int) -> float:
        retval, _, ns = libbpf.prog_test_run(self.reflector_fd, frame, repeat=repeat)
        assert retval == abi.Verdict.TX
        return float(ns)


def run(budget_s: float = 120.0, repeat: int = 200_000, rounds: int = 6) -> list[Row]:
    budget = Budget(budget_s)
    kb = KernelBench()
    try:
        ack = _frame(IP(src=CLIENT, dst=VIP), "A")
        syn = _frame(IP(src=CLIENT, dst=VIP), "S", sport=40001)
        ack6 = _frame(IPv6(src=CLIENT6, dst=VIP6), "A")
        psyn = _frame(IP(src=CLIENT, dst=VIP_P), "S", dport=443)
        # an earlier, established connection of the same client: its persistence entry
        pdone = [_frame(IP(src=CLIENT, dst=VIP_P), f, dport=443, sport=40009) for f in "SA"]
        other = _frame(IP(src=CLIENT, dst="192.0.2.50"), "A")
        # a known tuple (two packets: in conn_table) whose SYNs re-point it every run
        reuse = [_frame(IP(src=CLIENT, dst=VIP), f, sport=40002) for f in "SA"]
        resyn = reuse[0]
        # a multi-port service: an established IMAP connection, then the same
        # client's SMTP SYN, which its IMAP connection's persistence entry decides
        mack = _frame(IP(src=CLIENT, dst=VIP_M), "A", dport=143, sport=40010)
        msyn = _frame(IP(src=CLIENT, dst=VIP_M), "S", dport=25, sport=40011)
        kb.prepare(bench_state(), [ack, ack, ack6, ack6, *pdone, *reuse, mack, mack])
        cases = {
            "XDP_TX reflector (floor)": lambda: kb.reflect(ack, repeat),
            "carom DSR, connection-table hit": lambda: kb.timed(
                ack, repeat, {C.CONN_HIT: 1, C.TX_DSR: 1}
            ),
            "carom new flow (SYN: Maglev + pending-slot write)": lambda: kb.timed(
                syn, repeat, {C.NEW_FLOW: 1, C.TX_DSR: 1, C.SYN_RESCHEDULE: 0}
            ),
            "carom persistence hit (SYN of a known client)": lambda: kb.timed(
                psyn, repeat, {C.PERSIST_HIT: 1, C.TX_DSR: 1, C.SYN_RESCHEDULE: 0}
            ),
            "carom DSR, connection-table hit, carom trace on: 1 in 1000 recorded": lambda: (
                kb.traced(ack, repeat, 1000, records=-(-repeat // 1000))
            ),
            "carom DSR, connection-table hit, carom trace on: host filter matches none": (
                lambda: kb.traced(ack, repeat, 1, host="203.0.113.1")
            ),
            "carom IPv6 connection-table hit": lambda: kb.timed(
                ack6, repeat, {C.CONN_HIT: 1, C.TX_DSR: 1}
            ),
            "carom non-VIP pass-through": lambda: kb.timed(other, repeat, {C.PASS_NOT_VIP: 1}),
            "carom SYN reusing a known tuple (re-pointed in place + REPOINT event)": lambda: (
                kb.drained(
                    kb.timed(resyn, repeat, {C.SYN_RESCHEDULE: 1, C.NEW_FLOW: 1, C.TX_DSR: 1})
                )
            ),
            "carom multi-port service, connection-table hit (port 143)": lambda: kb.timed(
                mack, repeat, {C.CONN_HIT: 1, C.TX_DSR: 1}
            ),
            "carom multi-port persistence hit (SYN to port 25 after 143)": lambda: kb.timed(
                msyn, repeat, {C.PERSIST_HIT: 1, C.TX_DSR: 1, C.SYN_RESCHEDULE: 0}
            ),
        }
        results = alternate(cases, rounds)
        floor = "XDP_TX reflector (floor)"
        rows = [
            Row(SECTION, name, "ns/pkt", samples, baseline=None if name == floor else floor)
            for name, samples in results.items()
        ]
        if not budget.expired():
            rows += confirmations(kb, budget)
        if not budget.expired():
            rows += big_table(kb, budget)
        return rows
    finally:
        kb.close()


def _flow_keys(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct IPv4 TCP flow keys to VIP:80, packed like struct flow_key."""
    keys = np.zeros((n, 40), dtype=np.uint8)
    src = rng.choice(2**32 - 1, size=n, replace=False).astype(">u4")
    keys[:, 0:4] = src.view(np.uint8).reshape(n, 4)
    keys[:, 16:20] = np.frombuffer(ipaddress.ip_address(VIP).packed, dtype=np.uint8)
    keys[:, 32:34] = np.frombuffer((40000).to_bytes(2, "big"), dtype=np.uint8)
    keys[:, 34:36] = np.frombuffer((80).to_bytes(2, "big"), dtype=np.uint8)
    keys[:, 36] = 6
    keys[:, 37] = 4
    return keys


def confirmations(kb: KernelBench, budget: Budget, flows: int = 3000) -> list[Row]:
    """A flow's second packet: pending -> conn_table and its NEW event. Single runs
    (repeat=1: a confirmation happens once per flow), each on a fresh flow whose
    first packet ran just before (untimed)."""
    kb.prepare(bench_state(), [])
    template = bytearray(_frame(IP(src=CLIENT, dst=VIP), "A"))
    samples: list[float] = []
    kb.runner.zero_counters()
    for i in range(flows):
        template[26:30] = (0x0B000000 + i).to_bytes(4, "big")
        frame = bytes(template)
        kb.runner.run(frame)
        _, _, ns = kb.runner.run(frame, repeat=1)
        samples.append(float(ns))
        if budget.expired():
            break
    kb.drained(0.0)
    got = kb.runner.counters().get(C.CONN_CONFIRMED, 0)
    assert got == len(samples), f"{got} confirmations for {len(samples)} flows"
    kb.runner.dp["conn_table"].clear()
    return [
        Row(
            SECTION,
            "carom flow confirmation (2nd packet: conn_table insert + NEW event, single runs)",
            "ns/pkt",
            samples,
            note="repeat=1 timings include the kernel timer's own cost",
        )
    ]


def big_table(kb: KernelBench, budget: Budget, probes: int = 3000) -> list[Row]:
    """Connection-table hits on random entries of a 1M-entry table versus a
    1k-entry table: single runs (repeat=1, the kernel times the program alone),
    each on a different flow, so the entry is rarely in the CPU cache."""
    rng = np.random.default_rng(7)
    now = time.monotonic_ns()
    conn = kb.runner.dp["conn_table"]
    template = bytearray(_frame(IP(src=CLIENT, dst=VIP), "A"))
    out = []
    for label, n in (("1k", 1000), ("1M", 1 << 20)):
        kb.prepare(bench_state(), [])
        conn.clear()
        keys = _flow_keys(n, rng)
        vals = np.zeros((n, 16), dtype=np.uint8)
        vals[:, 0] = 1 + (np.arange(n) % 3)
        vals[:, 8:16] = np.frombuffer(np.uint64(now).tobytes(), dtype=np.uint8)
        for i in range(0, n, 65536):
            chunk = keys[i : i + 65536]
            conn.update_batch_raw(chunk.tobytes(), vals[i : i + 65536].tobytes(), len(chunk))
        samples: list[float] = []
        idx = rng.integers(0, n, size=probes)
        kb.runner.zero_counters()
        for i in idx:
            template[26:30] = keys[i, 0:4].tobytes()
            _, _, ns = kb.runner.run(bytes(template), repeat=1)
            samples.append(float(ns))
            if budget.expired():
                break
        hits = kb.runner.counters().get(C.CONN_HIT, 0)
        assert hits == len(samples), f"{hits} hits for {len(samples)} probes"
        out.append(
            Row(
                SECTION,
                f"carom conn hit, random entry of a {label}-entry table (single runs)",
                "ns/pkt",
                samples,
                baseline=None
                if label == "1k"
                else "carom conn hit, random entry of a 1k-entry table (single runs)",
                note="repeat=1 timings include the kernel timer's own cost",
            )
        )
        conn.clear()
    return out


if __name__ == "__main__":
    from benchmarks.run import table

    print(table(run()))
