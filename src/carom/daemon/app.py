"""`carom run`: the daemon. One asyncio TaskGroup of named tasks (see run()).
The daemon owns the maps; stopping it leaves the data plane forwarding (a
restart adopts it), and only `carom stop --detach` removes it.

Heavy work (building the desired image, writing maps, attaching) runs in one
worker thread, so the event loop keeps answering `carom status` during a big
reload; the lock serialises changes, never reads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from carom import abi
from carom.bpf import loader
from carom.bpf.loader import Dataplane
from carom.cluster.service import ClusterService, maglev_digest
from carom.config.incremental import ConfigCache
from carom.config.load import ConfigError, load_config, located, parse_config
from carom.config.schema import Config
from carom.daemon import control, explain, health_task, overrides, ownership
from carom.daemon.changed import ConfigWarnings, RealAddresses, vips_of
from carom.daemon.follow import NeighbourFollower
from carom.daemon.image import (
    ApplyError,
    Desired,
    Inputs,
    ReconcileError,
    Transaction,
    inputs_of,
    with_cluster,
)
from carom.daemon.interfaces import InterfaceError, apply_interfaces, check_xdp_mode
from carom.daemon.looplag import SWITCH_INTERVAL_S, LoopLag, quiet_gc
from carom.daemon.reconcile import Reconciler
from carom.daemon.status import build_status, expected_fingerprints
from carom.daemon.trace_task import TraceTask
from carom.net import egress, realserver
from carom.ops.hub import Ops

log = logging.getLogger("carom.daemon")
T = TypeVar("T")

COUNTER_INTERVAL_S = 2.0
# Test hook: a file naming an apply step ("maglev", "attach", ...); while it
# exists, every apply fails right after that step (see tests/integration).
FAULT_ENV = "CAROM_TEST_FAULTS"


def pin_dir_of(config: Config) -> str:
    return os.path.join(str(config.bpffs), "carom", config.instance)


def socket_of(config: Config) -> str:
    return (
        str(config.control_socket)
        if config.control_socket
        else control.default_socket(config.instance)
    )


def vip_state_of(config: Config) -> str:
    """Where the daemon records what it put on lo (undone by `stop --detach`)."""
    return os.path.join(os.path.dirname(socket_of(config)), f"{config.instance}.vips.json")


class ReloadError(Exception):
    """A reload was refused; the previous state keeps serving."""


class InjectedFault(RuntimeError):
    """A failure injected by the test hook."""


def fault_hook(path: str) -> Callable[[str], None]:
    def check(step: str) -> None:
        try:
            with open(path) as f:
                wanted = f.read().strip()
        except FileNotFoundError:
            return
        if wanted == step:
            raise InjectedFault(f"injected failure after step {step}")

    return check


def _parse(path: str, text: str | None) -> Config | list[str]:
    """load_config (or parse_config of the text read already) in the parser
    process (ConfigError does not pickle)."""
    try:
        return load_config(path) if text is None else parse_config(text, path)
    except ConfigError as exc:
        return exc.errors


@dataclass
class Stop:
    detach: bool = False


class Daemon:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.config: Config | None = None
        self.dp: Dataplane | None = None
        self.rec: Reconciler | None = None
        self.started = time.time()
        self.last_reload: dict[str, Any] = {}
        self.stop_event = asyncio.Event()
        self.stop_request = Stop()
        self.lock = asyncio.Lock()  # one change (reload, neighbour apply) at a time
        # desired(), map writes and attaching: one thread, in order
        self.worker = concurrent.futures.ThreadPoolExecutor(1, "carom-apply")
        # Validating a big config holds the GIL for up to a second (pydantic-core):
        # in another process, the event loop keeps answering meanwhile.
        self.parser = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")
        )
        # validated services by the text of their item: a reload parses only
        # what changed (config/incremental.py)
        self.configs = ConfigCache()
        self.follower = NeighbourFollower(self)
        # the addresses to resolve and config.warnings(), by the services that changed
        self.addresses = RealAddresses()
        self.config_warnings = ConfigWarnings()
        self.lag = LoopLag()
        self.hups: asyncio.Queue[None] = asyncio.Queue()
        self.loops_seen = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        fault = os.environ.get(FAULT_ENV)
        self.fault = fault_hook(fault) if fault else None
        self.owner: ownership.VipOwner | None = None
        self.ops = Ops(self)  # /metrics and the HTTP API; ops.metrics.register() adds metrics
        self.cluster: ClusterService | None = None
        self.health: health_task.HealthTask | None = None
        self.apply_phases: dict[str, float] = {}  # seconds of the last apply's parts
        self.tracer = TraceTask(self)  # `carom trace`

    async def load(self) -> Config:
        """The new config: the incremental path in a thread when only a few
        services changed (tens of ms at 4096 services), else the full loader
        in the parser process; every error comes from the full loader."""
        text, fast = await asyncio.to_thread(self._load_fast)
        if fast is not None:
            return fast
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.parser, _parse, self.config_path, text)
        if isinstance(result, list):
            raise ConfigError(result)
        if text is not None:
            await asyncio.to_thread(self.configs.remember, text, result)
        return result

    def _load_fast(self) -> tuple[str | None, Config | None]:
        try:
            text = Path(self.config_path).read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return None, None  # the full loader words the error
        return text, self.configs.fast(text)

    async def in_worker(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn)

    # --- start --------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        config = self.configs.load(self.config_path)  # nothing else runs yet
        took = {"config": time.monotonic() - t0}
        # before anything is loaded: a path that cannot be ours stops the start
        control.check_socket_path(socket_of(config))
        routes = await asyncio.to_thread(egress.route_interfaces, egress.remote_reals(config))
        self._check_egress(config, routes)  # before anything is loaded or attached
        for w in config.warnings() + egress.egress_warnings(config, routes):
            log.warning("config: %s", w)
        self.config = config
        loader.ensure_bpffs(str(config.bpffs))
        pin_dir = pin_dir_of(config)
        os.makedirs(os.path.dirname(pin_dir), exist_ok=True)
        t0 = time.monotonic()
        self.dp = Dataplane.load(config.limits, pin_dir)
        self.rec = rec = Reconciler(self.dp)
        took["load"] = time.monotonic() - t0
        rec.fault = self.fault
        self.cluster = ClusterService.attach(self, config.cluster)
        if self.dp.adopted:
            await self.in_worker(rec.adopt)
        t0 = time.monotonic()
        await self.follower.open()
        await self.follower.resolve(self.addresses.of(config), wait=self.follower.initial_wait)
        took["neighbours"] = time.monotonic() - t0
        saved = health_task.overrides_path(socket_of(config), config.instance)
        self.health = health_task.HealthTask(self, overrides.OverrideStore(saved))
        await self.health.plan(config)
        started = time.monotonic()
        if self.cluster is None:
            await self._vips_on_lo(config, [])
        else:
            # Not before the cluster has decided this node's role: a node that
            # restarts while no director forwards (both restarted) must not
            # answer for flows it does not serve, which the router still sends
            # to it: with no VIP on lo they are dropped and retransmitted until
            # the new active forwards them (docs/cluster.md, "Both restarted").
            self.cluster.when_decided = self._cluster_vips_on_lo
        if config.node.role == "active" and config.cluster is None:
            # The program attached by apply() schedules only under a running lease
            # (bpf/lease.h); a lone active director holds one from the start, so
            # an upgrade from a version whose stop left none does not pass its
            # established flows to the local stack until the ownership task runs.
            self._write_lease(ownership.lease_deadline_ns())
        writes, want = await self.apply(config, None)
        took["apply"] = time.monotonic() - started
        self.dp.finish_migration()  # older pinned layouts: swap the pins now
        links = await asyncio.to_thread(ownership.links_of, config.interfaces)
        self.owner = ownership.VipOwner(
            links,
            self._current_vips,
            self._write_lease,
            active=config.node.role == "active" and self.cluster is None,
        )
        if self.cluster is not None:
            self.cluster.config_changed()
        self.last_reload = {
            "time": time.time(),
            "writes": writes,
            "ok": True,
            "seconds": time.monotonic() - started,
            "tables_built": want.built,
            "start_phases": {k: round(v, 3) for k, v in took.items()},
        }
        self.loops_seen = self.dp["stats"].sum(int(abi.Counter.DROP_LOOP)) or 0
        log.info(
            "carom running",
            extra={
                "instance": config.instance,
                "adopted": self.dp.adopted,
                "map_writes": writes,
                "services": len(config.services),
                "tables_built": want.built,
                **{f"{k}_s": round(v, 3) for k, v in took.items()},
            },
        )

    async def reapply(self) -> None:
        """Apply the current config again (the cluster's inputs changed)."""
        async with self.lock:
            assert self.config is not None
            await self.apply(self.config, self.config)

    def _current_vips(self) -> list[abi.IPAddress]:
        return vips_of(self.config) if self.config is not None else []

    def _write_lease(self, deadline_ns: int) -> None:
        """The data plane answers ARP/NDP for the VIPs only until this deadline."""
        assert self.dp is not None
        self.dp["lease"].update(0, deadline_ns)

    async def _cluster_vips_on_lo(self) -> None:
        if self.config is not None:
            await self._vips_on_lo(self.config, [])

    async def _vips_on_lo(self, config: Config, old: list[abi.IPAddress]) -> None:
        """This node is a real server too: its VIPs live on lo (field note 3)."""
        if not config.node.vips_on_lo:
            return
        state = Path(vip_state_of(config))
        vips = vips_of(config)
        kept = set(vips)
        gone = [v for v in old if v not in kept]
        try:
            if vips:
                res = await asyncio.to_thread(realserver.up, vips, state)
                for step in res.steps:
                    if step.action not in ("present", "unchanged"):
                        log.info("real-server setup", extra={"step": step.message})
                for f in res.findings:
                    log.warning("real-server setup", extra={"finding": f.message, "fix": f.fix})
            if gone:
                await asyncio.to_thread(realserver.down, gone, state)
        except (OSError, realserver.RealServerError) as exc:
            log.error("cannot put the VIPs on lo", extra={"error": str(exc)})

    async def apply(self, config: Config, old: Config | None) -> tuple[int, Desired]:
        """Make the maps and interfaces match `config`, all or nothing: desired
        image, map writes, then attach/detach, in the worker thread. A failure
        rolls every step back and raises ApplyError saying what happened;
        ReconcileError means the config cannot be applied and nothing was written."""
        with quiet_gc():  # a desired image of 32k reals: no collection over it
            return await self._apply(config, old)

    async def _apply(self, config: Config, old: Config | None) -> tuple[int, Desired]:
        rec, dp = self.rec, self.dp
        assert rec is not None and dp is not None
        neighbours = dict(self.follower.table)
        down_hosts = frozenset(self.cluster.down_hosts) if self.cluster else frozenset()
        fault = self.fault
        t0 = time.monotonic()
        health_in = await self.health.inputs(config) if self.health else Inputs()
        cluster = self.cluster
        if cluster is not None:  # a backup's tables follow the active's health view
            health_in = cluster.health_inputs(config, health_in)
        timing = self.apply_phases = {"health": time.monotonic() - t0}

        def work() -> tuple[int, Desired, Inputs, bytes | None]:
            t1 = time.monotonic()
            inputs = with_cluster(health_in, inputs_of(config, neighbours, down_hosts))
            want = rec.desired(config, neighbours, inputs)
            t2 = time.monotonic()
            timing["desired"] = t2 - t1
            tx: Transaction = rec.write(want)
            timing["write"] = time.monotonic() - t2
            try:
                apply_interfaces(dp, config, old, tx, fault)
            except Exception as exc:
                writes = tx.writes
                errors = tx.rollback()
                what = (
                    "every map write and interface change was undone: the previous state serves"
                    if not errors
                    else f"{len(errors)} undo steps failed ({errors[0]})"
                )
                step = exc.step if isinstance(exc, InterfaceError) else "interfaces"
                raise ApplyError(
                    f"{exc} (after {writes} map writes); {what}", step, writes, not errors
                ) from exc
            rec.commit(want, tx)
            return tx.writes, want, inputs, maglev_digest(rec) if cluster is not None else None

        try:
            writes, desired, inputs, digest = await self.in_worker(work)
        except ApplyError as exc:
            if not exc.clean:
                # The maps are not what either image says: read them back so the
                # daemon's state, the maps and the reply agree.
                await self.in_worker(rec.adopt)
                log.error("rollback incomplete; re-read the maps", extra={"error": str(exc)})
            raise
        if cluster is not None:  # the fingerprint, and the view the active publishes
            cluster.tables_applied(config, inputs, digest)
        return writes, desired

    # --- tasks --------------------------------------------------------------------------
    async def run(self) -> Stop:
        sys.setswitchinterval(SWITCH_INTERVAL_S)  # the loop's GIL waits (looplag.py)
        with quiet_gc():
            await self.start()
        assert self.config is not None and self.owner is not None and self.health is not None
        server = await control.serve(socket_of(self.config), self.handle)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.hups.put_nowait, None)
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._serve(server), name="control-socket"),
                    tg.create_task(self._sighup_reloads(), name="sighup"),
                    tg.create_task(self.follower.follow_events(), name="neighbour-events"),
                    tg.create_task(self.follower.resolve_missing(), name="neighbour-resolve"),
                    tg.create_task(self.follower.apply_changes(), name="neighbour-apply"),
                    tg.create_task(self._watch_counters(), name="counters"),
                    tg.create_task(self.lag.probe(), name="loop-lag"),
                    tg.create_task(self.owner.run(), name="vip-ownership"),
                    tg.create_task(self.ops.serve(), name="ops-http"),
                    tg.create_task(self.health.run(), name="health"),
                ]
                if self.cluster is not None:
                    tasks.append(tg.create_task(self.cluster.run(), name="cluster"))
                await self.stop_event.wait()
                if self.cluster is not None:
                    await self.cluster.leave()
                for t in tasks:
                    t.cancel()
        finally:
            control.remove_socket(socket_of(self.config))
            await self._shutdown()
        return self.stop_request

    async def _serve(self, server: asyncio.Server) -> None:
        async with server:
            await server.serve_forever()

    async def _sighup_reloads(self) -> None:
        """SIGHUP reloads like `carom reload`; the log is the only reply."""
        while True:
            await self.hups.get()
            reply = await self.reload(origin="SIGHUP")
            if reply["ok"]:
                for w in reply.get("warnings", []):
                    log.warning("config: %s", w, extra={"origin": "SIGHUP"})

    def _report_loops(self) -> None:
        """Field note 2: VIP frames coming back to the director are a loop. The
        data plane drops them (a known flow's packet back with a lower TTL, or a
        new flow from a real's MAC); the operator must hear about it."""
        assert self.dp is not None
        total = self.dp["stats"].sum(int(abi.Counter.DROP_LOOP)) or 0
        if total > self.loops_seen:
            log.warning(
                "VIP frames came back from a real server (straight from its MAC, or "
                "through a router with a lower TTL) and were dropped: a real server is "
                "sending VIP traffic back (is its VIP missing from lo, or its default "
                "route pointing at the director?); rarely, a client's path grew longer",
                extra={"new_drops": total - self.loops_seen, "drop_loop_total": total},
            )
        self.loops_seen = total

    async def _watch_counters(self) -> None:
        """A failed counter read is logged and retried: it must not end the daemon."""
        while True:
            await asyncio.sleep(COUNTER_INTERVAL_S)
            try:
                self._report_loops()
            except Exception as exc:
                log.error(
                    "reading the data plane's counters failed; retrying",
                    extra={"error": str(exc), "retry_s": COUNTER_INTERVAL_S},
                )

    async def _shutdown(self) -> None:
        assert self.config is not None and self.dp is not None
        self.tracer.stop()  # tracing never outlives its daemon
        if self.health is not None:  # first: probes stop, the probe namespace goes
            await self.health.close()
        if self.stop_request.detach:
            for ifname in self.config.interfaces:
                try:
                    loader.detach(ifname)
                except OSError as exc:
                    log.error("detach failed", extra={"interface": ifname, "error": str(exc)})
            loader.unpin(pin_dir_of(self.config))
            log.info("data plane removed: XDP detached, maps unpinned")
            if self.config.node.vips_on_lo:
                try:
                    # pyroute2 runs its own event loop: not on this one's thread
                    await asyncio.to_thread(realserver.down, None, Path(vip_state_of(self.config)))
                except (OSError, realserver.RealServerError) as exc:
                    log.warning("VIPs left on lo", extra={"error": str(exc)})
        elif self.owner is not None and self.owner.active and self.config.cluster is None:
            # A lone director: keep scheduling long enough for a new daemon to
            # adopt the data plane (the lease gates scheduling, bpf/lease.h).
            grace = ownership.RESTART_GRACE_S
            try:
                self._write_lease(time.monotonic_ns() + int(grace * 1e9))
            except OSError as exc:
                log.error("cannot extend the lease for a restart", extra={"error": str(exc)})
            log.info(
                "daemon stopped; the data plane keeps forwarding for %.0f s (its lease), "
                "enough for a new daemon to adopt it; `carom stop --detach` removes it",
                grace,
            )
        else:
            log.info(
                "daemon stopped; this node stops scheduling within %.0f s as its lease "
                "runs out; a new daemon adopts the data plane",
                ownership.LEASE_S,
            )
        self.dp.close()
        await self.follower.close()
        self.worker.shutdown(wait=False)
        self.parser.shutdown(wait=False, cancel_futures=True)

    # --- reload -------------------------------------------------------------------------
    async def reload(self, origin: str = "control socket") -> dict[str, Any]:
        """Re-read the config and apply the difference. The reply (and the log)
        says exactly what happened: refused (nothing changed), failed and rolled
        back, or applied."""
        async with self.lock:
            assert self.config is not None and self.rec is not None and self.dp is not None
            started = time.monotonic()
            # no collection while ~10^5 new objects arrive, then they are frozen
            with quiet_gc():
                reply = await self._reload(started, origin)
            self.ops.reload_done(reply)
            return reply

    async def _reload(self, started: float, origin: str) -> dict[str, Any]:
        assert self.config is not None and self.rec is not None and self.dp is not None
        try:
            new = await self.load()
            self._check_immutable(self.config, new)
            check_xdp_mode(self.dp, self.config, new)
        except (ConfigError, ReloadError, InterfaceError) as exc:
            return self._refused(str(exc), origin)
        parsed = time.monotonic()
        # 32k reals take a while to walk: not on the event loop
        addrs = await asyncio.to_thread(self.addresses.of, new)
        await self.follower.resolve(addrs, wait=1.0)
        table = self.follower.table
        routes = {a: table[a].ifname for a in addrs if a in table}
        try:
            # the error path re-reads the file for its lines: not on the event loop
            await asyncio.to_thread(self._check_egress, new, routes)
        except ConfigError as exc:
            return self._refused(str(exc), origin)
        resolved = time.monotonic()
        try:
            writes, want = await self.apply(new, self.config)
        except ReconcileError as exc:
            return self._refused(str(exc), origin)
        except ApplyError as exc:
            log.error(
                "reload failed; " + ("rolled back" if exc.clean else "rollback incomplete"),
                extra={"origin": origin, "error": str(exc), "step": exc.step},
            )
            self.last_reload = {
                "time": time.time(),
                "ok": False,
                "error": str(exc),
                "rolled_back": exc.clean,
            }
            return {"ok": False, "error": f"reload failed: {exc}", "rolled_back": exc.clean}
        applied = time.monotonic()

        def checks() -> list[str]:
            """Per service (kept per object) and per real: not on the loop."""
            vips_of(new)  # kept for the calls on the loop below (4096 hashes)
            return self.config_warnings.of(new) + egress.egress_warnings(new, routes)

        warnings = await asyncio.to_thread(checks)
        old_vips = vips_of(self.config)
        self.config = new
        self.follower.forget_unused(addrs)
        if self.health is not None:
            await self.health.plan(new)
        vips_changed = old_vips != vips_of(new)
        if vips_changed and (self.cluster is None or self.cluster.decided):
            await self._vips_on_lo(new, old_vips)
        if self.cluster is not None:
            self.cluster.config_changed()
        elif self.owner is not None:
            self.owner.set_active(new.node.role == "active")
        if self.owner is not None and vips_changed:
            self.owner.refresh_vips()
        done = time.monotonic()
        took = done - started
        phases = {
            "parse": round(parsed - started, 4),
            "neighbours": round(resolved - parsed, 4),
            "apply": round(done - resolved, 4),
            **{f"apply_{k}": round(v, 4) for k, v in self.apply_phases.items()},
            "apply_after": round(done - applied, 4),  # health plan, VIPs, cluster
        }
        log.info(
            "reloaded",
            extra={
                "origin": origin,
                "map_writes": writes,
                "seconds": round(took, 4),
                "tables_built": want.built,
            },
        )
        self.last_reload = {
            "time": time.time(),
            "ok": True,
            "writes": writes,
            "seconds": took,
            "phases": phases,
            "tables_built": want.built,
        }
        return {
            "ok": True,
            "writes": writes,
            "seconds": took,
            "phases": phases,
            "tables_built": want.built,
            "services_parsed": self.configs.last_changed,
            "warnings": warnings,
        }

    def _refused(self, error: str, origin: str) -> dict[str, Any]:
        log.error(
            "reload refused; previous configuration keeps serving",
            extra={"origin": origin, "error": error},
        )
        self.last_reload = {"time": time.time(), "ok": False, "error": error}
        return {"ok": False, "error": error}

    def _check_egress(self, config: Config, routes: egress.Routes) -> None:
        """Refuse reals that XDP_TX cannot reach (net/egress.py), as a config error."""
        problems = egress.egress_problems(config, routes)
        if problems:
            raise located(self.config_path, problems)

    def _check_immutable(self, old: Config, new: Config) -> None:
        problems = []
        if new.instance != old.instance:
            problems.append("instance")
        if str(new.bpffs) != str(old.bpffs):
            problems.append("bpffs")
        if new.limits != old.limits:
            problems.append("limits (map sizes)")
        if socket_of(new) != socket_of(old):
            problems.append("control_socket")
        if new.cluster != old.cluster:
            problems.append("cluster")
        if problems:
            raise ReloadError(
                f"{', '.join(problems)} cannot change on reload: restart the daemon "
                "(limits need `carom stop --detach` first, which interrupts traffic)"
            )

    # --- control requests ---------------------------------------------------------------
    async def handle(self, req: dict[str, Any]) -> dict[str, Any] | bytes | control.Stream:
        cmd = req.get("command")
        if cmd == "status":
            return await asyncio.to_thread(self._status_reply)
        if cmd == "reload":
            return await self.reload()
        if cmd == "stop":
            self.stop_request = Stop(detach=bool(req.get("detach")))
            self.stop_event.set()
            return {"ok": True, "detach": self.stop_request.detach}
        if cmd == "trace":
            return await self.tracer.handle(req)
        if cmd in health_task.COMMANDS and self.health is not None:
            reply = await self.health.handle(req)
            if self.cluster is not None and self.cluster.view_following and reply.get("ok"):
                reply["note"] = (
                    f"this node's tables follow {self.cluster.view_from}'s health view: the "
                    "override is kept here and shapes them once this node is active; run it "
                    "on the active director to change the tables now"
                )
            return reply
        if cmd == "explain":
            assert self.dp is not None and self.rec is not None
            fps = expected_fingerprints(self.rec)
            e = explain.explain(self.dp, req["client"], req["service"], bool(req.get("syn")), fps)
            return {
                "ok": True,
                "explain": e.to_dict(),
                "text": explain.render(e, req["client"], req["service"]),
            }
        if cmd == "switchover":
            if self.cluster is None:
                return {"ok": False, "error": "no cluster section: this director is alone"}
            return self.cluster.switchover()
        if cmd == "vrrp":
            if self.cluster is None:
                return {"ok": False, "error": "no cluster section: this director is alone"}
            return self.cluster.vrrp(req["state"])
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _status_reply(self) -> bytes:
        """The status reply, encoded here with json's C encoder one service at a
        time: the whole reply in one call holds the GIL for 60 ms at 4096
        services, and the pure-Python encoder costs ~8x the CPU, which a reload
        running beside it pays for. Each service is a short hold. No cyclic
        collection until the status is freed: a collection over it would hold
        the GIL for tens of ms (see status())."""
        with quiet_gc(freeze=False):
            return self._encode_status()

    def _encode_status(self) -> bytes:
        encoder = json.JSONEncoder(default=str)
        st = self.status(freeze=False)
        services = st.pop("services", [])
        buf = io.StringIO()  # no single join of 10^4 pieces
        buf.write('{"ok": true, "status": ')
        buf.write(encoder.encode(st)[:-1])
        buf.write(', "services": [' if st else '"services": [')
        for n, svc in enumerate(services):
            if n:
                buf.write(", ")
            buf.write(encoder.encode(svc))
        buf.write("]}}")
        return buf.getvalue().encode()

    def status(self, freeze: bool = True) -> dict[str, Any]:
        """The status. Called in a worker thread (control socket, metrics): the map
        reads happen here, the parts the event loop owns and mutates (health,
        neighbours, ownership, cluster, loop lag) are read on the loop. It is
        ~10^5 dicts and lists at 4096 services, built without cyclic collection
        and frozen afterwards (it holds no cycles; the metrics snapshot keeps it
        a while), unless the caller frees it at once (`freeze` False)."""
        assert self.config is not None and self.dp is not None and self.rec is not None
        config = self.config
        with quiet_gc(freeze=freeze):
            st = build_status(config, self.dp, self.rec)
            if self.health is not None:
                self.health.annotate(config, st)  # per real: here, not on the loop
        return self._on_loop(lambda: self._live_status(config, st))

    def _live_status(self, config: Config, st: dict[str, Any]) -> dict[str, Any]:
        if self.health is not None:
            st |= self.health.summary(config)
        return {
            "instance": config.instance,
            "pid": os.getpid(),
            "config": self.config_path,
            "role": self.cluster.node.machine.state.value if self.cluster else config.node.role,
            "uptime_s": round(time.time() - self.started, 1),
            **st,
            "last_reload": self.last_reload,
            "loop_lag_ms": self.lag.summary(),
            "neighbours": self.follower.summary(),
            "ownership": self.owner.status() if self.owner else None,
            "cluster": self.cluster.status() if self.cluster else None,
            "trace": self.tracer.status(),
        }

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """fn() on the event loop's thread (now, if this is it), waiting for it."""
        loop = self.loop
        if loop is None or not loop.is_running():
            return fn()
        try:
            if asyncio.get_running_loop() is loop:
                return fn()
        except RuntimeError:
            pass  # a worker thread: no loop of its own
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return done.result(timeout=10)


def run(config_path: str) -> int:
    daemon = Daemon(config_path)
    try:
        stop = asyncio.run(daemon.run())
    except ConfigError as exc:
        # For a person at a terminal: the file:line messages as they are.
        print(f"carom: invalid configuration, nothing was changed:\n{exc}", file=sys.stderr)
        return 2
    log.info("exit", extra={"detached": stop.detach})
    return 0
