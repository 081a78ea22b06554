"""The values the reconciler works with: the image of the maps, the desired
state with its status views, and an apply's transaction (its undo log). Plain
data and small pure helpers; the reconciler (reconcile.py) computes and writes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field

import numpy as np

from carom import abi
from carom.config.schema import Config, Service
from carom.net.neighbours import Neighbour

log = logging.getLogger("carom.reconcile")

Address = abi.IPAddress
SvcIdent = tuple[Address, int, int]  # vip, proto, port (0 = all)
# The input of one Maglev table: sorted (maglev key, real id, weight) of its members.
Member = tuple[bytes, int, int]
MemberSet = tuple[Member, ...]
ServiceKey = tuple[Address, str, int]  # Service.key: (vip, protocol, port_number)

# Steps of an apply, in order; a fault hook can stop an apply after any of them.
STEPS = (
    "reals",
    "real_macs",
    "maglev",
    "real_down",
    "services",
    "vip_addrs",
    "remove_vip_addrs",
    "remove_services",
    "remove_real_macs",
    "remove_reals",
    "vip_filter",
    "node_cfg",
)
# bpf_ktime_get_ns() is CLOCK_MONOTONIC; the data plane refreshes last_seen at
# most once a second (bpf/sched.h), so an entry may look up to 1 s older.
LAST_SEEN_SLACK_NS = 2 * 10**9


class ReconcileError(ValueError):
    """The config cannot be applied (nothing was written)."""


def real_key(address: Address) -> bytes:
    """Identity of a real in Maglev: family + 16 address bytes (order-free, stable)."""
    return bytes([address.version]) + address.packed.ljust(16, b"\0")


def real_info(address: Address, mac: bytes, local: bool, usable: bool) -> abi.RealInfo:
    """The reals map value of one real (DSR)."""
    flags = (abi.RealFlags.LOCAL if local else 0) | (0 if usable else abi.RealFlags.UNUSABLE)
    info = abi.RealInfo(
        addr=abi.Addr.of(address),
        family=int(abi.family_of(address)),
        method=int(abi.Method.DSR),
        flags=int(flags),
    )
    info.mac[:] = list(mac or bytes(6))
    return info


@dataclass(frozen=True)
class Table:
    """One built Maglev row, shared by every service with the same member set."""

    row: np.ndarray  # uint32 real ids, read-only
    fingerprint: str


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
    real_down: dict[int, int] = field(default_factory=dict)  # non-zero real_down words


@dataclass(frozen=True)
class Effective:
    """What health checks and manual overrides make of one real of one service
    (daemon/health_task.py): an input of desired(), like the config."""

    weight: int  # the Maglev weight now (0: no new flows)
    state: str  # shown in status: up, down, drained, slow-start, held
    detail: str  # why, in words (the check's last result, who drained it)
    reschedule: bool = False  # the real's established flows leave it (down_flows)


# (service key (vip, protocol, port_number), real address) -> Effective
EffectiveMap = dict[tuple[tuple[Address, str, int], Address], Effective]


@dataclass(frozen=True)
class Inputs:
    """What the desired image depends on besides the config and the neighbour
    table: the cluster's state (and, later, health). Passed to
    Reconciler.desired() on every apply; the default is a lone director."""

    # MACs of the other directors (6 bytes or "aa:bb:..", at most abi.MAX_PEER_MACS):
    # VIP frames from them are never scheduled here (node_cfg.peer_macs).
    peer_macs: Sequence[bytes | str] = ()
    # health checks and manual overrides per (service, real) (daemon/health_task.py):
    # weights in place of the configured ones; absent pairs keep the config's
    health: EffectiveMap = field(default_factory=dict)
    # Per service: reals that are down (a failed health check, a dead director
    # at takeover). They get no new flows (out of the Maglev row) and their
    # established flows move to a live real at their next packet, unless the
    # service is in keep_flows. Addresses the service does not have are ignored.
    down: Mapping[SvcIdent, Set[Address]] = field(default_factory=dict)
    # Services whose down reals keep their established flows (only no new ones).
    keep_flows: Set[SvcIdent] = frozenset()

    def peer_mac_bytes(self) -> list[bytes]:
        """peer_macs as 6-byte values, de-duplicated in order; ReconcileError if
        one is not a MAC or there are more than the data plane holds."""
        out: list[bytes] = []
        for m in self.peer_macs:
            try:
                raw = abi.mac_bytes(m)
            except ValueError:
                raise ReconcileError(
                    f"peer director MAC {m!r} is not a MAC address (6 bytes or 'aa:bb:cc:dd:ee:ff')"
                ) from None
            if raw not in out:
                out.append(raw)
        if len(out) > abi.MAX_PEER_MACS:
            raise ReconcileError(
                f"{len(out)} peer director MACs ({', '.join(abi.mac_str(m) for m in out)}); "
                f"the data plane checks at most {abi.MAX_PEER_MACS} (CAROM_MAX_PEER_MACS)"
            )
        return out


@dataclass(frozen=True)
class RealView:
    """One real of one service, for status and explain."""

    address: str
    real_id: int
    weight: int
    local: bool
    mac: str | None
    state: str  # up | local | unresolved | drained | down, or a health state (Effective.state)
    detail: str


@dataclass
class Desired:
    image: Image
    service_views: dict[SvcIdent, list[RealView]]
    fingerprints: dict[SvcIdent, str]
    names: dict[SvcIdent, str]
    draining: list[str]  # reals kept only for their established flows
    real_ids: dict[Address, int] = field(default_factory=dict)  # allocation after commit
    tables: dict[MemberSet, Table] = field(default_factory=dict)  # every table in use
    built: int = 0  # tables built for this image (the rest came from the cache)
    released: list[str] = field(default_factory=list)  # draining reals whose id was freed
    # per-service parts and indexes of this image: the next desired() starts
    # from them once this image is committed (daemon/desired.py)
    memo: Memo | None = None


@dataclass(frozen=True)
class SvcPart:
    """One service's share of a desired image (see the module docstring for
    what it is a function of)."""

    svc: Service  # the config object (kept alive: the memo is keyed by its id())
    ident: SvcIdent
    idents: tuple[SvcIdent, ...]  # services-map keys: one per port
    sid: int
    info: abi.SvcInfo  # never mutated: shared by the images that hold it
    members: MemberSet
    table: Table
    view: list[RealView]
    moving: tuple[tuple[int, int], ...]  # (service id, real id) whose flows move
    vip: tuple[Address, int]  # (vip, family)
    vip_flags: int  # all-ports flag this service sets on its VIP


@dataclass
class Memo:
    """The parts of the last committed image and what they were made from.
    Never changed after it is made: a call builds a new one (the old one stays
    valid if the new image is not committed)."""

    image: Image | None = None  # the committed image it describes
    parts: dict[int, SvcPart] = field(default_factory=dict)  # id(service) -> part
    users: dict[Address, frozenset[int]] = field(default_factory=dict)  # real -> id(service)s
    local: dict[Address, bool] = field(default_factory=dict)  # real -> local (one per address)
    tokens: dict[Address, tuple[object, ...]] = field(default_factory=dict)
    by_key: dict[ServiceKey, int] = field(default_factory=dict)  # Service.key -> id(service)
    by_ident: dict[SvcIdent, int] = field(default_factory=dict)
    health: EffectiveMap = field(default_factory=dict)
    down: Mapping[SvcIdent, Set[Address]] = field(default_factory=dict)
    keep: frozenset[SvcIdent] = frozenset()
    # aggregates over the parts
    services: dict[SvcIdent, abi.SvcInfo] = field(default_factory=dict)
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # service id -> Maglev row
    views: dict[SvcIdent, list[RealView]] = field(default_factory=dict)
    fingerprints: dict[SvcIdent, str] = field(default_factory=dict)
    names: dict[SvcIdent, str] = field(default_factory=dict)
    moving: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)  # sid ->
    tables: dict[MemberSet, Table] = field(default_factory=dict)  # in use
    table_refs: dict[MemberSet, int] = field(default_factory=dict)  # services per table
    # (vip, family) -> {0: services-map entries, flag: services setting it}
    vip_refs: dict[tuple[Address, int], dict[int, int]] = field(default_factory=dict)


@dataclass
class Transaction:
    """An apply in progress: its writes and how to undo each one."""

    undo: list[Callable[[], None]] = field(default_factory=list)
    writes: int = 0
    steps_done: list[str] = field(default_factory=list)
    release: list[Callable[[], None]] = field(default_factory=list)  # run when it ends

    def end(self) -> None:
        """Release what the undo steps needed (e.g. replaced programs' fds)."""
        for fn in self.release:
            try:
                fn()
            except OSError as exc:
                log.warning("releasing after an apply failed: %s", exc)
        self.release.clear()

    def rollback(self) -> list[str]:
        """Undo every write, newest first; returns the undo steps that failed."""
        errors = []
        for step in reversed(self.undo):
            try:
                step()
            except Exception as exc:  # keep undoing the rest
                errors.append(str(exc))
                log.error("undo step failed: %s", exc)
        self.undo.clear()
        self.end()
        return errors


class ApplyError(Exception):
    """An apply failed and was rolled back; the message says how far it got."""

    def __init__(self, message: str, step: str, writes: int, clean: bool) -> None:
        super().__init__(message)
        self.step = step  # the step that failed
        self.writes = writes  # map writes made (and undone) before the failure
        self.clean = clean  # every write was undone


def svc_ident(svc: Service) -> SvcIdent:
    return (svc.vip, abi.PROTOCOLS[svc.protocol], svc.port_number)


def svc_idents(svc: Service) -> list[SvcIdent]:
    """Every services-map key of a service: one per port of a multi-port service."""
    proto = abi.PROTOCOLS[svc.protocol]
    return [(svc.vip, proto, port) for port in svc.port_numbers]


def svc_key(ident: SvcIdent) -> abi.SvcKey:
    return abi.svc_key(*ident)


def ident_of(key: abi.SvcKey) -> SvcIdent:
    return (key.vip.to_ip(key.family), int(key.proto), abi.port_host(key.port))


def inputs_of(
    config: Config,
    neighbours: Mapping[Address, Neighbour],
    down_hosts: Set[Address] = frozenset(),
) -> Inputs:
    """The cluster's part of the desired image: the other directors' MACs, as
    far as the neighbour table knows them (a later neighbour event fills in the
    rest), and the reals of every service that live on a host known to be gone
    (a dead peer director's own addresses: its flows move, no new ones go
    there)."""
    macs = []
    for a in peer_addresses(config):
        nb = neighbours.get(a)
        if nb is not None and nb.mac:
            macs.append(nb.mac)
    down: dict[SvcIdent, set[Address]] = {}
    if down_hosts:
        for svc in config.services:
            gone = {r.address for r in svc.reals if r.address in down_hosts}
            if gone:
                down[svc_ident(svc)] = gone
    return Inputs(peer_macs=macs, down=down)


def with_cluster(health: Inputs, cluster: Inputs) -> Inputs:
    """One Inputs from the health task's (weights, down reals, keep_flows) and
    the cluster's (peer MACs, reals on a dead host): a real is down if either
    says so. A service with a real on a dead host does not keep its down reals'
    flows (keep_flows is per service, and nothing can serve a dead host's)."""
    down: dict[SvcIdent, set[Address]] = {k: set(v) for k, v in health.down.items()}
    for k, v in cluster.down.items():
        down.setdefault(k, set()).update(v)
    return Inputs(
        peer_macs=cluster.peer_macs,
        health=health.health,
        down=down,
        keep_flows=frozenset(health.keep_flows) - set(cluster.down),
    )


def peer_addresses(config: Config) -> list[Address]:
    """The other directors' addresses (VIP frames from their MACs are never
    scheduled: they were scheduled already, by the director that sent them)."""
    if config.cluster is None:
        return []
    return [a for m in config.cluster.peers for a in m.addresses]
