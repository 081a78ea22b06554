"""From a validated config to the map contents, with the fewest writes.

The reconciler keeps an image of what the maps hold (read back from pinned maps
when a daemon adopts a running data plane), computes the desired image from the
config and the neighbour table, and applies the difference in an order that
never shows the data plane a service whose table points at unknown reals. Every
write is recorded in an undo log, so a failed apply restores the old state.

Established flows are never touched: the connection table is not written, and
reals that leave the config stay in `reals` (draining) so their flows go on."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carom import abi
from carom.bpf.loader import Dataplane
from carom.config.schema import Config, Service
from carom.model.state import Real
from carom.net.neighbours import Neighbour
from carom.sched import maglev

log = logging.getLogger("carom.reconcile")

Address = abi.IPAddress
SvcIdent = tuple[Address, int, int]  # vip, proto, port (0 = all)


def real_key(address: Address) -> bytes:
    """Identity of a real in Maglev: family + 16 address bytes (order-free, stable)."""
    return bytes([address.version]) + address.packed.ljust(16, b"\0")


@dataclass
class Image:
    """What the maps hold (or should hold), as Python values."""

    node: abi.NodeCfg = field(default_factory=abi.NodeCfg)
    services: dict[SvcIdent, abi.SvcInfo] = field(default_factory=dict)
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # service id -> real ids
    reals: dict[int, abi.RealInfo] = field(default_factory=dict)
    vips: dict[tuple[Address, int], abi.VipInfo] = field(default_factory=dict)  # (vip, family)
    vip_filter: dict[int, int] = field(default_factory=dict)  # non-zero vip_filter words
    real_macs: dict[bytes, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RealView:
    """One real of one service, for status and explain."""

    address: str
    real_id: int
    weight: int
    local: bool
    mac: str | None
    state: str  # up | local | unresolved | drained
    detail: str


@dataclass
class Desired:
    image: Image
    service_views: dict[SvcIdent, list[RealView]]
    fingerprints: dict[SvcIdent, str]
    names: dict[SvcIdent, str]
    draining: list[str]  # reals kept only for their established flows


def svc_ident(svc: Service) -> SvcIdent:
    return (svc.vip, abi.PROTOCOLS[svc.protocol], svc.port_number)


def svc_key(ident: SvcIdent) -> abi.SvcKey:
    return abi.svc_key(*ident)


def ident_of(key: abi.SvcKey) -> SvcIdent:
    return (key.vip.to_ip(key.family), int(key.proto), abi.port_host(key.port))


def _discard(_: object) -> None:
    """Undo steps return nothing; this drops a call's result."""


def _mac_key(mac: bytes) -> abi.MacKey:
    return abi.MacKey.from_buffer_copy(mac + b"\0\0")


class Reconciler:
    """Owns the id allocation and the image of the maps of one data plane."""

    def __init__(self, dp: Dataplane) -> None:
        self.dp = dp
        self.size = dp.limits.maglev_size
        self.current = Image()
        self.real_ids: dict[Address, int] = {}
        self.last: Desired | None = None
        self.writes_total = 0

    # --- reading back a running data plane --------------------------------------------
    def adopt(self) -> None:
        """Rebuild the image and the id allocation from the (pinned) maps."""
        dp = self.dp
        img = Image()
        cfg = dp["node_cfg"].lookup(0)
        img.node = cfg if cfg is not None else abi.NodeCfg()
        for key, info in dp["services"].items():
            ident = ident_of(key)
            img.services[ident] = info
        maglev_map = dp["maglev"]
        for sid in sorted({int(i.id) for i in img.services.values()}):
            img.rows[sid] = self._read_row(maglev_map, sid)
        for rid, info in dp["reals"].items():
            if info.family:
                img.reals[int(rid)] = info
                self.real_ids[info.addr.to_ip(info.family)] = int(rid)
        for key, vinfo in dp["vip_addrs"].items():
            img.vips[(key.addr.to_ip(key.family), int(key.family))] = vinfo
        img.vip_filter = {int(i): int(w) for i, w in dp["vip_filter"].items() if w}
        for key, rid in dp["real_macs"].items():
            img.real_macs[bytes(key.mac)] = int(rid)
        self.current = img
        log.info("adopted data plane: %d services, %d reals", len(img.services), len(img.reals))

    def _read_row(self, m: Any, sid: int) -> np.ndarray:
        return np.frombuffer(m.read_range(sid * self.size, self.size), dtype=np.uint32).copy()

    # --- desired state ------------------------------------------------------------------
    def _alloc(self, used: set[int], start: int, limit: int, what: str) -> int:
        for i in range(start, limit):
            if i not in used:
                return i
        raise ValueError(f"no free {what} id (limit {limit}); raise limits in the config")

    def desired(self, config: Config, neighbours: dict[Address, Neighbour]) -> Desired:
        """The image the config asks for. Pure apart from id allocation bookkeeping."""
        img = Image()
        img.node = abi.NodeCfg(
            role=int(abi.Role.ACTIVE if config.node.role == "active" else abi.Role.BACKUP),
            flags=int(abi.CfgFlags.FRAG_PASS) if config.node.fragments == "pass" else 0,
            maglev_size=self.size,
            tcp_idle_ns=config.timeouts.tcp_idle * 10**9,
            udp_idle_ns=config.timeouts.udp_idle * 10**9,
        )
        max_reals = self.dp.limits.max_reals
        views: dict[SvcIdent, list[RealView]] = {}
        fingerprints: dict[SvcIdent, str] = {}
        names: dict[SvcIdent, str] = {}

        # Real ids: stable per address across reloads and restarts.
        wanted: dict[Address, tuple[bool, Neighbour | None]] = {}
        for svc in config.services:
            for r in svc.reals:
                wanted[r.address] = (r.local, neighbours.get(r.address))
        used_real_ids = set(self.real_ids.values())
        for address in sorted(wanted, key=real_key):
            if address not in self.real_ids:
                drained = [a for a in self.real_ids if a not in wanted]
                if len(used_real_ids) >= max_reals - 1 and drained:
                    victim = drained[0]
                    log.warning("reusing the id of drained real %s for %s", victim, address)
                    used_real_ids.discard(self.real_ids.pop(victim))
                rid = self._alloc(used_real_ids, 1, max_reals, "real")
                self.real_ids[address] = rid
                used_real_ids.add(rid)

        for address, rid in self.real_ids.items():
            prev = self.current.reals.get(rid)
            if address in wanted:
                local, nb = wanted[address]
                mac = b"" if local else (nb.mac if nb and nb.mac else b"")
                if (
                    not local
                    and not mac
                    and prev is not None
                    and bytes(prev.mac) != bytes(6)
                    and nb is not None
                    and nb.state in ("incomplete", "probing")
                ):
                    mac = bytes(prev.mac)  # still resolving: keep the MAC we had
                usable = local or bool(mac)
            elif prev is not None:  # draining: left the config, flows continue
                img.reals[rid] = prev
                continue
            else:
                continue
            img.reals[rid] = Real(
                rid, address, mac=mac or bytes(6), local=local, usable=usable
            ).info()
            if mac and not local:
                img.real_macs[mac] = rid

        # Service ids: those of the services the maps already hold, new ones
        # take the lowest free id.
        svc_ids = {ident: int(info.id) for ident, info in self.current.services.items()}
        wanted_svcs = {svc_ident(s) for s in config.services}
        used_svc_ids = {sid for ident, sid in svc_ids.items() if ident in wanted_svcs}
        for svc in config.services:
            ident = svc_ident(svc)
            sid = svc_ids.get(ident)
            if sid is None:
                sid = self._alloc(used_svc_ids, 0, self.dp.limits.max_services, "service")
            used_svc_ids.add(sid)
            img.services[ident] = abi.SvcInfo(
                id=sid,
                flags=int(abi.SvcFlags.PERSIST) if svc.persistence_timeout else 0,
                persist_timeout_s=svc.persistence_timeout,
            )
            members: dict[bytes, tuple[int, int]] = {}
            view = []
            for r in svc.reals:
                rid = self.real_ids[r.address]
                rinfo = img.reals[rid]
                usable = not rinfo.flags & abi.RealFlags.UNUSABLE
                nb = neighbours.get(r.address)
                if r.local:
                    state, detail = "local", "served by this node's own stack"
                elif not usable:
                    state = "unresolved"
                    detail = nb.detail if nb else "not resolved yet"
                elif r.weight == 0:
                    state, detail = "drained", "weight 0: no new connections"
                else:
                    state, detail = "up", nb.state if nb else ""
                if usable and r.weight > 0:
                    members[real_key(r.address)] = (rid, r.weight)
                shown = None if r.local or not usable else abi.mac_str(bytes(rinfo.mac))
                view.append(RealView(str(r.address), rid, r.weight, r.local, shown, state, detail))
            row = maglev.build_ids(members, self.size)
            img.rows[sid] = row
            views[ident] = view
            fingerprints[ident] = maglev.fingerprint(row)
            names[ident] = svc.display_name
            vinfo = img.vips.setdefault((svc.vip, int(abi.family_of(svc.vip))), abi.VipInfo())
            vinfo.services += 1
            if svc.port_number == 0:
                vinfo.flags |= int(abi.all_ports_flag(abi.PROTOCOLS[svc.protocol]))
        img.vip_filter = abi.vip_filter_words(vip for vip, _ in img.vips)
        draining = [
            str(a) for a, rid in self.real_ids.items() if a not in wanted and rid in img.reals
        ]
        return Desired(img, views, fingerprints, names, draining)

    # --- applying -----------------------------------------------------------------------
    def apply(self, want: Desired) -> int:
        """Write the difference between the current image and `want`; returns the
        number of map elements written. On failure, undoes what it wrote."""
        undo: list[Callable[[], None]] = []
        writes = 0
        dp, cur, new = self.dp, self.current, want.image

        def put(map_name: str, key: Any, value: Any, old: Any | None) -> None:
            nonlocal writes
            dp[map_name].update(key, value)
            writes += 1
            if old is None:
                undo.append(lambda: _discard(dp[map_name].delete(key)))
            else:
                undo.append(lambda: dp[map_name].update(key, old))

        def delete(map_name: str, key: Any, old: Any) -> None:
            nonlocal writes
            dp[map_name].delete(key)
            writes += 1
            undo.append(lambda: dp[map_name].update(key, old))

        try:
            # 1. reals before anything points at them
            for rid, rinfo in new.reals.items():
                old = cur.reals.get(rid)
                if old is None or bytes(old) != bytes(rinfo):
                    put("reals", rid, rinfo, old if old is not None else abi.RealInfo())
            for mac, rid in new.real_macs.items():
                if cur.real_macs.get(mac) != rid:
                    put("real_macs", _mac_key(mac), rid, cur.real_macs.get(mac))
            # 2. Maglev rows: only the slots that change
            for info in new.services.values():
                sid = int(info.id)
                old_row = cur.rows.get(sid)
                if old_row is None:
                    old_row = self._read_row(dp["maglev"], sid)
                row = new.rows[sid]
                changed = np.nonzero(old_row != row)[0]
                if len(changed):
                    idx = (changed + sid * self.size).astype(np.uint32)
                    vals = row[changed].astype(np.uint32)
                    dp["maglev"].update_batch_raw(idx.tobytes(), vals.tobytes(), len(idx))
                    writes += len(idx)
                    prev = old_row[changed].astype(np.uint32)

                    def restore(idx: np.ndarray = idx, prev: np.ndarray = prev) -> None:
                        dp["maglev"].update_batch_raw(idx.tobytes(), prev.tobytes(), len(idx))

                    undo.append(restore)
            # 3. services, then their VIP addresses
            for ident, info in new.services.items():
                old_info = cur.services.get(ident)
                if old_info is None or bytes(old_info) != bytes(info):
                    put("services", svc_key(ident), info, old_info)
            for (vip, _fam), vinfo in new.vips.items():
                old_vinfo = cur.vips.get((vip, _fam))
                if old_vinfo is None or bytes(old_vinfo) != bytes(vinfo):
                    put("vip_addrs", abi.vip_key(vip), vinfo, old_vinfo)
            # 4. removals: VIP address first, so nothing half-removed is looked up
            for (vip, fam), vinfo in cur.vips.items():
                if (vip, fam) not in new.vips:
                    delete("vip_addrs", abi.vip_key(vip), vinfo)
            for ident, info in cur.services.items():
                if ident not in new.services:
                    delete("services", svc_key(ident), info)
            for mac, rid in cur.real_macs.items():
                if mac not in new.real_macs:
                    delete("real_macs", _mac_key(mac), rid)
            for rid, rinfo in cur.reals.items():
                if rid not in new.reals:
                    put("reals", rid, abi.RealInfo(), rinfo)
            # the VIP prefilter: bits of new VIPs set, bits of removed ones cleared
            for word in sorted(set(new.vip_filter) | set(cur.vip_filter)):
                if new.vip_filter.get(word, 0) != cur.vip_filter.get(word, 0):
                    put(
                        "vip_filter", word, new.vip_filter.get(word, 0), cur.vip_filter.get(word, 0)
                    )
            # 5. node settings last
            if bytes(cur.node) != bytes(new.node):
                put("node_cfg", 0, new.node, cur.node)
        except Exception:
            log.error("apply failed after %d writes; restoring the previous state", writes)
            for step in reversed(undo):
                try:
                    step()
                except Exception as exc:  # keep undoing the rest
                    log.error("undo step failed: %s", exc)
            raise
        self.current = new
        self.last = want
        self.writes_total += writes
        return writes


def addresses(config: Config) -> list[Address]:
    """Remote reals whose MACs the daemon must resolve."""
    out: dict[Address, None] = {}
    for svc in config.services:
        for r in svc.reals:
            if not r.local:
                out[ipaddress.ip_address(str(r.address))] = None
    return list(out)
