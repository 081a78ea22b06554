"""What `carom status` shows, and the event loop's own health (its largest stall),
kept apart from the daemon's control flow."""

from __future__ import annotations

import asyncio
import collections
import gc
import ipaddress
import logging
import sys
import threading
import time
import traceback
from typing import Any

from carom import abi
from carom.bpf.loader import Dataplane
from carom.bpf.maps import sum_percpu
from carom.config.schema import Config
from carom.daemon.image import svc_ident
from carom.daemon.reconcile import Reconciler

LAG_INTERVAL_S = 0.01
LAG_WINDOW_S = 60.0
STALL_REPORT_S = 0.1  # a stall this long is logged with where the loop was stuck

log = logging.getLogger("carom.daemon")


class LoopLag:
    """A probe task that sleeps LAG_INTERVAL_S and measures how late it wakes:
    the longest time the event loop could not answer anything (a request, a
    neighbour event)."""

    def __init__(self) -> None:
        self.max_ms = 0.0
        self.recent: collections.deque[tuple[float, float]] = collections.deque()
        self.tick = time.monotonic()
        self.gc_max_ms = 0.0  # longest garbage collection (it holds the GIL throughout)
        self._gc_start = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_max_ms = max(self.gc_max_ms, (time.perf_counter() - self._gc_start) * 1000)

    def _watch(self, loop_thread: int, stop: threading.Event) -> None:
        """Watchdog thread: when the loop has not ticked for STALL_REPORT_S, log
        the loop thread's stack once, so a stall names its cause."""
        reported = 0.0
        while not stop.wait(STALL_REPORT_S / 2):
            tick = self.tick
            if time.monotonic() - tick > STALL_REPORT_S and reported != tick:
                reported = tick
                where = {
                    str(ident): "".join(traceback.format_stack(frame, limit=6))
                    for ident, frame in sys._current_frames().items()
                    if ident != threading.get_ident()
                }
                log.warning("event loop stalled", extra={"threads": where})

    async def probe(self) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        threading.Thread(
            target=self._watch, args=(threading.get_ident(), stop), daemon=True
        ).start()
        try:
            await self._probe(loop)
        finally:
            stop.set()

    async def _probe(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            t0 = loop.time()
            self.tick = time.monotonic()
            await asyncio.sleep(LAG_INTERVAL_S)
            now = loop.time()
            lag = max(0.0, (now - t0 - LAG_INTERVAL_S) * 1000)
            self.max_ms = max(self.max_ms, lag)
            if lag >= 1.0:
                self.recent.append((now, lag))
            while self.recent and self.recent[0][0] < now - LAG_WINDOW_S:
                self.recent.popleft()

    def summary(self) -> dict[str, float]:
        # status is built in a worker thread while the loop appends: copy first
        # (one C call under the GIL) rather than iterate a deque being mutated
        last = max((lag for _, lag in self.recent.copy()), default=0.0)
        return {
            "max": round(self.max_ms, 2),
            "max_last_minute": round(last, 2),
            "gc_max": round(self.gc_max_ms, 2),
        }


def expected_fingerprints(rec: Reconciler) -> dict[int, str]:
    last = rec.last
    if last is None:
        return {}
    return {int(last.image.services[i].id): fp for i, fp in last.fingerprints.items()}


def build_status(cfg: Config, dp: Dataplane, rec: Reconciler) -> dict[str, Any]:
    """Services, reals, draining reals and counters. Runs in a worker thread."""
    last = rec.last
    current = rec.current
    svc_stats = {i: sum_percpu(v) for i, v in dp["svc_stats"].items()}
    real_stats = {i: sum_percpu(v) for i, v in dp["real_stats"].items()}
    totals = abi.with_rx(
        {abi.Counter(i): sum(v) for i, v in dp["stats"].items() if i < abi.COUNTER_MAX}
    )
    counters = {c.name.lower(): totals.get(c, 0) for c in abi.Counter}
    services = []
    for svc in cfg.services:
        ident = svc_ident(svc)
        info = current.services.get(ident)
        sid = int(info.id) if info is not None else -1
        st = svc_stats.get(sid)
        reals = []
        for rv in last.service_views.get(ident, []) if last else []:
            rs = real_stats.get(rv.real_id)
            reals.append(
                {
                    **rv.__dict__,
                    "packets": rs.packets if rs else 0,
                    "bytes": rs.bytes if rs else 0,
                    "new_flows": rs.new_flows if rs else 0,
                    "conn_hits": rs.conn_hits if rs else 0,
                }
            )
        services.append(
            {
                "name": svc.display_name,
                "vip": str(svc.vip),
                "protocol": svc.protocol,
                "port": svc.port_number or "all",
                "ports": svc.ports_text,  # "80", "all", or "25,143,5222-5223"
                "id": sid,
                "persistence_timeout": svc.persistence_timeout,
                "fingerprint": last.fingerprints.get(ident) if last else None,
                "packets": st.packets if st else 0,
                "bytes": st.bytes if st else 0,
                "new_flows": st.new_flows if st else 0,  # Maglev or persistence chose a real
                "conn_hits": st.conn_hits if st else 0,  # a conn_table entry was followed
                "reals": reals,
            }
        )
    draining = []
    real_ids = last.real_ids if last else rec.real_ids
    for address in last.draining if last else []:
        rid = real_ids.get(ipaddress.ip_address(address))
        rs = real_stats.get(rid) if rid else None
        draining.append({"address": address, "real_id": rid, "packets": rs.packets if rs else 0})
    conns = dp["conn_table"].count() if dp.limits.conn_table_size <= 1 << 18 else None
    return {
        "adopted": dp.adopted,
        "interfaces": [{"name": a.ifname, "mode": a.mode} for a in dp.attachments.values()],
        "maglev_size": dp.limits.maglev_table_size,
        "services": services,
        "draining": draining,
        "counters": counters,
        "connections": conns,
        "map_writes_total": rec.writes_total,
        "maglev_tables": {
            "distinct": len(rec.tables),
            "built_last_apply": last.built if last else 0,
        },
        "time": time.time(),
    }
