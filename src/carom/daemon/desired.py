"""The desired image of the maps, recomputed only where an input changed.

A reload that changes one service of 4,096 (or a neighbour, health or override
change that touches a few reals) used to walk all 32k (service, real) pairs.
The image is now assembled from one `SvcPart` per service, and a part is a
pure function of:

- the service's config object (frozen; config/incremental.py hands back the
  same object for an unchanged `services:` item, and a full parse makes new
  ones, so an object seen before is the same service),
- its service id (a service keeps its id while it stays in the config),
- per real: its real id, its reals-map entry (MAC, flags), whether it is
  local, and its neighbour entry (the status text): one `token` per address,
- the health view of its reals (`Inputs.health`), its down reals
  (`Inputs.down`) and whether it keeps their flows (`Inputs.keep_flows`).

`Memo` keeps the parts of the last committed image and the indexes that map an
input back to the services it feeds (address -> services, service key ->
service). Each call recomputes the parts of new service objects and of the
services an input change reaches, and patches the aggregates (services map,
rows, views, VIP counts, tables in use) by taking out the old parts' shares
and adding the new ones. What is not per service is recomputed every time:
node_cfg, the reals entries (per address, not per pair), the VIPs and their
prefilter, real_down: O(addresses + VIPs), not O(services x reals).

With no memo (`full=True`, a first apply, after adopt()) every part is
computed: the same code, so the full and incremental images are equal
(tests/unit/test_desired_incremental.py compares them after random changes).
A memo describes one committed image: if the reconciler's current image is not
that one, it is not used."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from carom import abi
from carom.bpf.loader import Dataplane
from carom.config.schema import Config, Service, addr_key
from carom.daemon.image import (
    Address,
    Desired,
    Effective,
    Image,
    Inputs,
    Member,
    MemberSet,
    Memo,
    RealView,
    SvcPart,
    Table,
    real_info,
    real_key,
    svc_ident,
    svc_idents,
)
from carom.net.neighbours import Neighbour


class Reconciler(Protocol):
    """What build() reads of the reconciler (daemon/reconcile.py), which owns
    the ids, the table cache and the current image."""

    dp: Dataplane
    size: int
    current: Image
    memo: Memo | None
    role_override: abi.Role | None

    def _allocate_reals(
        self, config: Config, wanted: Collection[Address]
    ) -> tuple[dict[Address, int], list[str]]: ...

    def _alloc_service(self, used: set[int], limit: int, busy: Callable[[], set[int]]) -> int: ...

    def referenced_service_ids(self, config: Config) -> set[int]: ...

    def table(self, members: MemberSet, fresh: dict[MemberSet, Table]) -> tuple[Table, bool]: ...


_NONE: frozenset[Address] = frozenset()  # no down reals
_NO_ONE: frozenset[int] = frozenset()


def _astray(nb: Neighbour | None, interfaces: tuple[str, ...]) -> bool:
    """The real's route uses an interface carom is not attached to."""
    return nb is not None and nb.ifname is not None and nb.ifname not in interfaces


def build(
    rec: Reconciler,
    config: Config,
    neighbours: Mapping[Address, Neighbour],
    inputs: Inputs,
    full: bool = False,
) -> Desired:
    """Reconciler.desired(): the image `config` asks for with these inputs.
    Changes nothing of `rec`: ids and tables it allocates, and its memo, become
    the reconciler's own only through commit()."""
    memo = rec.memo
    if full or memo is None or memo.image is not rec.current:
        memo = Memo()
    effective = inputs.health
    img = Image()
    img.node = abi.NodeCfg(
        role=int(
            rec.role_override
            if rec.role_override is not None
            else abi.Role.ACTIVE
            if config.node.role == "active"
            else abi.Role.BACKUP
        ),
        flags=int(abi.CfgFlags.FRAG_PASS) if config.node.fragments == "pass" else 0,
        maglev_size=rec.size,
        tcp_idle_ns=config.timeouts.tcp_idle * 10**9,
        udp_idle_ns=config.timeouts.udp_idle * 10**9,
    )
    img.node.set_peer_macs(inputs.peer_mac_bytes())
    img.node.real_down_words = abi.real_down_words(rec.dp.limits.max_reals)

    # 1. Which service objects are new and which are gone; the indexes follow.
    now = {id(s): s for s in config.services}
    gone = [p for k, p in memo.parts.items() if k not in now]
    added = [s for s in config.services if id(s) not in memo.parts]
    users, local = dict(memo.users), dict(memo.local)
    by_key, by_ident = dict(memo.by_key), dict(memo.by_ident)
    for p in gone:
        me = id(p.svc)
        for r in p.svc.reals:
            left = users.get(r.address, _NO_ONE) - {me}
            if left:
                users[r.address] = left
            else:
                users.pop(r.address, None)
                local.pop(r.address, None)
        if by_key.get(p.svc.key) == me:
            del by_key[p.svc.key]
        if by_ident.get(p.ident) == me:
            del by_ident[p.ident]
    for s in added:
        me = id(s)
        for r in s.reals:
            users[r.address] = users.get(r.address, _NO_ONE) | {me}
            local[r.address] = r.local  # the same for every service (config rule)
        by_key[s.key] = me
        by_ident[svc_ident(s)] = me

    # 2. Real ids and reals entries, per address; an address whose entry (or
    # neighbour, which status shows) changed invalidates its services' parts.
    real_ids, released = rec._allocate_reals(config, users.keys())
    changed: set[int] = set()  # id(service) of parts to make again
    tokens: dict[Address, tuple[object, ...]] = {}
    for address, rid in real_ids.items():
        prev = rec.current.reals.get(rid)
        if address not in users:
            if prev is not None:  # draining: left the config, flows continue
                img.reals[rid] = prev
            continue
        is_local, nb = local[address], neighbours.get(address)
        mac = b"" if is_local else (nb.mac if nb and nb.mac else b"")
        # XDP_TX leaves by the interface a frame came in on: a real whose
        # route moved to another interface (after the start/reload check)
        # gets no new flows instead of a black hole; status says why
        astray = not is_local and _astray(nb, config.interfaces)
        if astray:
            mac = b""
        if (
            not astray
            and not is_local
            and not mac
            and prev is not None
            and bytes(prev.mac) != bytes(6)
            and nb is not None
            and nb.state in ("incomplete", "probing")
        ):
            mac = bytes(prev.mac)  # still resolving: keep the MAC we had
        info = real_info(address, mac, is_local, is_local or bool(mac))
        img.reals[rid] = info
        if mac and not is_local:
            img.real_macs[mac] = rid
        token = (rid, bytes(info), is_local, nb)
        tokens[address] = token
        if memo.tokens.get(address) != token:
            changed |= users[address]

    # 3. Health and down inputs: the services whose entries differ.
    for hk in effective.keys() | memo.health.keys():
        if effective.get(hk) != memo.health.get(hk):
            changed.add(by_key.get(hk[0], -1))
    for ident in inputs.down.keys() | memo.down.keys():
        if inputs.down.get(ident, _NONE) != memo.down.get(ident, _NONE):
            changed.add(by_ident.get(ident, -1))
    for ident in set(inputs.keep_flows) ^ memo.keep:
        changed.add(by_ident.get(ident, -1))

    redo = [s for s in config.services if id(s) in changed or id(s) not in memo.parts]
    old = gone + [memo.parts[id(s)] for s in redo if id(s) in memo.parts]

    # 4. Service ids. A part kept from the memo keeps its id (the current image
    # gives every key of that service that id, and no other service of a valid
    # config has one of its keys); the others take the id the maps hold for
    # any of their ports (the first no earlier service kept), then new ones the
    # lowest free id, in config order.
    redo_ids = {id(s) for s in redo}
    used = {p.sid for k, p in memo.parts.items() if k in now and k not in redo_ids}
    kept: dict[int, int] = {}  # id(service) -> kept id
    for s in redo:
        for ident in svc_idents(s):
            held = rec.current.services.get(ident)
            if held is not None and int(held.id) not in used:
                kept[id(s)] = int(held.id)
                used.add(int(held.id))
                break
    busy_ids: list[set[int]] = []

    def busy() -> set[int]:
        if not busy_ids:
            busy_ids.append(rec.referenced_service_ids(config))
        return busy_ids[0]

    # 5. The parts to make again.
    fresh: dict[MemberSet, Table] = {}
    built = 0
    # keyed by (addr_key, weight, effective): ipaddress objects hash through
    # hex(); many services share reals, so each (real, weight) is worked out once
    per_real: dict[tuple[int, int, Effective | None], tuple[Member | None, RealView]] = {}
    new_parts: list[SvcPart] = []
    for s in redo:
        sid = kept.get(id(s))
        if sid is None:
            sid = rec._alloc_service(used, rec.dp.limits.max_services, busy)
        used.add(sid)
        part, new_build = _part(
            rec, s, sid, real_ids, img, local, neighbours, inputs, per_real, fresh
        )
        built += new_build
        new_parts.append(part)

    # 6. Aggregates: the old parts' shares out, the new ones' in.
    parts = dict(memo.parts)
    services, rows = dict(memo.services), dict(memo.rows)
    views, fingerprints, names = dict(memo.views), dict(memo.fingerprints), dict(memo.names)
    moving, tables, table_refs = dict(memo.moving), dict(memo.tables), dict(memo.table_refs)
    vip_refs = {k: dict(v) for k, v in memo.vip_refs.items()}  # one per VIP: few
    for p in old:
        del parts[id(p.svc)]
        for each in p.idents:
            del services[each]
        del rows[p.sid]
        del views[p.ident], fingerprints[p.ident], names[p.ident]
        moving.pop(p.sid, None)
        n = table_refs[p.members] - 1
        if n:
            table_refs[p.members] = n
        else:
            del table_refs[p.members], tables[p.members]
        refs = vip_refs[p.vip]
        refs[0] -= len(p.idents)
        if p.vip_flags:
            refs[p.vip_flags] -= 1
        if not refs[0]:
            del vip_refs[p.vip]
    for p in new_parts:
        parts[id(p.svc)] = p
        for each in p.idents:
            services[each] = p.info
        rows[p.sid] = p.table.row
        views[p.ident], fingerprints[p.ident] = p.view, p.table.fingerprint
        names[p.ident] = p.svc.display_name
        if p.moving:
            moving[p.sid] = p.moving
        table_refs[p.members] = table_refs.get(p.members, 0) + 1
        tables[p.members] = p.table
        refs = vip_refs.setdefault(p.vip, {0: 0})
        refs[0] += len(p.idents)
        if p.vip_flags:
            refs[p.vip_flags] = refs.get(p.vip_flags, 0) + 1

    img.services = services
    img.rows = dict(rows)  # commit() adds the rows of removed services to the image's
    for vip, refs in vip_refs.items():
        flags = 0
        for flag, count in refs.items():
            if flag and count:
                flags |= flag
        img.vips[vip] = abi.VipInfo(services=refs[0], flags=flags)
    img.vip_filter = abi.vip_filter_words(vip for vip, _ in img.vips)
    img.real_down = abi.real_down_bits(
        (pair for pairs in moving.values() for pair in pairs), int(img.node.real_down_words)
    )
    draining = [str(a) for a, rid in real_ids.items() if a not in users and rid in img.reals]
    want = Desired(img, views, fingerprints, names, draining, real_ids, tables, built, released)
    want.memo = Memo(
        img,
        parts,
        users,
        local,
        tokens,
        by_key,
        by_ident,
        # copies: the memo must not change with a caller's (mutable) inputs
        dict(effective),
        {k: frozenset(v) for k, v in inputs.down.items()},
        frozenset(inputs.keep_flows),
        services,
        rows,
        views,
        fingerprints,
        names,
        moving,
        tables,
        table_refs,
        vip_refs,
    )
    return want


def _part(
    rec: Reconciler,
    svc: Service,
    sid: int,
    real_ids: Mapping[Address, int],
    img: Image,
    local: Mapping[Address, bool],
    neighbours: Mapping[Address, Neighbour],
    inputs: Inputs,
    per_real: dict[tuple[int, int, Effective | None], tuple[Member | None, RealView]],
    fresh: dict[MemberSet, Table],
) -> tuple[SvcPart, bool]:
    """One service's part, and whether its table was built for it."""
    effective = inputs.health
    ident = svc_ident(svc)
    down = inputs.down.get(ident, _NONE)
    moves = bool(down) and ident not in inputs.keep_flows
    info = abi.SvcInfo(
        id=sid,
        flags=(int(abi.SvcFlags.PERSIST) if svc.persistence_timeout else 0)
        | (int(abi.SvcFlags.REAL_DOWN) if moves else 0),
        persist_timeout_s=svc.persistence_timeout,
    )
    # a multi-port service: one entry per port, all with the same id (one
    # Maglev row, and persistence keyed by that id spans its ports)
    idents = tuple(svc_idents(svc)) if svc.ports else (ident,)
    members: list[Member] = []
    view: list[RealView] = []
    moving: list[tuple[int, int]] = []
    for r in svc.reals:
        eff = effective.get((svc.key, r.address)) if effective else None
        if down and r.address in down:  # (an empty set still hashes it)
            rid = real_ids[r.address]
            keep = ident in inputs.keep_flows
            if not keep:
                moving.append((sid, rid))
            why = "its flows are kept" if keep else "its flows move to live reals"
            shown = None if r.local else abi.mac_str(bytes(img.reals[rid].mac))
            view.append(
                RealView(
                    str(r.address),
                    rid,
                    0,  # out of the Maglev row: no new flows
                    r.local,
                    shown,
                    "down",
                    f"{eff.detail}; {why}" if eff else f"down: no new flows, {why}",
                )
            )
            continue
        pkey = (addr_key(r.address), r.weight, eff)
        per = per_real.get(pkey)
        if per is None:
            per = per_real[pkey] = _real_view(
                r.address, r.weight, local[r.address], real_ids, img, neighbours, eff
            )
        if per[0] is not None:
            members.append(per[0])
        view.append(per[1])
    key = tuple(sorted(members))
    table, new_build = rec.table(key, fresh)
    vip = (svc.vip, int(abi.family_of(svc.vip)))
    flags = int(abi.all_ports_flag(abi.PROTOCOLS[svc.protocol])) if svc.port_number == 0 else 0
    part = SvcPart(svc, ident, idents, sid, info, key, table, view, tuple(moving), vip, flags)
    return part, new_build


def _real_view(
    address: Address,
    weight: int,
    local: bool,
    real_ids: Mapping[Address, int],
    img: Image,
    neighbours: Mapping[Address, Neighbour],
    eff: Effective | None = None,
) -> tuple[Member | None, RealView]:
    """A real's Maglev member (None: no slots) and its status view."""
    rid = real_ids[address]
    rinfo = img.reals[rid]
    usable = not int(rinfo.flags) & int(abi.RealFlags.UNUSABLE)
    nb = neighbours.get(address)
    if eff is not None:
        weight = eff.weight
    if eff is not None and eff.state != "up" and (usable or local):
        state, detail = eff.state, eff.detail
    elif local:
        state, detail = "local", "served by this node's own stack"
    elif not usable:
        state = "unresolved"
        detail = nb.detail if nb else "not resolved yet"
        if nb is not None and nb.ifname is not None and nb.mac is not None:
            # resolved yet unusable: only a real astray (see desired) is that
            detail = (
                f"reached through {nb.ifname}, an interface carom is not attached to: "
                "XDP_TX cannot send there (check the route to this real)"
            )
    elif weight == 0:
        state, detail = "drained", "weight 0: no new connections"
    else:
        state, detail = "up", nb.state if nb else ""
    member = (real_key(address), rid, weight) if usable and weight > 0 else None
    shown = None if local or not usable else abi.mac_str(bytes(rinfo.mac))
    return member, RealView(str(address), rid, weight, local, shown, state, detail)
