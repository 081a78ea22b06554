"""From a validated config to the map contents, with the fewest writes.

The reconciler keeps an image of what the maps hold (read back from pinned maps
when a daemon adopts a running data plane), computes the desired image from the
config and the neighbour table, and applies the difference in an order that
never shows the data plane a service whose table points at unknown reals. Every
write is recorded in an undo log, so a failed apply restores the old state.

It scales by doing only what changed: a Maglev table is a pure function of its
(real, id, weight) set, so tables are cached by that set and shared by every
service with the same set; a reload rebuilds only new sets, and writes only the
rows (and slots) that differ. The work runs in a worker thread: desired() and
write() touch nothing the event loop reads until commit() swaps the result in.

Established flows are never touched: the connection table is not written, and
reals that leave the config stay in `reals` (draining) with their id, which is
not given to another address while a connection or persistence entry may still
point to it. Likewise a removed service's id is not given to a new service while
a persistence entry (keyed by service id and client) may still name it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from carom import abi
from carom.bpf.loader import Dataplane
from carom.config.schema import Config
from carom.daemon.desired import build
from carom.daemon.image import (
    LAST_SEEN_SLACK_NS,
    STEPS,
    Address,
    ApplyError,
    Desired,
    Image,
    Inputs,
    MemberSet,
    Memo,
    ReconcileError,
    Table,
    Transaction,
    ident_of,
    real_key,
    svc_key,
)
from carom.daemon.rows import MaglevRows
from carom.net.neighbours import Neighbour
from carom.sched import maglev

log = logging.getLogger("carom.reconcile")


@dataclass(frozen=True)
class TraceSetting:
    """`carom trace` in node_cfg (bpf/trace.h)."""

    one_in: int  # record one matching decision in this many (>= 1)
    host: abi.IPAddress | None = None  # only tuples with this address at either end
    port: int = 0  # only tuples with this port at either end; 0: any


def _discard(_: object) -> None:
    """Undo steps return nothing; this drops a call's result."""


def _mac_key(mac: bytes) -> abi.MacKey:
    return abi.MacKey.from_buffer_copy(mac + b"\0\0")


class Reconciler:
    """Owns the id allocation and the image of the maps of one data plane."""

    def __init__(self, dp: Dataplane) -> None:
        self.dp = dp
        self.size = dp.limits.maglev_table_size
        self.current = Image()
        self.real_ids: dict[Address, int] = {}
        self.tables: dict[MemberSet, Table] = {}
        self.last: Desired | None = None
        self.memo: Memo | None = None  # the parts of `current` (daemon/desired.py)
        self.writes_total = 0
        # A fresh (not adopted) map is all zeros: rows need not be read back.
        self._zero_row = np.zeros(self.size, dtype=np.uint32)
        self._zero_row.flags.writeable = False
        self.fresh = not dp.adopted
        self.rows = MaglevRows(dp["maglev"], self.size)  # through the mapped array
        # Test hook: called after each apply step, may raise to inject a failure.
        self.fault: Callable[[str], None] | None = None
        # The role the cluster decided (carom.cluster.service); None: node.role of
        # the config. Written from the event loop while a reload may be writing
        # in the worker thread: the lock keeps the image and node_cfg agreeing.
        self.role_override: abi.Role | None = None
        self._role_lock = threading.Lock()
        # `carom trace` (daemon/trace_task.py): node_cfg's trace fields, kept
        # across reloads like the role; None: off.
        self.trace: TraceSetting | None = None

    def set_role(self, role: abi.Role) -> None:
        """Switch node_cfg.role now (one map write), ahead of any reload."""
        with self._role_lock:
            self.role_override = role
            node = abi.NodeCfg.from_buffer_copy(bytes(self.current.node))
            node.role = int(role)
            self.dp["node_cfg"].update(0, node)
            self.current.node = node

    def set_trace(self, trace: TraceSetting | None) -> None:
        """Switch `carom trace` on (or off: None) now, one node_cfg write."""
        with self._role_lock:
            self.trace = trace
            node = abi.NodeCfg.from_buffer_copy(bytes(self.current.node))
            self._patch_role(node)
            self.dp["node_cfg"].update(0, node)
            self.current.node = node

    def _patch_role(self, node: abi.NodeCfg) -> None:
        """The fields set at runtime, not by the config: role and trace."""
        if self.role_override is not None:
            node.role = int(self.role_override)
        t = self.trace
        node.trace_one_in = t.one_in if t is not None else 0
        node.trace_family = int(abi.family_of(t.host)) if t and t.host else 0
        node.trace_addr = abi.Addr.of(t.host) if t and t.host else abi.Addr()
        node.trace_port = abi.port_be(t.port) if t is not None else 0

    # --- reading back a running data plane --------------------------------------------
    def adopt(self) -> None:
        """Rebuild the image and the id allocation from the (pinned) maps."""
        dp = self.dp
        img = Image()
        cfg = dp["node_cfg"].lookup(0)
        img.node = cfg if cfg is not None else abi.NodeCfg()
        for key, info in dp["services"].items():
            img.services[ident_of(key)] = info
        seen: dict[bytes, np.ndarray] = {}
        for sid in sorted({int(i.id) for i in img.services.values()}):
            row = self.rows.read(sid)
            # identical rows share one array, as they do after a build
            img.rows[sid] = seen.setdefault(row.tobytes(), row)
        real_ids: dict[Address, int] = {}
        for rid, info in dp["reals"].items():
            if info.family:
                img.reals[int(rid)] = info
                real_ids[info.addr.to_ip(info.family)] = int(rid)
        for key, vinfo in dp["vip_addrs"].items():
            img.vips[(key.addr.to_ip(key.family), int(key.family))] = vinfo
        img.vip_filter = {int(i): int(w) for i, w in dp["vip_filter"].items() if w}
        down = np.frombuffer(
            dp["real_down"].read_range(0, dp["real_down"].max_entries), dtype="<u8"
        )
        img.real_down = {int(i): int(down[i]) for i in np.flatnonzero(down)}
        for key, rid in dp["real_macs"].items():
            img.real_macs[bytes(key.mac)] = int(rid)
        self.current = img
        self.real_ids = real_ids
        self.memo = None
        self.fresh = False
        log.info("adopted data plane: %d services, %d reals", len(img.services), len(img.reals))

    # --- ids ----------------------------------------------------------------------------
    def referenced_real_ids(self, config: Config) -> set[int]:
        """Real ids that a connection or persistence entry may still send a packet
        to: entries younger than the longest idle time (or persistence timeout)."""
        now = time.monotonic_ns()
        n = self.current.node  # the idle times the data plane runs with now
        tcp = max(config.timeouts.tcp_idle * 10**9, int(n.tcp_idle_ns)) + LAST_SEEN_SLACK_NS
        udp = max(config.timeouts.udp_idle * 10**9, int(n.udp_idle_ns)) + LAST_SEEN_SLACK_NS
        persist = max(
            [s.persistence_timeout for s in config.services]
            + [int(i.persist_timeout_s) for i in self.current.services.values()]
            + [0]
        )
        persist_ns = persist * 10**9 + LAST_SEEN_SLACK_NS
        busy: set[int] = set()
        for key, cv in self.dp["conn_table"].items():
            idle = tcp if key.proto == 6 else udp if key.proto == 17 else max(tcp, udp)
            if now - int(cv.last_seen_ns) <= idle:
                busy.add(int(cv.real_id))
        if persist:
            for _, pv in self.dp["persist_table"].items():
                if now - int(pv.last_seen_ns) <= persist_ns:
                    busy.add(int(pv.real_id))
        return busy

    def _allocate_reals(
        self, config: Config, wanted: Collection[Address]
    ) -> tuple[dict[Address, int], list[str]]:
        """Ids for the config's reals: kept per address across reloads and restarts.
        A draining real keeps its id until no live entry can point to it; only
        then may a new address take it, and only when no never-used id is left."""
        max_reals = self.dp.limits.max_reals
        real_ids = dict(self.real_ids)
        new = [a for a in sorted(wanted, key=real_key) if a not in real_ids]
        released: list[str] = []
        if not new:
            return real_ids, released
        used = set(real_ids.values())
        free = (max_reals - 1) - len(used)
        if free < len(new):
            draining = sorted(
                ((rid, a) for a, rid in real_ids.items() if a not in wanted),
                key=lambda x: x[0],
            )
            busy = self.referenced_real_ids(config) if draining else set()
            held = []
            for rid, a in draining:
                if free >= len(new):
                    break
                if rid in busy:
                    held.append(str(a))
                    continue
                del real_ids[a]
                used.discard(rid)
                released.append(str(a))
                free += 1
            if free < len(new):
                why = (
                    f"; draining reals whose connections are still live hold {len(held)} "
                    f"of them ({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}): "
                    "they free up when their connections end (timeouts.tcp_idle/udp_idle)"
                    if held
                    else ""
                )
                raise ReconcileError(
                    f"no free real id for {len(new)} new real(s) ({new[0]}, ...): "
                    f"ids 1..{max_reals - 1} are all in use{why}; raise limits.max_reals"
                )
        next_id = 1
        for address in new:
            while next_id in used:
                next_id += 1
            real_ids[address] = next_id
            used.add(next_id)
        return real_ids, released

    def referenced_service_ids(self, config: Config) -> set[int]:
        """Service ids that a persistence entry younger than its timeout names.
        A persistence key is (service id, client): a new service given such an
        id would send that client to the old service's real."""
        persist = max(
            [s.persistence_timeout for s in config.services]
            + [int(i.persist_timeout_s) for i in self.current.services.values()]
            + [0]
        )
        if not persist:
            return set()
        now = time.monotonic_ns()
        horizon = persist * 10**9 + LAST_SEEN_SLACK_NS
        return {
            int(key.svc_id)
            for key, pv in self.dp["persist_table"].items()
            if now - int(pv.last_seen_ns) <= horizon
        }

    def _alloc_service(self, used: set[int], limit: int, busy: Callable[[], set[int]]) -> int:
        """The lowest id no service has, skipping ids a removed service had while
        a persistence entry may still name them (`busy`, read only if needed)."""
        held = 0
        for i in range(limit):
            if i in used:
                continue
            if i in busy():  # a removed service's id (after a restart too)
                held += 1
                continue
            return i
        why = (
            f"; {held} of them belonged to removed services whose persistence entries "
            "are still live: they free up when those expire (persistence_timeout)"
            if held
            else ""
        )
        raise ReconcileError(
            f"no free service id (limit {limit}){why}; raise limits.max_services in the config"
        )

    # --- desired state ------------------------------------------------------------------
    def table(self, members: MemberSet, fresh: dict[MemberSet, Table]) -> tuple[Table, bool]:
        """The table of one member set: from the cache, or built (and cached in
        `fresh`). Returns whether it was built."""
        t = self.tables.get(members) or fresh.get(members)
        if t is not None:
            return t, False
        row = maglev.build_ids({k: (rid, w) for k, rid, w in members}, self.size)
        row.flags.writeable = False
        t = Table(row, maglev.fingerprint(row))
        fresh[members] = t
        return t, True

    def desired(
        self,
        config: Config,
        neighbours: Mapping[Address, Neighbour],
        inputs: Inputs | None = None,
        full: bool = False,
    ) -> Desired:
        """The image the config asks for, with the cluster's state and the health
        view (`inputs`: health checks and manual overrides per service and real,
        in place of configured weights). Changes nothing: ids and tables it
        allocates become the reconciler's own only through commit(). Only the
        services an input change reaches are worked out again (daemon/desired.py);
        `full` works out every one."""
        return build(self, config, neighbours, inputs or Inputs(), full)

    # --- applying -----------------------------------------------------------------------
    def apply(self, want: Desired) -> int:
        """write() and commit(): the number of map elements written. On failure
        everything written is undone and ApplyError says how far it got."""
        tx = self.write(want)
        self.commit(want, tx)
        return tx.writes

    def write(self, want: Desired) -> Transaction:
        """Write the difference between the current image and `want`. The
        returned transaction can still be rolled back (a later step of a reload
        failed) until commit(). Raises ApplyError after undoing its own writes."""
        tx = Transaction()
        dp, cur, new = self.dp, self.current, want.image
        step = STEPS[0]

        def put(map_name: str, key: Any, value: Any, old: Any | None) -> None:
            dp[map_name].update(key, value)
            tx.writes += 1
            if old is None:
                tx.undo.append(lambda: _discard(dp[map_name].delete(key)))
            else:
                tx.undo.append(lambda: dp[map_name].update(key, old))

        def delete(map_name: str, key: Any, old: Any) -> None:
            dp[map_name].delete(key)
            tx.writes += 1
            tx.undo.append(lambda: dp[map_name].update(key, old))

        def done(name: str) -> None:
            nonlocal step
            tx.steps_done.append(name)
            if self.fault is not None:
                self.fault(name)
            step = STEPS[min(len(tx.steps_done), len(STEPS) - 1)]

        try:
            # 1. reals before anything points at them
            for rid, rinfo in new.reals.items():
                old = cur.reals.get(rid)
                if old is None or bytes(old) != bytes(rinfo):
                    put("reals", rid, rinfo, old if old is not None else abi.RealInfo())
            done("reals")
            for mac, rid in new.real_macs.items():
                if cur.real_macs.get(mac) != rid:
                    put("real_macs", _mac_key(mac), rid, cur.real_macs.get(mac))
            done("real_macs")
            # 2. Maglev rows: only rows whose table changed, only the slots that differ
            for info in new.services.values():
                sid = int(info.id)
                row = new.rows[sid]
                old_row = cur.rows.get(sid)
                if old_row is row:
                    continue
                if old_row is None:
                    old_row = self._zero_row if self.fresh else self.rows.read(sid)
                tx.writes += self.rows.write(sid, old_row, row)
                tx.undo.append(self._restore_row(sid, row, old_row))
            done("maglev")
            # 2b. "down, move its flows" bits, before the services that flag them
            for word in sorted(set(new.real_down) | set(cur.real_down)):
                if new.real_down.get(word, 0) != cur.real_down.get(word, 0):
                    put("real_down", word, new.real_down.get(word, 0), cur.real_down.get(word, 0))
            done("real_down")
            # 3. services, then their VIP addresses
            for ident, info in new.services.items():
                old_info = cur.services.get(ident)
                if old_info is info:  # a part kept from the last image (desired.py)
                    continue
                if old_info is None or bytes(old_info) != bytes(info):
                    put("services", svc_key(ident), info, old_info)
            done("services")
            for (vip, fam), vinfo in new.vips.items():
                old_vinfo = cur.vips.get((vip, fam))
                if old_vinfo is None or bytes(old_vinfo) != bytes(vinfo):
                    put("vip_addrs", abi.vip_key(vip), vinfo, old_vinfo)
            done("vip_addrs")
            # 4. removals: VIP address first, so nothing half-removed is looked up
            for (vip, fam), vinfo in cur.vips.items():
                if (vip, fam) not in new.vips:
                    delete("vip_addrs", abi.vip_key(vip), vinfo)
            done("remove_vip_addrs")
            for ident, info in cur.services.items():
                if ident not in new.services:
                    delete("services", svc_key(ident), info)
            done("remove_services")
            for mac, rid in cur.real_macs.items():
                if mac not in new.real_macs:
                    delete("real_macs", _mac_key(mac), rid)
            done("remove_real_macs")
            for rid, rinfo in cur.reals.items():
                if rid not in new.reals:
                    put("reals", rid, abi.RealInfo(), rinfo)
            done("remove_reals")
            # the VIP prefilter: bits of new VIPs set, bits of removed ones cleared
            for word in sorted(set(new.vip_filter) | set(cur.vip_filter)):
                if new.vip_filter.get(word, 0) != cur.vip_filter.get(word, 0):
                    put(
                        "vip_filter", word, new.vip_filter.get(word, 0), cur.vip_filter.get(word, 0)
                    )
            done("vip_filter")
            # 5. node settings last
            with self._role_lock:
                self._patch_role(new.node)
                if bytes(cur.node) != bytes(new.node):
                    put("node_cfg", 0, new.node, cur.node)
            done("node_cfg")
        except Exception as exc:
            writes = tx.writes
            errors = tx.rollback()
            clean = not errors
            log.error("apply failed at %s after %d writes; rolled back", step, writes)
            raise ApplyError(
                f"map update failed at step {step} after {writes} map writes ({exc}); "
                + (
                    "all of them were undone: the previous state serves"
                    if clean
                    else f"{len(errors)} undo steps failed ({errors[0]}): the maps are "
                    "partly updated"
                ),
                step,
                writes,
                clean,
            ) from exc
        return tx

    def _restore_row(self, sid: int, row: np.ndarray, old_row: np.ndarray) -> Callable[[], None]:
        def restore() -> None:
            self.rows.write(sid, row, old_row)

        return restore

    def commit(self, want: Desired, tx: Transaction) -> None:
        """Make `want` the reconciler's state: what the maps now hold."""
        new = want.image
        with self._role_lock:
            self._patch_role(new.node)
        # rows of removed services stay in the map: remember what they hold
        for sid, row in self.current.rows.items():
            new.rows.setdefault(sid, row)
        self.current = new
        self.real_ids = want.real_ids
        self.tables = want.tables
        self.last = want
        self.memo = want.memo
        self.writes_total += tx.writes
        tx.undo.clear()
        tx.end()
        for address in want.released:
            log.info("real id freed: no live connection points to it", extra={"real": address})
