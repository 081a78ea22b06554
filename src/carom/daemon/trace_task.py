"""`carom trace` in the daemon: one trace at a time, on only while its client is
there.

A `trace` request becomes a control-socket Stream (daemon/control.py). Its pump
switches the data plane's tracing on (node_cfg.trace_one_in and the filter,
through the reconciler so a reload keeps them), drains the `trace_events` ring
ten times a second and sends each record in words (carom.ops.trace), with the
sampled and lost counts once a second. However the stream ends (the client
closes, dies or stops renewing its lease, a write it does not take, the daemon
stopping) the pump's `finally` switches tracing off again, so it never stays on
by accident. The ring's size (bpf/consts.h) bounds the work per drain: beyond
~630 records per 0.1 s the kernel drops and counts (`trace_dropped`)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from carom import abi
from carom.bpf.loader import Dataplane
from carom.bpf.ringbuf import RingBuffer
from carom.config.schema import Config
from carom.daemon import control
from carom.daemon.image import svc_ident
from carom.daemon.reconcile import Reconciler, TraceSetting
from carom.ops.trace import from_event

log = logging.getLogger("carom.trace")

LEASE_S = 5.0  # the client sends a line at least this often, or the trace ends
DRAIN_S = 0.1
STATS_S = 1.0
DEFAULT_ONE_IN = 1
MAX_ONE_IN = 1 << 30


class TraceHost(Protocol):
    """What a trace needs of the daemon (daemon/app.py)."""

    config: Config | None
    dp: Dataplane | None
    rec: Reconciler | None


@dataclass(frozen=True)
class Running:
    """The trace being served (`carom status` shows it)."""

    since: float  # time.time()
    setting: TraceSetting


def setting_of(req: dict[str, Any]) -> TraceSetting:
    """The request's sampling and prefilter; ValueError says what is wrong."""
    one_in = req.get("sample", DEFAULT_ONE_IN)
    if not 1 <= one_in <= MAX_ONE_IN:
        raise ValueError(
            f"trace: sample {one_in}: record one decision in N, N from 1 to {MAX_ONE_IN}"
        )
    port = req.get("port", 0)
    if not 0 <= port <= 65535:
        raise ValueError(f"trace: port {port} is not a port number (1-65535, or 0 for any)")
    host = None
    if "host" in req:
        try:
            host = ipaddress.ip_address(req["host"])
        except ValueError:
            raise ValueError(f"trace: host {req['host']!r} is not an IP address") from None
    return TraceSetting(one_in=one_in, host=host, port=port)


class TraceTask:
    def __init__(self, daemon: TraceHost) -> None:
        self.daemon = daemon
        self.running: Running | None = None
        self._names_of: object = None
        self._services: dict[int, str] = {}
        self._reals: dict[int, str] = {}

    def status(self) -> dict[str, Any] | None:
        r = self.running
        if r is None:
            return None
        s = r.setting
        return {
            "since": r.since,
            "sample": s.one_in,
            "host": str(s.host) if s.host else None,
            "port": s.port or None,
        }

    async def handle(self, req: dict[str, Any]) -> dict[str, Any] | control.Stream:
        setting = setting_of(req)
        if self.running is not None:
            since = time.strftime("%H:%M:%S", time.localtime(self.running.since))
            return {
                "ok": False,
                "error": f"a trace is already running (since {since}); one trace at a time: "
                "end the other `carom trace` first",
            }
        self.running = Running(time.time(), setting)  # claimed before any await
        first = {"ok": True, "trace": self.status(), "lease_s": LEASE_S}
        return control.Stream(first, lambda send: self._pump(send, setting), LEASE_S, self.stop)

    def _names(self) -> tuple[dict[int, str], dict[int, str]]:
        """Service and real names by id, rebuilt when an apply changed them (a
        reload commits in the worker thread: a table caught mid-change is read
        again at the next drain)."""
        rec, config = self.daemon.rec, self.daemon.config
        assert rec is not None and config is not None
        if self._names_of is not rec.last:
            try:
                services = {}
                for svc in config.services:
                    info = rec.current.services.get(svc_ident(svc))
                    if info is not None:
                        services[int(info.id)] = svc.display_name
                reals = {rid: str(addr) for addr, rid in list(rec.real_ids.items())}
            except RuntimeError:  # changed size during iteration
                return self._services, self._reals
            self._names_of, self._services, self._reals = rec.last, services, reals
        return self._services, self._reals

    def _count(self, counter: abi.Counter) -> int:
        assert self.daemon.dp is not None
        return int(self.daemon.dp["stats"].sum(int(counter)) or 0)

    async def _pump(self, send: control.Send, setting: TraceSetting) -> None:
        dp, rec = self.daemon.dp, self.daemon.rec
        assert dp is not None and rec is not None
        events: list[abi.TraceEvent] = []
        ring = RingBuffer(
            dp.map_fd("trace_events"),
            lambda raw: events.append(abi.TraceEvent.from_buffer_copy(raw)),
        )
        try:
            ring.consume()  # left from an earlier trace (the ring is pinned)
            events.clear()
            dp["trace_state"].update(0, 0)  # every CPU's countdown: sample from now
            base = (self._count(abi.Counter.TRACE_SAMPLED), self._count(abi.Counter.TRACE_DROPPED))
            offset = time.time_ns() - time.monotonic_ns()
            rec.set_trace(setting)
            log.info("trace started", extra=self.status())
            next_stats = time.monotonic() + STATS_S
            while True:
                await asyncio.sleep(DRAIN_S)
                ring.consume()
                batch = []
                if events:
                    services, reals = self._names()
                    batch = [from_event(e, offset, services, reals).to_json() for e in events]
                    events.clear()
                    for record in batch:
                        await send({"record": record})
                # after records (so a short trace ends with its counts) and every second
                if batch or time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + STATS_S
                    sampled = self._count(abi.Counter.TRACE_SAMPLED) - base[0]
                    dropped = self._count(abi.Counter.TRACE_DROPPED) - base[1]
                    await send({"stats": {"sampled": sampled, "dropped": dropped}})
        finally:
            self.stop()
            ring.close()

    def stop(self) -> None:
        """Tracing off (idempotent): the stream ended, or the daemon stops."""
        if self.running is None:
            return
        self.running = None
        rec = self.daemon.rec
        if rec is not None:
            try:
                rec.set_trace(None)
            except OSError as exc:
                log.error("cannot switch tracing off", extra={"error": str(exc)})
                return
        log.info("trace ended")
