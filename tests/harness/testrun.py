"""Running the real program on frames with BPF_PROG_TEST_RUN.

Writes a logical model.State into the maps, runs one frame (or a repeated
run for timing), and reads back what changed, in the same shape the reference
model reports, so the two implementations can be compared field by field."""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from carom import abi
from carom.bpf import libbpf
from carom.bpf.loader import Dataplane
from carom.bpf.maps import sum_percpu
from carom.bpf.ringbuf import RingBuffer
from carom.cluster.events import ConnEvent, ConnEvents
from carom.config.limits import Limits
from carom.model.state import State


@dataclass
class Outcome:
    """What one frame did, as either implementation reports it."""

    verdict: abi.Verdict
    frame: bytes
    counters: Tally[abi.Counter] = field(default_factory=Tally)
    svc_traffic: dict[int, tuple[int, int]] = field(default_factory=dict)
    real_traffic: dict[int, tuple[int, int]] = field(default_factory=dict)
    # conn_table: flow key -> (real, flags, ttl, seen)
    conns: dict[bytes, tuple[int, int, int, int]] = field(default_factory=dict)
    persist: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # real, seen
    # pending cache slots in use: slot -> (flow key, real, ttl, seen)
    pending: dict[int, tuple[bytes, int, int, int]] = field(default_factory=dict)
    # conn_events records, in order: (kind, flow key, real, flags, ttl)
    events: list[tuple[int, bytes, int, int, int]] = field(default_factory=list)
    # (new_flows, conn_hits) of svc_stats / real_stats entries where not (0, 0)
    svc_flows: dict[int, tuple[int, int]] = field(default_factory=dict)
    real_flows: dict[int, tuple[int, int]] = field(default_factory=dict)
    # trace_events records: (key, svc, real, ifindex, reason, len, captured bytes)
    traces: list[TraceTuple] = field(default_factory=list)


TraceTuple = tuple[bytes, int, int, int, int, int, bytes]


def trace_tuple(ev: abi.TraceEvent) -> TraceTuple:
    """A trace record as comparable plain values (its time left out)."""
    return (
        bytes(ev.key),
        int(ev.svc_id),
        int(ev.real_id),
        int(ev.ifindex),
        int(ev.reason),
        int(ev.len),
        bytes(ev.data)[: ev.caplen],
    )


EventTuple = tuple[int, bytes, int, int, int]


def event_tuple(ev: ConnEvent | abi.ConnEventRecord) -> EventTuple:
    """A conn event as comparable plain values."""
    return (int(ev.kind), bytes(ev.key), int(ev.real_id), int(ev.flags), int(ev.ttl))


def _stamps(state: State) -> dict[object, int]:
    """Every timestamp `state` holds, by table and key, before a run."""
    out: dict[object, int] = {}
    out.update({("conn", k): v.last_seen_ns for k, v in state.conns.items()})
    out.update({("persist", k): v.last_seen_ns for k, v in state.persist.items()})
    out.update({("pending", i): v.seen_ns for i, v in state.pending.items()})
    return out


def seen_marker(stamp: int, before: int | None) -> int:
    """A timestamp the run wrote becomes -1, one it left alone stays as it was: the
    kernel's coarse clock and the model's 'now' never agree to the nanosecond."""
    return stamp if before is not None and stamp == before else -1


@contextmanager
def _on_one_cpu() -> Iterator[None]:
    """The pending cache is per CPU and BPF_PROG_TEST_RUN runs on the caller's
    CPU: every run goes to the same one, as a flow's packets do under RSS, so a
    flow's second run meets the pending entry its first run wrote. Only for the
    run: pinning the whole pytest process (as before) also pinned every daemon,
    server and client the later integration tests start to that one CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class TestRunner:
    """A private (unpinned) instance of the program for frame-level runs."""

    __test__ = False  # not a pytest class

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits(
            max_services=16,  # services-map entries: a multi-port service has one per port
            max_reals=64,
            maglev_table_size=1021,
            conn_table_size=4096,
            persist_table_size=4096,
            max_vips=16,
        )
        self.dp = Dataplane.load(self.limits)
        self._pending_written: dict[int, abi.PendingConn] = {}
        self._if_slots: set[int] = set()  # if_macs slots written by write_state
        self.events = ConnEvents(self.dp)
        self._traces: list[abi.TraceEvent] = []
        self.trace_ring = RingBuffer(self.dp.map_fd("trace_events"), self._on_trace)

    def _on_trace(self, raw: bytes) -> None:
        self._traces.append(abi.TraceEvent.from_buffer_copy(raw))

    def traces(self) -> list[abi.TraceEvent]:
        """trace_events records written since the last call, oldest first."""
        self.trace_ring.consume()
        out, self._traces = self._traces, []
        return out

    @classmethod
    def on(cls, dp: Dataplane, limits: Limits) -> TestRunner:
        """A runner over an already loaded data plane (e.g. one just migrated)."""
        r = cls.__new__(cls)
        r.limits, r.dp, r._if_slots, r._pending_written = limits, dp, set(), {}
        r.events = ConnEvents(dp)
        r._traces = []
        r.trace_ring = RingBuffer(dp.map_fd("trace_events"), r._on_trace)
        return r

    def close(self) -> None:
        self.events.close()
        self.trace_ring.close()
        self.dp.close()

    def write_state(self, state: State) -> None:
        """Make the maps hold exactly `state` (and zero every counter)."""
        dp = self.dp
        for name in (
            "services",
            "vip_addrs",
            "real_macs",
            "conn_table",
            "persist_table",
        ):
            dp[name].clear()
        if state.node is None:
            dp["node_cfg"].update(0, abi.NodeCfg(role=int(abi.Role.BACKUP)))
        else:
            cfg = state.node.to_abi()
            cfg.real_down_words = abi.real_down_words(self.limits.max_reals)
            dp["node_cfg"].update(0, cfg)
        dp["lease"].update(0, state.node.lease_until_ns if state.node else 0)
        size = self.limits.maglev_table_size
        zeros = np.zeros(self.limits.max_services * size, dtype=np.uint32)
        for svc in state.services:
            if len(svc.table) != size:
                raise ValueError(f"service table has {len(svc.table)} slots, runner uses {size}")
            zeros[svc.svc_id * size : (svc.svc_id + 1) * size] = svc.table
        self._write_array("maglev", zeros)
        empty_real = abi.RealInfo()
        dp["reals"].update_batch(
            (i, state.reals[i].info() if i in state.reals else empty_real)
            for i in range(self.limits.max_reals)
        )
        for svc in state.services:
            for key in svc.keys():  # noqa: SIM118 (Service.keys, not a dict)
                dp["services"].update(key, svc.info())
        words = abi.real_down_words(self.limits.max_reals)
        down = abi.real_down_bits(((s.svc_id, r) for s in state.services for r in s.down), words)
        dp["real_down"].update_batch(
            (i, down.get(i, 0)) for i in range(self.limits.max_services * words)
        )
        for vk, vinfo in state.vip_infos().items():
            dp["vip_addrs"].update(abi.VipKey.from_bytes(vk), vinfo)
        filter_words = abi.vip_filter_words(s.vip for s in state.services)
        dp["vip_filter"].update_batch(
            (i, filter_words.get(i, 0)) for i in range(abi.VIP_FILTER_BITS // 64)
        )
        for mk, rid in state.real_macs().items():
            dp["real_macs"].update(abi.MacKey.from_bytes(mk), rid)
        for ifindex in self._if_slots - state.if_macs.keys():  # an array: zero, not delete
            dp["if_macs"].update(ifindex, abi.IfMac())
        for ifindex, mac in state.if_macs.items():
            dp["if_macs"].update(ifindex, abi.IfMac.of(mac))
        self._if_slots = set(state.if_macs)
        for k, v in state.conns.items():
            dp["conn_table"].update(abi.FlowKey.from_bytes(k), v)
        for k, pv in state.persist.items():
            dp["persist_table"].update(abi.PersistKey.from_bytes(k), pv)
        self.write_pending(state.pending)
        dp["trace_state"].update(0, state.trace_skip)  # every CPU's countdown
        self.zero_counters()
        self.events.drain()  # events of earlier runs are not this state's
        self.traces()

    def write_pending(self, slots: dict[int, abi.PendingConn]) -> None:
        """Every CPU's pending cache := `slots` (clearing what the last write left)."""
        empty = abi.PendingConn()
        stale = set(self._pending_written) | set(self.pending_slots())
        entries = [(i, empty) for i in stale - set(slots)] + list(slots.items())
        if entries:
            self.dp["pending"].update_batch(entries)
        self._pending_written = dict(slots)

    def pending_slots(self) -> dict[int, abi.PendingConn]:
        """Slots in use. The program ran on one CPU: where the CPUs' copies differ,
        the one that differs from what was written is that CPU's."""
        m = self.dp["pending"]
        out = {}
        # raw dump: decoding 16k slots per CPU as structs would dominate a test run
        for kraw, vraw in libbpf.map_lookup_batch(
            m.fd, m.key_size, m.slot_size * m.ncpus, m.max_entries
        ):
            if not any(vraw):
                continue
            idx = int.from_bytes(kraw, "little")
            before = bytes(self._pending_written.get(idx, abi.PendingConn()))
            cpus = [vraw[i : i + len(before)] for i in range(0, len(vraw), m.slot_size)]
            changed = [v for v in cpus if v != before]
            v = abi.PendingConn.from_buffer_copy(changed[0] if changed else cpus[0])
            if v.real_id:
                out[idx] = v
        return out

    def _write_array(self, name: str, values: np.ndarray) -> None:
        keys = np.arange(len(values), dtype=np.uint32)
        self.dp[name].update_batch_raw(
            keys.tobytes(), values.astype(np.uint32).tobytes(), len(keys)
        )

    def zero_counters(self) -> None:
        dp = self.dp
        dp["stats"].update_batch((i, 0) for i in range(abi.COUNTER_MAX))
        dp["svc_stats"].update_batch(
            (i, abi.TrafficCounter()) for i in range(self.limits.max_services)
        )
        dp["real_stats"].update_batch(
            (i, abi.TrafficCounter()) for i in range(self.limits.max_reals)
        )

    def run(self, frame: bytes, repeat: int = 1) -> tuple[abi.Verdict, bytes, int]:
        """(verdict, output frame, mean ns per run)."""
        with _on_one_cpu():
            retval, out, duration = libbpf.prog_test_run(self.dp.prog_fd, frame, repeat=repeat)
        return abi.Verdict(retval), out, duration

    def counters(self) -> Tally[abi.Counter]:
        """Counter totals as user space sees them (rx derived, abi.with_rx)."""
        raw = {}
        for idx, vals in self.dp["stats"].items():
            total = sum(vals)
            if total:
                raw[abi.Counter(idx)] = total
        return Tally(abi.with_rx(raw))

    def outcome(self, state: State, frame: bytes) -> Outcome:
        """Write `state`, run `frame` once, and report everything that changed."""
        self.write_state(state)
        before = _stamps(state)
        verdict, out, _ = self.run(frame)
        result = Outcome(verdict=verdict, frame=out, counters=self.counters())
        result.events = [event_tuple(e) for e in self.events.drain()]
        result.traces = [trace_tuple(t) for t in self.traces()]
        for name, target, flows in (
            ("svc_stats", result.svc_traffic, result.svc_flows),
            ("real_stats", result.real_traffic, result.real_flows),
        ):
            for idx, vals in self.dp[name].items():
                tc = sum_percpu(vals)
                if tc.packets:
                    target[idx] = (tc.packets, tc.bytes)
                if tc.new_flows or tc.conn_hits:
                    flows[idx] = (tc.new_flows, tc.conn_hits)
        for k, v in self.dp["conn_table"].items():
            result.conns[k.to_bytes()] = (
                v.real_id,
                v.flags,
                v.ttl,
                seen_marker(v.last_seen_ns, before.get(("conn", k.to_bytes()))),
            )
        for idx, pc in self.pending_slots().items():
            result.pending[idx] = (
                bytes(pc.key),
                pc.real_id,
                pc.ttl,
                seen_marker(pc.seen_ns, before.get(("pending", idx))),
            )
        for k, v in self.dp["persist_table"].items():
            kb = k.to_bytes()
            result.persist[kb] = (
                v.real_id,
                seen_marker(v.last_seen_ns, before.get(("persist", kb))),
            )
        return result


def model_outcome(state: State, frame: bytes) -> Outcome:
    """The reference model's Outcome for the same inputs (mutates `state`)."""
    from carom.model.forward import decide

    before = _stamps(state)
    d = decide(frame, state, time.monotonic_ns())
    return Outcome(
        verdict=d.verdict,
        frame=d.frame,
        counters=d.counters,
        svc_traffic=d.svc_traffic,
        real_traffic=d.real_traffic,
        conns={
            k: (v.real_id, v.flags, v.ttl, seen_marker(v.last_seen_ns, before.get(("conn", k))))
            for k, v in state.conns.items()
        },
        pending={
            i: (bytes(v.key), v.real_id, v.ttl, seen_marker(v.seen_ns, before.get(("pending", i))))
            for i, v in state.pending.items()
            if v.real_id
        },
        persist={
            k: (v.real_id, seen_marker(v.last_seen_ns, before.get(("persist", k))))
            for k, v in state.persist.items()
        },
        events=[event_tuple(e) for e in d.events],
        svc_flows=d.svc_flows,
        real_flows=d.real_flows,
        traces=[trace_tuple(d.trace)] if d.trace is not None else [],
    )
