"""Following the real servers' neighbour entries: kernel events as they happen,
a batched lookup only for reals without a usable entry, and one apply for a
burst of changes. A MAC change rewrites the reals entry alone; a real that
(un)resolves rebuilds only the tables whose member set changes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, Protocol

from carom import abi
from carom.config.schema import Config
from carom.daemon.image import ApplyError, Desired, ReconcileError
from carom.net.neighbours import Neighbour, NeighbourEvents, NeighbourTable, updated

log = logging.getLogger("carom.daemon")

RESOLVE_INTERVAL_S = 2.0  # asking again about reals without a usable entry
SWEEP_INTERVAL_S = 60.0  # all reals, in case an event was lost (socket overrun)
COALESCE_S = 0.02  # changes that arrive together are applied together
GOOD = ("reachable",)


class Applier(Protocol):
    """What the follower needs of the daemon (daemon/app.py): its lock, its
    current config, and its all-or-nothing apply."""

    lock: asyncio.Lock
    config: Config | None

    async def apply(self, config: Config, old: Config | None) -> tuple[int, Desired]: ...


class NeighbourFollower:
    def __init__(self, daemon: Applier) -> None:
        self.daemon = daemon
        self.table: dict[abi.IPAddress, Neighbour] = {}
        self.mac_history: dict[abi.IPAddress, list[str]] = {}
        self.dirty = asyncio.Event()
        self.changed = asyncio.Event()  # an event changed the table (resolve() waits on it)
        self.events_seen = 0
        self.lookups = 0
        self.applies = 0
        self.initial_wait = 3.0
        # pyroute2's synchronous IPRoute runs an event loop of its own: it lives in
        # one dedicated thread and every netlink request goes there.
        self.netlink = concurrent.futures.ThreadPoolExecutor(1, "carom-netlink")
        self.nt: NeighbourTable | None = None
        self.events: NeighbourEvents | None = None

    async def _in_netlink(self, fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.netlink, fn)

    async def open(self) -> None:
        self.nt = await self._in_netlink(NeighbourTable)
        # Subscribe before the first lookup, so nothing changes unseen in between.
        self.events = NeighbourEvents()
        await self.events.open()

    async def close(self) -> None:
        if self.events is not None:
            await self.events.close()
        if self.nt is not None:
            await self._in_netlink(self.nt.close)
        self.netlink.shutdown(wait=False)

    def summary(self) -> dict[str, Any]:
        return {
            "followed": len(self.table),
            "unresolved": sum(1 for n in self.table.values() if n.mac is None),
            "events": self.events_seen,
            "lookups": self.lookups,
            "applies": self.applies,
        }

    # --- lookups ------------------------------------------------------------------------
    async def lookup(self, addrs: list[abi.IPAddress]) -> list[abi.IPAddress]:
        """Ask the kernel about `addrs` (and request resolution); returns those
        whose MAC or state changed."""
        if not addrs:
            return []
        nt = self.nt
        assert nt is not None
        found: dict[abi.IPAddress, Neighbour] = await self._in_netlink(
            lambda: nt.lookup_many(addrs)
        )
        self.lookups += len(addrs)
        return [a for a, n in found.items() if self._set(a, n)]

    async def resolve(self, addrs: list[abi.IPAddress], wait: float = 0.0) -> None:
        """Look up the reals (RealAddresses) the follower does not know yet;
        with `wait`, give ARP/NDP that long to answer."""
        deadline = time.monotonic() + wait
        todo = [a for a in addrs if a not in self.table]
        if not todo:
            return
        self.changed.clear()
        await self.lookup(todo)
        while True:
            todo = [a for a in todo if self.table[a].mac is None and self._pending(a)]
            if not todo or time.monotonic() >= deadline:
                return
            # The kernel's event for an answer updates the table at once, so a
            # reload with a new real waits one ARP/NDP round trip, not a polling
            # period; without an event, look again after 50 ms.
            try:
                await asyncio.wait_for(self.changed.wait(), 0.05)
                self.changed.clear()
            except TimeoutError:
                self.changed.clear()
                await self.lookup(todo)

    def _pending(self, a: abi.IPAddress) -> bool:
        return self.table[a].state in ("incomplete", "probing")

    def forget_unused(self, addrs: list[abi.IPAddress]) -> None:
        keep = set(addrs)
        for a in [a for a in self.table if a not in keep]:
            del self.table[a]

    def _set(self, a: abi.IPAddress, n: Neighbour) -> bool:
        old = self.table.get(a)
        self.table[a] = n
        self._note_mac(a, n)
        if old is None:
            return True
        if old.mac != n.mac or old.state != n.state or old.ifname != n.ifname:
            # reachable <-> stale <-> delay is the kernel's routine aging, for
            # every real at once: only a change of MAC, interface or of whether
            # there is a MAC at all is news (400 lines per aging burst, before)
            news = old.mac != n.mac or old.ifname != n.ifname
            (log.info if news else log.debug)(
                "real server neighbour changed",
                extra={
                    "real": str(a),
                    "state": n.state,
                    "mac": abi.mac_str(n.mac) if n.mac else "none",
                    "interface": n.ifname or "none",
                },
            )
            if old.ifname != n.ifname and n.ifname is not None and old.ifname is not None:
                log.warning(
                    "the route to a real server moved to another interface; if carom is "
                    "not attached to it the real gets no new flows (XDP_TX cannot send there)",
                    extra={"real": str(a), "was": old.ifname, "now": n.ifname},
                )
            return True
        return False

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
    async def follow_events(self) -> None:
        """Kernel neighbour events for followed reals update the table at once."""
        while True:
            assert self.events is not None
            try:
                async for ev in self.events.events():
                    known = self.table.get(ev.address)
                    if known is None:
                        continue
                    self.events_seen += 1
                    if self._set(ev.address, updated(known, ev)):
                        self.dirty.set()
                        self.changed.set()
            except (OSError, RuntimeError) as exc:
                # e.g. ENOBUFS after a burst: resubscribe and look everything up
                log.error("neighbour events failed; resubscribing", extra={"error": str(exc)})
                await self.events.close()
                await asyncio.sleep(1.0)
                self.events = NeighbourEvents()
                await self.events.open()
                if await self.lookup(list(self.table)):
                    self.dirty.set()

    async def resolve_missing(self) -> None:
        """Every RESOLVE_INTERVAL_S, one batched lookup of the reals without a
        reachable entry (which also asks the kernel to resolve or revalidate
        them); every SWEEP_INTERVAL_S, of all of them."""
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(RESOLVE_INTERVAL_S)
            if time.monotonic() - last_sweep >= SWEEP_INTERVAL_S:
                todo = list(self.table)
                last_sweep = time.monotonic()
            else:
                todo = [a for a, n in self.table.items() if n.state not in GOOD]
            try:
                if await self.lookup(todo):
                    self.dirty.set()
            except Exception as exc:
                log.error("neighbour lookup failed; retrying", extra={"error": str(exc)})

    async def apply_changes(self) -> None:
        """Apply neighbour changes: one apply for changes that arrive together."""
        d = self.daemon
        while True:
            await self.dirty.wait()
            await asyncio.sleep(COALESCE_S)
            async with d.lock:
                self.dirty.clear()
                assert d.config is not None
                try:
                    writes, want = await d.apply(d.config, d.config)
                except (ApplyError, ReconcileError) as exc:
                    log.error("applying a neighbour change failed", extra={"error": str(exc)})
                    continue
                self.applies += 1
                log.info(
                    "applied neighbour change",
                    extra={"map_writes": writes, "tables_built": want.built},
                )
