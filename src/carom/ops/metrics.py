"""Prometheus metrics: the daemon's status snapshot as metric families.

The collector reads a snapshot (the dict `carom status --json` shows, read by the
Ops hub at most once a second, off the event loop) and never touches a map
itself. Other parts of the daemon add their own figures by registering a
`Collector` (prometheus_client's protocol: `collect()` yields metric families)
with `MetricsRegistry.register`; see docs/operations.md for the names in use.

Conventions: `carom_` prefix, `_total` for counters, base units (bytes, seconds)."""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from carom import __version__, abi

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Every state a real may be shown in (the reconciler's, and health's when it
# lands); each gets a 0/1 series so that a state change is a value change.
REAL_STATES = ("up", "down", "draining", "drained", "unresolved", "local")
_EVENTS = sorted(abi.DETAIL_COUNTERS, key=int)


class Collector(Protocol):
    """What the registry calls on each scrape, in a worker thread: yield metric
    families built from state already in memory; do not block or do I/O."""

    def collect(self) -> Iterable[Metric]: ...


class MetricsRegistry:
    """The daemon's own registry (never prometheus_client's global one, so that
    tests and several daemons in one process do not share series)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.core = DaemonCollector()
        self.registry.register(self.core)
        self._lock = threading.Lock()

    def register(self, collector: Collector) -> None:
        """Add a collector (health, cluster, sync ...) to every later scrape."""
        self.registry.register(collector)

    def unregister(self, collector: Collector) -> None:
        self.registry.unregister(collector)

    def render(self, snapshot: Mapping[str, Any], ops: Mapping[str, Any]) -> bytes:
        """The exposition text for one snapshot. Runs in a worker thread."""
        with self._lock:
            self.core.snapshot, self.core.ops = snapshot, ops
            out: bytes = generate_latest(self.registry)
            return out


def _svc_labels(svc: Mapping[str, Any]) -> list[str]:
    return [str(svc["name"]), str(svc["vip"]), str(svc["port"]), str(svc["protocol"])]


class DaemonCollector:
    """The built-in families, from the status snapshot and the hub's own figures."""

    def __init__(self) -> None:
        self.snapshot: Mapping[str, Any] = {}
        self.ops: Mapping[str, Any] = {}

    def collect(self) -> Iterable[Metric]:
        st, ops = self.snapshot, self.ops
        info = GaugeMetricFamily(
            "carom_build_info", "carom version and Python, value 1", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        if not st:
            return
        yield from self._services(st)
        yield from self._datapath(st)
        yield from self._daemon(st, ops)

    def _services(self, st: Mapping[str, Any]) -> Iterable[Metric]:
        svc_l = ["service", "vip", "port", "protocol"]
        pk = CounterMetricFamily(
            "carom_service_packets", "Packets forwarded or passed for a service", labels=svc_l
        )
        by = CounterMetricFamily(
            "carom_service_bytes", "Bytes of a service's packets (frame length)", labels=svc_l
        )
        nf = CounterMetricFamily(
            "carom_service_new_flows",
            "Flows a service scheduled (Maglev or a persistence entry chose the real)",
            labels=svc_l,
        )
        hits = CounterMetricFamily(
            "carom_service_conn_table_hits",
            "A service's packets that followed their connection-table entry",
            labels=svc_l,
        )
        state = GaugeMetricFamily(
            "carom_real_state",
            "1 for the state a real is in for a service, 0 for the others",
            labels=["service", "real", "state"],
        )
        weight = GaugeMetricFamily(
            "carom_real_weight", "A real's weight in a service", labels=["service", "real"]
        )
        rpk = CounterMetricFamily(
            "carom_real_packets", "Packets sent to a real (over all services)", labels=["real"]
        )
        rby = CounterMetricFamily(
            "carom_real_bytes", "Bytes sent to a real (over all services)", labels=["real"]
        )
        rnf = CounterMetricFamily(
            "carom_real_new_flows", "Flows scheduled to a real (over all services)", labels=["real"]
        )
        rhits = CounterMetricFamily(
            "carom_real_conn_table_hits",
            "Packets sent to a real by their connection-table entry (over all services)",
            labels=["real"],
        )
        seen: set[str] = set()
        for svc in st.get("services", []):
            labels = _svc_labels(svc)
            pk.add_metric(labels, svc["packets"])
            by.add_metric(labels, svc["bytes"])
            nf.add_metric(labels, svc.get("new_flows", 0))
            hits.add_metric(labels, svc.get("conn_hits", 0))
            for r in svc["reals"]:
                states = REAL_STATES if r["state"] in REAL_STATES else (*REAL_STATES, r["state"])
                for s in states:
                    state.add_metric([svc["name"], r["address"], s], 1 if s == r["state"] else 0)
                weight.add_metric([svc["name"], r["address"]], r["weight"])
                if r["address"] not in seen:
                    seen.add(r["address"])
                    rpk.add_metric([r["address"]], r["packets"])
                    rby.add_metric([r["address"]], r["bytes"])
                    rnf.add_metric([r["address"]], r.get("new_flows", 0))
                    rhits.add_metric([r["address"]], r.get("conn_hits", 0))
        for d in st.get("draining", []):
            if d["address"] not in seen:
                rpk.add_metric([d["address"]], d["packets"])
        yield from (pk, by, nf, hits, state, weight, rpk, rby, rnf, rhits)

    def _datapath(self, st: Mapping[str, Any]) -> Iterable[Metric]:
        counters: Mapping[str, int] = st.get("counters", {})
        verdicts = CounterMetricFamily(
            "carom_datapath_packets",
            "Packets by the data plane's verdict and its reason (bpf/stats.h)",
            labels=["verdict", "reason"],
        )
        for c in sorted(abi.VERDICT_REASONS, key=int):
            verdict = abi.verdict_of(c).name.lower()
            verdicts.add_metric([verdict, c.name.lower()], counters.get(c.name.lower(), 0))
        yield verdicts
        yield CounterMetricFamily(
            "carom_datapath_received_packets",
            "Packets the XDP program saw (the sum of every reason)",
            value=counters.get("rx", 0),
        )
        events = CounterMetricFamily(
            "carom_datapath_flow_events",
            "Scheduling events counted on top of a packet's reason: conn_hit (connection "
            "table hit), new_flow (scheduled by Maglev), persist_hit, syn_reschedule, ...",
            labels=["event"],
        )
        for c in _EVENTS:
            events.add_metric([c.name.lower()], counters.get(c.name.lower(), 0))
        yield events
        yield CounterMetricFamily(
            "carom_new_flows", "Flows scheduled by Maglev", value=counters.get("new_flow", 0)
        )
        yield CounterMetricFamily(
            "carom_conn_table_hits",
            "Packets that followed a connection-table entry",
            value=counters.get("conn_hit", 0),
        )
        if st.get("connections") is not None:
            yield GaugeMetricFamily(
                "carom_conn_table_entries",
                "Entries in the connection table (LRU; expired ones count until evicted)",
                value=st["connections"],
            )
        if "conn_table_size" in st:
            yield GaugeMetricFamily(
                "carom_conn_table_capacity",
                "Size of the connection table (limits.conn_table_size)",
                value=st["conn_table_size"],
            )
        xdp = GaugeMetricFamily(
            "carom_xdp_attached",
            "1 per interface carom is attached to",
            labels=["interface", "mode"],
        )
        for i in st.get("interfaces", []):
            xdp.add_metric([i["name"], i["mode"]], 1)
        yield xdp

    def _daemon(self, st: Mapping[str, Any], ops: Mapping[str, Any]) -> Iterable[Metric]:
        role = GaugeMetricFamily(
            "carom_node_role", "1 for this node's configured role", labels=["role"]
        )
        role.add_metric([str(st.get("role"))], 1)
        yield role
        yield GaugeMetricFamily(
            "carom_start_time_seconds",
            "When the daemon started (Unix time)",
            value=ops.get("started", 0),
        )
        reloads = CounterMetricFamily(
            "carom_reloads",
            "Reloads since start, by result: ok, refused (nothing changed), failed (rolled back)",
            labels=["result"],
        )
        for result in ("ok", "refused", "failed"):
            reloads.add_metric([result], ops.get("reloads", {}).get(result, 0))
        yield reloads
        last = st.get("last_reload") or {}
        if last:
            yield GaugeMetricFamily(
                "carom_last_reload_success",
                "1 if the last apply (start or reload) succeeded",
                value=1 if last.get("ok") else 0,
            )
            yield GaugeMetricFamily(
                "carom_last_reload_timestamp_seconds",
                "When the last apply ended (Unix time)",
                value=last.get("time", 0),
            )
            if "seconds" in last:
                yield GaugeMetricFamily(
                    "carom_last_reload_duration_seconds",
                    "How long the last successful apply took",
                    value=last["seconds"],
                )
        yield CounterMetricFamily(
            "carom_map_writes",
            "Map elements written by applies",
            value=st.get("map_writes_total", 0),
        )
        lag = st.get("loop_lag_ms") or {}
        yield GaugeMetricFamily(
            "carom_event_loop_lag_max_seconds",
            "Longest event-loop stall in the last minute",
            value=lag.get("max_last_minute", 0) / 1000,
        )
        nb = st.get("neighbours") or {}
        yield GaugeMetricFamily(
            "carom_neighbours_unresolved",
            "Real addresses without a resolved MAC (they get no new flows)",
            value=nb.get("unresolved", 0),
        )
