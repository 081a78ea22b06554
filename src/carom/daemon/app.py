"""`carom run`: the daemon. One asyncio TaskGroup of named tasks: the control
socket, the neighbour follower and the signal watcher. The daemon owns the maps;
stopping it leaves the data plane forwarding (a restart adopts it), and only
`carom stop --detach` removes it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from carom import abi
from carom.bpf import loader
from carom.bpf.loader import Dataplane, Limits
from carom.bpf.maps import sum_percpu
from carom.config.load import ConfigError, load_config
from carom.config.schema import Config
from carom.daemon import control, explain
from carom.daemon.reconcile import Reconciler, addresses, svc_ident
from carom.net.neighbours import Neighbour, NeighbourTable

log = logging.getLogger("carom.daemon")

NEIGHBOUR_INTERVAL_S = 2.0
INITIAL_RESOLVE_S = 3.0


def pin_dir_of(config: Config) -> str:
    return os.path.join(str(config.bpffs), "carom", config.instance)


def socket_of(config: Config) -> str:
    return (
        str(config.control_socket)
        if config.control_socket
        else control.default_socket(config.instance)
    )


def limits_of(config: Config) -> Limits:
    lim = config.limits
    return Limits(
        max_services=lim.max_services,
        max_reals=lim.max_reals,
        maglev_size=lim.maglev_table_size,
        conn_table_size=lim.conn_table_size,
        persist_table_size=lim.persist_table_size,
    )


class ReloadError(Exception):
    """A reload was refused; the previous state keeps serving."""


@dataclass
class Stop:
    detach: bool = False


class Daemon:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.config: Config | None = None
        self.dp: Dataplane | None = None
        self.rec: Reconciler | None = None
        self.nt: NeighbourTable | None = None
        self.neighbours: dict[abi.IPAddress, Neighbour] = {}
        self.mac_history: dict[abi.IPAddress, list[str]] = {}
        self.started = time.time()
        self.last_reload: dict[str, Any] = {}
        self.stop_event = asyncio.Event()
        self.stop_request = Stop()
        self.lock = asyncio.Lock()
        # pyroute2's synchronous IPRoute runs an event loop of its own: it lives in
        # one dedicated thread and every netlink call goes there.
        self.netlink = concurrent.futures.ThreadPoolExecutor(1, "carom-netlink")
        self.loops_seen = 0

    async def _in_netlink(self, fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.netlink, fn)

    # --- start --------------------------------------------------------------------------
    async def start(self) -> None:
        config = load_config(self.config_path)
        for w in config.warnings():
            log.warning("config: %s", w)
        self.config = config
        loader.ensure_bpffs(str(config.bpffs))
        pin_dir = pin_dir_of(config)
        os.makedirs(os.path.dirname(pin_dir), exist_ok=True)
        self.dp = Dataplane.load(limits_of(config), pin_dir)
        self.rec = Reconciler(self.dp)
        if self.dp.adopted:
            self.rec.adopt()
        self.nt = await self._in_netlink(NeighbourTable)
        await self._resolve(config, wait=INITIAL_RESOLVE_S)
        writes = self.rec.apply(self.rec.desired(config, self.neighbours))
        for ifname in config.interfaces:
            att = self.dp.attach(ifname, config.xdp_mode)
            log.info("attached", extra={"interface": ifname, "mode": att.mode})
        self.last_reload = {"time": time.time(), "writes": writes, "ok": True}
        self.loops_seen = self.dp["stats"].sum(int(abi.Counter.DROP_LOOP)) or 0
        log.info(
            "carom running",
            extra={
                "instance": config.instance,
                "adopted": self.dp.adopted,
                "map_writes": writes,
                "services": len(config.services),
            },
        )

    async def _resolve(self, config: Config, wait: float = 0.0) -> None:
        """Refresh self.neighbours; with `wait`, give ARP/NDP that long to answer."""
        assert self.nt is not None
        nt = self.nt
        addrs = addresses(config)
        deadline = time.monotonic() + wait
        while True:
            found = await self._in_netlink(lambda: nt.lookup_many(addrs))
            for a, n in found.items():
                self._note_mac(a, n)
            self.neighbours = found
            pending = [
                n for n in found.values() if n.state in ("incomplete", "probing") and n.mac is None
            ]
            if not pending or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)

    def _note_mac(self, address: abi.IPAddress, n: Neighbour) -> None:
        if n.mac is None:
            return
        mac = abi.mac_str(n.mac)
        hist = self.mac_history.setdefault(address, [])
        if hist and hist[-1] != mac:
            log.warning(
                "real server MAC changed",
                extra={"real": str(address), "old_mac": hist[-1], "new_mac": mac},
            )
            if mac in hist:
                log.warning(
                    "real server address flaps between MACs: two hosts claim it, or "
                    "NIC teaming rewrites its source MAC",
                    extra={"real": str(address), "macs": ",".join(dict.fromkeys([*hist, mac]))},
                )
        if not hist or hist[-1] != mac:
            hist.append(mac)
            del hist[:-8]

    # --- tasks --------------------------------------------------------------------------
    async def run(self) -> Stop:
        await self.start()
        assert self.config is not None
        server = await control.serve(socket_of(self.config), self.handle)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._serve(server), name="control-socket"),
                    tg.create_task(self._follow_neighbours(), name="neighbours"),
                ]
                await self.stop_event.wait()
                for t in tasks:
                    t.cancel()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_of(self.config))
            await self._shutdown()
        return self.stop_request

    async def _serve(self, server: asyncio.Server) -> None:
        async with server:
            await server.serve_forever()

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

    async def _follow_neighbours(self) -> None:
        """Re-check real servers' MACs; apply when one changes or (un)resolves."""
        while True:
            await asyncio.sleep(NEIGHBOUR_INTERVAL_S)
            self._report_loops()
            async with self.lock:
                assert self.config is not None and self.rec is not None
                before = {a: (n.mac, n.state) for a, n in self.neighbours.items()}
                try:
                    await self._resolve(self.config)
                except Exception:
                    log.exception("neighbour refresh failed")
                    continue
                after = {a: (n.mac, n.state) for a, n in self.neighbours.items()}
                changed = [a for a in after if before.get(a, (None, ""))[0] != after[a][0]]
                if changed:
                    for a in changed:
                        n = self.neighbours[a]
                        log.info(
                            "real server neighbour changed",
                            extra={
                                "real": str(a),
                                "state": n.state,
                                "mac": abi.mac_str(n.mac) if n.mac else "none",
                            },
                        )
                    try:
                        writes = self.rec.apply(self.rec.desired(self.config, self.neighbours))
                        log.info("applied neighbour change", extra={"map_writes": writes})
                    except Exception:
                        log.exception("applying a neighbour change failed")

    async def _shutdown(self) -> None:
        assert self.config is not None and self.dp is not None
        if self.stop_request.detach:
            for ifname in self.config.interfaces:
                try:
                    loader.detach(ifname)
                except OSError as exc:
                    log.error("detach failed", extra={"interface": ifname, "error": str(exc)})
            loader.unpin(pin_dir_of(self.config))
            log.info("data plane removed: XDP detached, maps unpinned")
        else:
            log.info(
                "daemon stopped; the data plane keeps forwarding (a new daemon adopts "
                "it; `carom stop --detach` removes it)"
            )
        self.dp.close()
        if self.nt is not None:
            await self._in_netlink(self.nt.close)
        self.netlink.shutdown(wait=False)

    # --- reload -------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        async with self.lock:
            assert self.config is not None and self.rec is not None and self.dp is not None
            started = time.monotonic()
            try:
                new = load_config(self.config_path)
                self._check_immutable(self.config, new)
            except (ConfigError, ReloadError) as exc:
                log.error(
                    "reload refused; previous configuration keeps serving",
                    extra={"error": str(exc)},
                )
                self.last_reload = {"time": time.time(), "ok": False, "error": str(exc)}
                return {"ok": False, "error": str(exc)}
            await self._resolve(new, wait=1.0)
            try:
                writes = self.rec.apply(self.rec.desired(new, self.neighbours))
                for ifname in set(new.interfaces) - set(self.config.interfaces):
                    self.dp.attach(ifname, new.xdp_mode)
                for ifname in set(self.config.interfaces) - set(new.interfaces):
                    loader.detach(ifname)
            except Exception as exc:
                log.exception("reload failed; previous state restored")
                self.last_reload = {"time": time.time(), "ok": False, "error": str(exc)}
                return {"ok": False, "error": f"apply failed, previous state restored: {exc}"}
            self.config = new
            took = time.monotonic() - started
            log.info("reloaded", extra={"map_writes": writes, "seconds": round(took, 4)})
            self.last_reload = {"time": time.time(), "ok": True, "writes": writes, "seconds": took}
            return {"ok": True, "writes": writes, "seconds": took, "warnings": new.warnings()}

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
        if problems:
            raise ReloadError(
                f"{', '.join(problems)} cannot change on reload: restart the daemon "
                "(limits need `carom stop --detach` first, which interrupts traffic)"
            )

    # --- control requests ---------------------------------------------------------------
    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("command")
        if cmd == "status":
            return {"ok": True, "status": await asyncio.to_thread(self.status)}
        if cmd == "reload":
            return await self.reload()
        if cmd == "stop":
            self.stop_request = Stop(detach=bool(req.get("detach")))
            self.stop_event.set()
            return {"ok": True, "detach": self.stop_request.detach}
        if cmd == "explain":
            assert self.dp is not None
            fps = self._expected_fingerprints()
            e = explain.explain(self.dp, req["client"], req["service"], bool(req.get("syn")), fps)
            return {
                "ok": True,
                "explain": e.to_dict(),
                "text": explain.render(e, req["client"], req["service"]),
            }
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _expected_fingerprints(self) -> dict[int, str]:
        assert self.rec is not None
        last = self.rec.last
        if last is None:
            return {}
        return {int(last.image.services[i].id): fp for i, fp in last.fingerprints.items()}

    def status(self) -> dict[str, Any]:
        assert self.config is not None and self.dp is not None and self.rec is not None
        dp, cfg = self.dp, self.config
        last = self.rec.last
        svc_stats = {i: sum_percpu(v) for i, v in dp["svc_stats"].items()}
        real_stats = {i: sum_percpu(v) for i, v in dp["real_stats"].items()}
        totals = abi.with_rx(
            {abi.Counter(i): sum(v) for i, v in dp["stats"].items() if i < abi.COUNTER_MAX}
        )
        counters = {c.name.lower(): totals.get(c, 0) for c in abi.Counter}
        services = []
        for svc in cfg.services:
            ident = svc_ident(svc)
            info = self.rec.current.services.get(ident)
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
                    }
                )
            services.append(
                {
                    "name": svc.display_name,
                    "vip": str(svc.vip),
                    "protocol": svc.protocol,
                    "port": svc.port_number or "all",
                    "id": sid,
                    "persistence_timeout": svc.persistence_timeout,
                    "fingerprint": last.fingerprints.get(ident) if last else None,
                    "packets": st.packets if st else 0,
                    "bytes": st.bytes if st else 0,
                    "reals": reals,
                }
            )
        draining = []
        for address in last.draining if last else []:
            rid = self.rec.real_ids.get(ipaddress.ip_address(address))
            rs = real_stats.get(rid) if rid else None
            draining.append(
                {"address": address, "real_id": rid, "packets": rs.packets if rs else 0}
            )
        conns = dp["conn_table"].count() if dp.limits.conn_table_size <= 1 << 18 else None
        return {
            "instance": cfg.instance,
            "pid": os.getpid(),
            "config": self.config_path,
            "role": cfg.node.role,
            "uptime_s": round(time.time() - self.started, 1),
            "adopted": dp.adopted,
            "interfaces": [{"name": a.ifname, "mode": a.mode} for a in dp.attachments.values()],
            "maglev_size": dp.limits.maglev_size,
            "services": services,
            "draining": draining,
            "counters": counters,
            "connections": conns,
            "map_writes_total": self.rec.writes_total,
            "last_reload": self.last_reload,
        }


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
