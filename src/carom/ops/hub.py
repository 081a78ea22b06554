"""The daemon's operations hub: the HTTP listeners for /metrics and the API,
the status snapshot they share, and the figures only the daemon knows
(reload results). The daemon holds one `Ops` and calls three hooks: `serve()`
as a task, `reload_done(reply)` after each reload, `metrics.register(...)` for
anything that wants to add metrics.

Reading the per-CPU maps for a snapshot takes a worker thread (never the event
loop) and is done at most once a second, however many scrapes, API reads and
`carom top` windows ask: concurrent readers wait for the same read."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Protocol

from carom.config.ops import Endpoint, parse_endpoint
from carom.config.schema import Config
from carom.daemon import control
from carom.ops import http
from carom.ops.api import Api
from carom.ops.metrics import CONTENT_TYPE, MetricsRegistry

log = logging.getLogger("carom.ops")

SNAPSHOT_MAX_AGE_S = 1.0
CONFIG_POLL_S = 1.0  # how soon a reload's new listen address takes effect
LISTEN_RETRY_S = 10.0  # a port that was busy is tried again this often


class DaemonView(Protocol):
    """What the hub needs from the daemon (kept small: no import of daemon.app)."""

    config: Config | None
    started: float

    def status(self) -> dict[str, Any]: ...

    async def handle(self, req: dict[str, Any]) -> dict[str, Any] | bytes | control.Stream: ...


class Ops:
    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.metrics = MetricsRegistry()
        self.reloads: collections.Counter[str] = collections.Counter()
        self._snap: dict[str, Any] | None = None
        self._snap_at = 0.0
        self._reading: asyncio.Future[dict[str, Any]] | None = None
        self._page: tuple[float, bytes] | None = None
        self._servers: dict[Endpoint, asyncio.Server] = {}
        self._wanted: dict[Endpoint, tuple[bool, bool]] = {}
        self._failed: dict[Endpoint, float] = {}  # could not listen: when it last tried

    # --- hooks the daemon calls ---------------------------------------------------------
    def reload_done(self, reply: dict[str, Any]) -> None:
        """Count a reload by result: ok, refused (nothing changed) or failed (rolled back)."""
        if reply.get("ok"):
            self.reloads["ok"] += 1
        elif "rolled_back" in reply:
            self.reloads["failed"] += 1
        else:
            self.reloads["refused"] += 1

    async def serve(self) -> None:
        """Keep the listeners what the config says (a reload may move them)."""
        try:
            while True:
                await self._sync_listeners()
                await asyncio.sleep(CONFIG_POLL_S)
        finally:
            for server in self._servers.values():
                server.close()
            self._servers.clear()

    # --- the shared snapshot ------------------------------------------------------------
    async def snapshot(self) -> dict[str, Any]:
        """The status snapshot, at most SNAPSHOT_MAX_AGE_S old."""
        if self._snap is not None and time.monotonic() - self._snap_at < SNAPSHOT_MAX_AGE_S:
            return self._snap
        if self._reading is None:
            self._reading = asyncio.ensure_future(asyncio.to_thread(self._read))
        reading = self._reading
        try:
            return await asyncio.shield(reading)
        finally:
            if reading.done() and self._reading is reading:
                self._reading = None

    def _read(self) -> dict[str, Any]:
        st = self.daemon.status()
        if self.daemon.config is not None:
            st["conn_table_size"] = self.daemon.config.limits.conn_table_size
        self._snap, self._snap_at = st, time.monotonic()
        return st

    def figures(self) -> dict[str, Any]:
        return {"reloads": dict(self.reloads), "started": self.daemon.started}

    async def metrics_page(self) -> bytes:
        """The exposition text, rendered off the event loop, cached like the snapshot."""
        now = time.monotonic()
        if self._page is not None and now - self._page[0] < SNAPSHOT_MAX_AGE_S:
            return self._page[1]
        snap = await self.snapshot()
        page = await asyncio.to_thread(self.metrics.render, snap, self.figures())
        self._page = (now, page)
        return page

    # --- listeners ----------------------------------------------------------------------
    def _wanted_listeners(self) -> dict[Endpoint, tuple[bool, bool]]:
        """listen address -> (serves metrics, serves the API); one listener when equal."""
        cfg = self.daemon.config
        out: dict[Endpoint, tuple[bool, bool]] = {}
        if cfg is None:
            return out
        if cfg.metrics is not None:
            out[parse_endpoint(cfg.metrics.listen)] = (True, False)
        if cfg.api is not None:
            ep = parse_endpoint(cfg.api.listen)
            out[ep] = (out.get(ep, (False, False))[0], True)
        return out

    async def _sync_listeners(self) -> None:
        wanted = self._wanted_listeners()
        for ep in [ep for ep in self._servers if ep not in wanted]:
            self._servers.pop(ep).close()
            log.info("HTTP listener closed", extra={"listen": str(ep)})
        for ep in [ep for ep in self._failed if ep not in wanted]:
            del self._failed[ep]
        for ep, roles in wanted.items():
            if ep in self._servers:
                continue
            last = self._failed.get(ep)
            if last is not None and time.monotonic() - last < LISTEN_RETRY_S:
                continue
            try:
                self._servers[ep] = await http.serve(ep.host, ep.port, self._handler(ep))
            except OSError as exc:
                if last is None:  # logged once; retried every LISTEN_RETRY_S
                    log.error(
                        "cannot listen for HTTP; retrying (fix metrics.listen / api.listen "
                        "and reload, or free the port)",
                        extra={"listen": str(ep), "error": exc.strerror or str(exc)},
                    )
                self._failed[ep] = time.monotonic()
                continue
            self._failed.pop(ep, None)
            what = " and ".join(n for n, on in zip(("metrics", "api"), roles, strict=True) if on)
            log.info("HTTP listener open", extra={"listen": str(ep), "serves": what})
        self._wanted = wanted

    def _handler(self, ep: Endpoint) -> http.Handler:
        api = Api(self)

        async def handle(req: http.Request) -> http.Response:
            metrics_on, api_on = self._wanted.get(ep, self._wanted_listeners().get(ep, (0, 0)))
            if req.path == "/metrics" and metrics_on:
                if req.method not in ("GET", "HEAD"):
                    return http.error(405, "use GET", allowed="GET")
                return http.Response(200, await self.metrics_page(), CONTENT_TYPE)
            if api_on:
                return await api.handle(req)
            if metrics_on and req.path == "/":
                return http.Response(200, b"carom metrics: GET /metrics\n", "text/plain")
            return http.error(404, f"no such path {req.path}; this listener serves /metrics")

        return handle
