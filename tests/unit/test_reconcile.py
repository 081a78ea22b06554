"""The reconciler against real (unpinned, unattached) BPF maps: shared tables,
incremental rebuilds and writes, a MAC change touching one entry, ids held by
live connections, and rollback after a failure at every apply step."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from carom import abi
from carom.bpf.loader import Dataplane, Limits
from carom.config.load import parse_config
from carom.config.schema import Config
from carom.daemon.image import STEPS, ApplyError, Inputs, ReconcileError, real_key
from carom.daemon.reconcile import Reconciler
from carom.net.neighbours import Neighbour
from carom.sched import maglev

pytestmark = [pytest.mark.root]

SIZE = 251  # a small prime keeps the maps small
Nb = dict[abi.IPAddress, Neighbour]


@pytest.fixture
def dp() -> Iterator[Dataplane]:
    d = Dataplane.load(
        Limits(
            max_services=16,
            max_reals=6,
            maglev_table_size=SIZE,
            conn_table_size=1024,
            persist_table_size=1024,
        )
    )
    try:
        yield d
    finally:
        d.close()


def config(services: list[list[str]], tcp_idle: int = 900) -> Config:
    lines = [
        "interfaces: [lo]",
        f"limits: {{max_services: 16, max_reals: 6, maglev_table_size: {SIZE}}}",
        f"timeouts: {{tcp_idle: {tcp_idle}}}",
        "services:",
    ]
    for i, reals in enumerate(services):
        lines += ["  - vip: 192.0.2.100", f"    port: {1000 + i}", "    reals:"]
        lines += [f"      - address: {a}" for a in reals]
    return parse_config("\n".join(lines) + "\n", "test.yaml")


def neighbours(cfg: Config, macs: dict[str, bytes] | None = None) -> Nb:
    out: Nb = {}
    for svc in cfg.services:
        for r in svc.reals:
            mac = (macs or {}).get(str(r.address), bytes([2, 0, 0, 0, 0, r.address.packed[-1]]))
            out[r.address] = Neighbour(r.address, "lo", mac, "reachable", ifindex=1)
    return out


def snapshot(dp: Dataplane) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: sorted(
            (bytes(k) if not isinstance(k, int) else k, bytes(v) if not isinstance(v, int) else v)
            for k, v in dp[name].items()
        )
        for name in ("services", "reals", "real_macs", "vip_addrs", "node_cfg", "real_down")
    }
    raw = dp["maglev"].read_range(0, 16 * SIZE)
    out["maglev"] = hashlib.blake2b(raw, digest_size=8).hexdigest()
    return out


A = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_identical_sets_share_one_table_built_once(dp: Dataplane) -> None:
    rec = Reconciler(dp)
    cfg = config([A, A, list(reversed(A)), A[:2]])
    want = rec.desired(cfg, neighbours(cfg))
    assert want.built == 2  # {A} and {A[:2]}: order in the config does not matter
    rows = [want.image.rows[int(i.id)] for i in want.image.services.values()]
    assert rows[0] is rows[1] is rows[2] and rows[3] is not rows[0]
    # the shared table is the one maglev builds for that set, byte for byte
    members = {
        real_key(ipaddress.ip_address(a)): (want.real_ids[ipaddress.ip_address(a)], 1) for a in A
    }
    assert np.array_equal(rows[0], maglev.build_ids(members, SIZE))
    rec.apply(want)
    again = rec.desired(cfg, neighbours(cfg))
    assert again.built == 0 and rec.apply(again) == 0


def test_one_real_changed_rebuilds_and_writes_only_that_service(dp: Dataplane) -> None:
    rec = Reconciler(dp)
    cfg = config([A, A, ["10.0.0.1", "10.0.0.4"]])
    rec.apply(rec.desired(cfg, neighbours(cfg)))
    before = {
        i: dp["maglev"].read_range(int(s.id) * SIZE, SIZE) for i, s in rec.current.services.items()
    }
    new = config([A, ["10.0.0.1", "10.0.0.2", "10.0.0.5"], ["10.0.0.1", "10.0.0.4"]])
    want = rec.desired(new, neighbours(new))
    assert want.built == 1
    writes = rec.apply(want)
    after = {
        i: dp["maglev"].read_range(int(s.id) * SIZE, SIZE) for i, s in rec.current.services.items()
    }
    changed = [i for i in before if before[i] != after[i]]
    assert [i[2] for i in changed] == [1001]
    slots = int(
        np.count_nonzero(
            np.frombuffer(before[changed[0]], np.uint32)
            != np.frombuffer(after[changed[0]], np.uint32)
        )
    )
    # the slot diff, one new reals entry and its MAC: nothing else
    assert writes == slots + 2
    assert slots <= 2 * SIZE / 3 + 2  # within 2x of the replaced real's share


def test_peer_macs_reach_node_cfg_in_one_write(dp: Dataplane) -> None:
    """The cluster's peer directors are an input of the desired image: written into
    node_cfg (the last step of an apply), changed with one write, refused whole
    when the data plane cannot hold them."""
    rec = Reconciler(dp)
    cfg = config([A])
    rec.apply(rec.desired(cfg, neighbours(cfg)))
    assert dp["node_cfg"].lookup(0).peer_mac_list() == []
    peers = Inputs(peer_macs=["02:ca:00:00:00:02", bytes.fromhex("02ca00000003")])
    assert rec.apply(rec.desired(cfg, neighbours(cfg), peers)) == 1
    node = dp["node_cfg"].lookup(0)
    assert node.peer_mac_list() == [bytes.fromhex("02ca00000002"), bytes.fromhex("02ca00000003")]
    assert int(node.maglev_size) == SIZE  # the rest of node_cfg as the config says
    assert rec.apply(rec.desired(cfg, neighbours(cfg), peers)) == 0
    before = snapshot(dp)
    five = Inputs(peer_macs=[f"02:ca:00:00:00:{i:02x}" for i in range(5)])
    with pytest.raises(ReconcileError, match=r"5 peer director MACs .* at most 4"):
        rec.desired(cfg, neighbours(cfg), five)
    with pytest.raises(ReconcileError, match="peer director MAC 'zz' is not a MAC address"):
        rec.desired(cfg, neighbours(cfg), Inputs(peer_macs=["zz"]))
    assert snapshot(dp) == before
    # back to a lone director: the list is emptied
    assert rec.apply(rec.desired(cfg, neighbours(cfg))) == 1
    assert dp["node_cfg"].lookup(0).peer_mac_list() == []


def _flow_to_vip(port: int, sport: int = 40000) -> tuple[bytes, abi.FlowKey]:
    """A TCP ACK from a client to 192.0.2.100:port, addressed to MAC 02:ca::1, and its key."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    frame = bytes(
        Ether(src="02:ca:00:00:00:fe", dst="02:ca:00:00:00:01")
        / IP(src="198.51.100.10", dst="192.0.2.100")
        / TCP(sport=sport, dport=port, flags="A")
    )
    key = abi.FlowKey(
        src=abi.Addr.of(ipaddress.ip_address("198.51.100.10")),
        dst=abi.Addr.of(ipaddress.ip_address("192.0.2.100")),
        sport=abi.port_be(sport),
        dport=abi.port_be(port),
        proto=6,
        family=4,
    )
    return frame, key


def test_down_reals_leave_the_table_and_their_flows_move(dp: Dataplane) -> None:
    """Inputs.down: the real leaves the service's Maglev row; unless the service
    keeps flows, its real_down bit and the service flag are set, and the kernel
    then re-points a connection entry to it at the next packet. Per service: the
    same real down for one service keeps serving another."""
    from carom.bpf import libbpf

    rec = Reconciler(dp)
    cfg = config([A, A])  # ports 1000 and 1001, same reals
    rec.apply(rec.desired(cfg, neighbours(cfg)))
    web, other = (
        (ipaddress.ip_address("192.0.2.100"), 6, 1000),
        (
            ipaddress.ip_address("192.0.2.100"),
            6,
            1001,
        ),
    )
    dead = ipaddress.ip_address("10.0.0.2")
    rid = rec.real_ids[dead]
    want = rec.desired(cfg, neighbours(cfg), Inputs(down={web: {dead}}))
    rec.apply(want)
    sid, oid = int(rec.current.services[web].id), int(rec.current.services[other].id)
    rows = {
        i: np.frombuffer(dp["maglev"].read_range(i * SIZE, SIZE), dtype=np.uint32)
        for i in (sid, oid)
    }
    assert rid not in rows[sid] and rid in rows[oid]
    assert int(dp["services"].lookup(abi.svc_key(*web)).flags) & abi.SvcFlags.REAL_DOWN
    assert not int(dp["services"].lookup(abi.svc_key(*other)).flags) & abi.SvcFlags.REAL_DOWN
    words = abi.real_down_words(6)
    assert int(dp["node_cfg"].lookup(0).real_down_words) == words
    assert {i: w for i, w in dp["real_down"].items() if w} == {sid * words: 1 << rid}
    assert [v.state for v in want.service_views[web] if v.address == str(dead)] == ["down"]

    # the kernel: flows of both services on the dead real; only web's move
    dp["lease"].update(0, time.monotonic_ns() + 60 * 10**9)
    dp["if_macs"].update(1, abi.IfMac.of(bytes.fromhex("02ca00000001")))
    now = time.monotonic_ns()
    flows = {port: _flow_to_vip(port) for port in (1000, 1001)}
    for _, key in flows.values():
        dp["conn_table"].update(key, abi.ConnVal(real_id=rid, ttl=64, last_seen_ns=now))
    for frame, _ in flows.values():
        assert libbpf.prog_test_run(dp.prog_fd, frame)[0] == abi.Verdict.TX
    assert int(dp["conn_table"].lookup(flows[1000][1]).real_id) not in (0, rid)
    assert int(dp["conn_table"].lookup(flows[1001][1]).real_id) == rid
    assert dp["stats"].sum(int(abi.Counter.CONN_REAL_DOWN)) == 1

    # keep_flows: out of the table, no bit, no flag
    rec.apply(rec.desired(cfg, neighbours(cfg), Inputs(down={web: {dead}}, keep_flows={web})))
    assert not any(w for _, w in dp["real_down"].items())
    assert not int(dp["services"].lookup(abi.svc_key(*web)).flags) & abi.SvcFlags.REAL_DOWN
    assert rid not in np.frombuffer(dp["maglev"].read_range(sid * SIZE, SIZE), dtype=np.uint32)
    # back up: in the table again, nothing flagged; an adopting reconciler agrees
    rec.apply(rec.desired(cfg, neighbours(cfg)))
    assert rid in np.frombuffer(dp["maglev"].read_range(sid * SIZE, SIZE), dtype=np.uint32)
    rec.apply(rec.desired(cfg, neighbours(cfg), Inputs(down={web: {dead}})))
    again = Reconciler(dp)
    again.adopt()
    assert again.current.real_down == rec.current.real_down != {}


def test_mac_change_touches_the_reals_entry_only(dp: Dataplane) -> None:
    rec = Reconciler(dp)
    cfg = config([A, A])
    rec.apply(rec.desired(cfg, neighbours(cfg)))
    want = rec.desired(cfg, neighbours(cfg, {"10.0.0.2": bytes.fromhex("02aabbccddee")}))
    assert want.built == 0
    assert rec.apply(want) == 3  # reals entry, new real_macs entry, old one removed
    rid = rec.real_ids[ipaddress.ip_address("10.0.0.2")]
    assert bytes(dp["reals"].lookup(rid).mac) == bytes.fromhex("02aabbccddee")


def _conn(dp: Dataplane, rid: int, age_s: float) -> None:
    key = abi.FlowKey()
    key.sport = rid
    key.proto = 6
    val = abi.ConnVal(real_id=rid, last_seen_ns=time.monotonic_ns() - int(age_s * 1e9))
    dp["conn_table"].update(key, val)


def test_draining_id_held_while_a_connection_may_point_to_it(dp: Dataplane) -> None:
    rec = Reconciler(dp)
    five = [f"10.0.0.{i}" for i in range(1, 6)]  # ids 1..5: all of them
    cfg = config([five], tcp_idle=30)
    rec.apply(rec.desired(cfg, neighbours(cfg)))
    gone = rec.real_ids[ipaddress.ip_address("10.0.0.5")]
    _conn(dp, gone, age_s=5)  # a live flow on the real that leaves
    swapped = config([[*five[:4], "10.0.0.9"]], tcp_idle=30)
    with pytest.raises(ReconcileError, match=r"no free real id.*10\.0\.0\.5"):
        rec.desired(swapped, neighbours(swapped))
    assert rec.real_ids[ipaddress.ip_address("10.0.0.5")] == gone  # nothing changed
    # the flow went idle past tcp_idle: the id is free for the newcomer
    _conn(dp, gone, age_s=40)
    want = rec.desired(swapped, neighbours(swapped))
    assert want.real_ids[ipaddress.ip_address("10.0.0.9")] == gone
    assert want.released == ["10.0.0.5"]
    rec.apply(want)
    # a re-added real never takes a draining real's id: 10.0.0.4 leaves, 10.0.0.5
    # returns, and with a live flow on 10.0.0.4 there is no id for it
    _conn(dp, rec.real_ids[ipaddress.ip_address("10.0.0.4")], age_s=1)
    back = config([[*five[:3], "10.0.0.9", "10.0.0.5"]], tcp_idle=30)
    with pytest.raises(ReconcileError, match=r"10\.0\.0\.4"):
        rec.desired(back, neighbours(back))


@pytest.mark.parametrize("step", STEPS)
def test_failure_after_any_step_restores_the_maps(dp: Dataplane, step: str) -> None:
    rec = Reconciler(dp)
    cfg = config([A, ["10.0.0.1", "10.0.0.4"], ["10.0.0.2"]])
    rec.apply(rec.desired(cfg, neighbours(cfg)))
    before, image = snapshot(dp), rec.current

    def fail(name: str) -> None:
        if name == step:
            raise RuntimeError(f"injected after {name}")

    rec.fault = fail
    new = parse_config(
        "interfaces: [lo]\n"
        f"limits: {{max_services: 16, max_reals: 6, maglev_table_size: {SIZE}}}\n"
        "timeouts: {tcp_idle: 60}\n"
        "services:\n"
        "  - {vip: 192.0.2.101, port: 1000, reals: [{address: 10.0.0.5}, {address: 10.0.0.1}]}\n"
        "  - {vip: 192.0.2.100, port: 1000, reals: [{address: 10.0.0.1}, {address: 10.0.0.2}]}\n",
        "new.yaml",
    )
    # a real down (flows moving) too, so the real_down step writes
    down = Inputs(
        down={(ipaddress.ip_address("192.0.2.100"), 6, 1000): {ipaddress.ip_address("10.0.0.2")}}
    )
    with pytest.raises(ApplyError, match=f"injected after {step}") as err:
        rec.apply(rec.desired(new, neighbours(new), down))
    assert err.value.clean and err.value.step == step
    assert snapshot(dp) == before
    assert rec.current is image
    rec.fault = None
    assert rec.apply(rec.desired(new, neighbours(new), down)) > 0  # the same change applies
    assert any(w for _, w in dp["real_down"].items())
    assert snapshot(dp) != before
