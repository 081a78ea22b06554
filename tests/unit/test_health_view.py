"""The active's health view (cluster/health_view.py): what the active's inputs
make of it, what a follower makes of it after the wire, and that two
reconcilers whose own checks disagree build identical tables (equal Maglev
fingerprints) once one follows the other's view; reassembly of a view sent in
parts, and whose view a node follows in each role."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address

import pytest

from carom.bpf.loader import Dataplane, Limits
from carom.cluster import health_view as hv
from carom.cluster import wire
from carom.cluster.roles import State
from carom.cluster.service import maglev_digest
from carom.cluster.wire import Header, MsgType, ViewEntry, ViewState
from carom.config.load import parse_config
from carom.config.schema import Config
from carom.daemon.image import Effective, Inputs, with_cluster
from carom.daemon.reconcile import Reconciler
from carom.net.neighbours import Neighbour

VIP = ip_address("192.0.2.100")
R1, R2, R3 = (IPv4Address(f"192.0.2.1{i}") for i in (1, 2, 3))
WEB = (VIP, "tcp", 80)
DNS = (VIP, "udp", 53)


def config() -> Config:
    reals = "[" + ", ".join(f"{{address: {r}}}" for r in (R1, R2, R3)) + "]"
    return parse_config(
        "interfaces: [lo]\n"
        "limits: {max_services: 4, max_reals: 8, maglev_table_size: 251}\n"
        "services:\n"
        f"  - {{name: web, vip: {VIP}, port: 80, reals: {reals}}}\n"
        f"  - {{name: dns, vip: {VIP}, port: 53, protocol: udp, down_flows: keep, "
        f"reals: {reals}}}\n",
        "test.yaml",
    )


def active_inputs() -> Inputs:
    """The active's health: R2 down on web (flows move), R3 at 30% in slow
    start on web (the others scaled by 10), R1 drained on dns (flows kept)."""
    health = {
        (WEB, R1): Effective(10, "up", ""),
        (WEB, R2): Effective(0, "down", "down after: refused", reschedule=True),
        (WEB, R3): Effective(3, "slow-start", "30% of its weight"),
        (DNS, R1): Effective(0, "drained", "drained by hand"),
    }
    return Inputs(
        health=health,
        down={(VIP, 6, 80): {R2}},
        keep_flows=frozenset({(VIP, 17, 53)}),
    )


def test_view_of_the_active_inputs_and_back() -> None:
    cfg = config()
    entries = hv.view_of(cfg, active_inputs())
    assert [(e.port, str(e.real), e.weight, e.state.text, e.move) for e in entries] == [
        (80, str(R1), 10, "up", False),
        (80, str(R2), 0, "down", True),
        (80, str(R3), 3, "slow-start", False),
        (53, str(R1), 0, "drained", False),  # ordered by VIP, protocol, port, real
    ]
    # through the wire and back
    (part,) = wire.split_view(1, entries)
    got = wire.decode_view_part(wire.encode_view_part(part), len(part.entries)).entries
    followed = hv.inputs_of_view(cfg, got, "dir1")
    assert followed.unknown == 0
    inp = followed.inputs
    assert {k: (v.weight, v.state) for k, v in inp.health.items()} == {
        k: (v.weight, v.state) for k, v in active_inputs().health.items()
    }
    assert inp.down == {(VIP, 6, 80): {R2}}
    assert (VIP, 6, 80) not in inp.keep_flows  # web's down real's flows move


def test_a_dead_hosts_reals_are_in_the_view() -> None:
    """The cluster's own part (a peer host found gone) shapes the tables too."""
    cfg = config()
    combined = with_cluster(Inputs(), Inputs(down={(VIP, 17, 53): {R3}}))
    (e,) = hv.view_of(cfg, combined)
    assert (e.port, e.real, e.weight, e.state, e.move) == (53, R3, 0, ViewState.DOWN, True)


def test_entries_this_config_lacks_are_counted_not_applied() -> None:
    cfg = config()
    stray = [
        ViewEntry(VIP, 6, 80, ip_address("192.0.2.99"), 0, ViewState.DOWN),
        ViewEntry(VIP, 6, 8080, R1, 0, ViewState.DOWN),
        ViewEntry(VIP, 99, 80, R1, 0, ViewState.DOWN),
        ViewEntry(VIP, 6, 80, R1, 5, ViewState.UP),
    ]
    f = hv.inputs_of_view(cfg, stray, "dir1")
    assert f.unknown == 3 and list(f.inputs.health) == [(WEB, R1)] and not f.inputs.down


def test_disagreements_name_the_local_and_the_followed_state() -> None:
    cfg = config()
    own = {(WEB, R1): Effective(0, "down", "refused")}
    followed = {(WEB, R2): Effective(0, "down", "from dir1")}
    assert hv.disagreements(cfg, own, followed) == [
        {"service": "web", "real": str(R1), "local": "down", "tables": "up"},
        {"service": "web", "real": str(R2), "local": "up", "tables": "down"},
    ]


def test_reassembly_needs_every_part_of_one_generation() -> None:
    entries = [
        ViewEntry(VIP, 6, 80, IPv4Address(f"10.0.{i // 200}.{i % 200}"), i, ViewState.UP)
        for i in range(300)
    ]
    parts = wire.split_view(5, entries)
    assert len(parts) >= 3
    r = hv.Reassembly()
    assert r.add(1, 100, parts[0]) is None
    # a newer generation starts: the older one's parts are dropped
    newer = wire.split_view(6, entries)
    assert r.add(1, 100, newer[1]) is None
    for p in parts[1:]:
        assert r.add(1, 100, p) is None  # generation 5 can no longer complete
    got = None
    for p in [newer[0], *newer[2:]]:
        got = r.add(1, 100, p)
    assert got == entries
    # parts arriving out of order, and another sender in between
    r2 = hv.Reassembly()
    assert r2.add(2, 1, wire.split_view(1, [])[0]) == []
    for p in reversed(parts[1:]):
        assert r2.add(1, 100, p) is None
    assert r2.add(1, 100, parts[0]) == entries


def test_whose_view_drives_the_tables() -> None:
    f = hv.follows
    assert not f(State.BACKUP, False, 10.0, 0.0)  # nothing received: own checks
    for st in (State.STARTING, State.SYNCING, State.BACKUP, State.FAULT):
        assert f(st, True, 10.0, 0.0)
    assert not f(State.ACTIVE, True, 10.0, 0.0)
    assert f(State.ACTIVE, True, 10.0, 12.0)  # just took over: the hold
    assert not f(State.RESIGNING, True, 10.0, 0.0)


# --- two reconcilers: tables equal once one follows the other's view ---------------


@pytest.fixture
def dps() -> Iterator[tuple[Dataplane, Dataplane]]:
    lim = Limits(
        max_services=4,
        max_reals=8,
        maglev_table_size=251,
        conn_table_size=1024,
        persist_table_size=1024,
    )
    a, b = Dataplane.load(lim), Dataplane.load(lim)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.root
def test_follower_builds_the_active_tables_although_its_checks_disagree(
    dps: tuple[Dataplane, Dataplane],
) -> None:
    cfg = config()
    nb = {
        r: Neighbour(r, "lo", bytes([2, 0, 0, 0, 0, r.packed[-1]]), "reachable", ifindex=1)
        for r in (R1, R2, R3)
    }
    active, backup = Reconciler(dps[0]), Reconciler(dps[1])
    mine = active_inputs()
    active.apply(active.desired(cfg, nb, mine))
    # the backup's own checks: every real up (R2 answers it, not the active)
    backup.apply(backup.desired(cfg, nb, Inputs()))
    assert maglev_digest(active) != maglev_digest(backup)
    # the active's view, over the wire (sealed, opened), followed by the backup
    parts = wire.split_view(1, hv.view_of(cfg, with_cluster(mine, Inputs())))
    key = b"k" * 32
    r = hv.Reassembly()
    got = None
    for n, p in enumerate(parts):
        dgram = wire.seal(
            key, Header(MsgType.HEALTH_VIEW, 1, 1, n + 1, len(p.entries)), wire.encode_view_part(p)
        )
        h, payload = wire.open_datagram(key, dgram)
        got = r.add(h.sender, h.epoch, wire.decode_view_part(payload, h.count))
    assert got is not None
    followed = hv.inputs_of_view(cfg, got, "dir1").inputs
    backup.apply(backup.desired(cfg, nb, followed))
    assert maglev_digest(active) == maglev_digest(backup)
    want = backup.desired(cfg, nb, followed)
    web = next(v for k, v in want.service_views.items() if k[2] == 80)
    assert [(v.address, v.state) for v in web] == [
        (str(R1), "up"),
        (str(R2), "down"),
        (str(R3), "slow-start"),
    ]
