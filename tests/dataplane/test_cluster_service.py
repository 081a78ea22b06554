"""Two cluster services on loopback, each with a real (loaded, not attached)
data plane and a real reconciler: election, bulk resync into the real
conn_table, the live stream, the fingerprint alarm, switchover and takeover,
and node_cfg.role following the role. The lab suite (tests/integration/
test_failover.py) does the same with traffic; this one pins down the protocol
without namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from carom import abi
from carom.bpf.loader import Dataplane
from carom.cluster import health_view, source, sync
from carom.cluster.roles import State
from carom.cluster.service import GRACE_S, ClusterService, maglev_digest
from carom.cluster.wire import ConnRecord, Op
from carom.config.cluster import Cluster
from carom.config.limits import Limits
from carom.config.schema import Config
from carom.daemon import explain
from carom.daemon.image import Effective, Inputs
from carom.daemon.reconcile import Reconciler

pytestmark = pytest.mark.root

ip = ipaddress.ip_address
VIP = "192.0.2.100"
REALS = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
ADDR = {"a": "127.0.0.1", "b": "127.0.0.2"}


class Owner:
    """The ownership task's switches (it needs raw sockets on a real link): the
    lease is written as the real one writes it, the rest is recorded."""

    def __init__(self, dp: Dataplane) -> None:
        self.dp = dp
        self.active = False
        self.announcing = True
        self.announced = 0
        self.links: list[object] = []

    def set_active(self, active: bool) -> None:
        self.active = active
        self.dp["lease"].update(0, time.monotonic_ns() + 60 * 10**9 if active else 0)

    def vips(self) -> list[object]:
        return [ip(VIP)]

    def announce_now(self) -> None:
        self.announced += 1


class Host:
    def __init__(self, reals: list[str]) -> None:
        self.dp = Dataplane.load(
            Limits(
                max_services=4,
                max_reals=16,
                maglev_table_size=13,
                conn_table_size=4096,
                persist_table_size=1024,
                max_vips=4,
            )
        )
        self.config = Config.model_validate(
            {
                "interfaces": ["lo"],
                "limits": {
                    "max_services": 4,
                    "max_reals": 16,
                    "maglev_table_size": 13,
                    "conn_table_size": 4096,
                    "persist_table_size": 1024,
                    "max_vips": 4,
                },
                "services": [
                    {
                        "vip": VIP,
                        "port": 80,
                        "reals": [{"address": a, "local": True} for a in reals],
                    }
                ],
            }
        )
        self.rec = Reconciler(self.dp)
        self.owner = Owner(self.dp)
        self.cluster: ClusterService | None = None  # set: applies go through it, as the daemon's
        self.own = Inputs()  # this node's own health checks' inputs

    def apply(self) -> None:
        c = self.cluster
        inputs = self.own if c is None else c.health_inputs(self.config, self.own)
        self.rec.apply(self.rec.desired(self.config, {}, inputs))
        if c is not None:
            c.tables_applied(self.config, inputs, maglev_digest(self.rec))

    async def reapply(self) -> None:
        self.apply()

    def role(self) -> int:
        return int(self.dp["node_cfg"].lookup(0).role)


def _cluster(tmp: Path, node: str, port: int, preempt: bool = False) -> Cluster:
    key = tmp / "key"
    if not key.exists():
        key.write_bytes(os.urandom(32).hex().encode())
        key.chmod(0o600)
    return Cluster.model_validate(
        {
            "node": node,
            "key_file": str(key),
            "port": port,
            "heartbeat_ms": 50,
            "dead_after": 4,
            "preempt": preempt,
            "members": [
                {"name": "a", "id": 1, "priority": 200, "addresses": [ADDR["a"]]},
                {"name": "b", "id": 2, "priority": 100, "addresses": [ADDR["b"]]},
            ],
        }
    )


def _node(tmp: Path, name: str, port: int, reals: list[str] = REALS) -> tuple[Host, ClusterService]:
    host = Host(reals)
    svc = ClusterService.attach(host, _cluster(tmp, name, port))
    assert svc is not None
    host.apply()
    # a cluster node starts as a backup that knows no active director yet: it holds
    # frames of flows it cannot place instead of passing them to its stack (hold.h)
    assert host.role() == abi.Role.UNDECIDED
    svc.config_changed()
    return host, svc


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


def _seed(host: Host, n: int) -> list[abi.FlowKey]:
    """n local (not synced) entries, as the data plane would have made them."""
    ids = host.rec.real_ids
    keys = []
    for i in range(n):
        rec = ConnRecord(
            Op.UPSERT, 6, ip(f"198.51.100.{i % 200 + 1}"), ip(VIP), 20000 + i, 80, ip(REALS[0])
        )
        key = sync.key_of(rec)
        host.dp["conn_table"].update(
            key,
            abi.ConnVal(real_id=ids[ip(REALS[i % 3])], last_seen_ns=time.monotonic_ns()),
        )
        keys.append(key)
    return keys


@pytest.fixture
def port() -> int:
    return random.randrange(30000, 60000)


def test_join_resync_stream_switchover_takeover(tmp_path: Path, port: int) -> None:
    async def scenario() -> None:
        a_host, a = _node(tmp_path, "a", port)
        b_host, b = _node(tmp_path, "b", port)
        seeded = _seed(a_host, 1000)
        ta = asyncio.create_task(a.run())
        await _until(lambda: a.node.machine.state is State.ACTIVE, 3, "a active")
        assert a_host.role() == abi.Role.ACTIVE and a_host.owner.active

        tb = asyncio.create_task(b.run())
        await _until(lambda: b.node.machine.state is State.BACKUP, 5, "b synced and backup")
        states = [(t.old, t.new) for t in b.node.machine.history]
        assert states[0] == (State.STARTING, State.SYNCING)  # pulled before anything else
        assert b.progress.records == 1000 and b.progress.state == "done"
        got = b_host.dp["conn_table"]
        for k in seeded[:50]:
            v = got.lookup(k)
            assert v is not None and v.flags & abi.ConnFlags.SYNCED
            # the same real, by address, under b's own id
            want = a_host.rec.current.reals[a_host.dp["conn_table"].lookup(k).real_id].addr
            assert b_host.rec.current.reals[v.real_id].addr == want
        # b heard a active: a plain BACKUP now, whose stack gets what a sends it
        assert b_host.role() == abi.Role.BACKUP and not b_host.owner.active
        assert a.status()["fingerprints_agree"] and b.status()["fingerprints_agree"]

        # live stream: an entry the active's data plane reports reaches b at once
        new = _seed(a_host, 1)[0]
        rid = a_host.rec.real_ids[ip(REALS[1])]
        a._queue_events([source.Event(source.KIND_NEW, new, rid)])
        lag = await _until(lambda: got.lookup(new) is not None, 1, "streamed entry at b")
        assert lag < 0.1
        assert b.gaps.gaps == 0 and not b.node.dropped

        # explain tells a synced entry from a local one (b's role must be active to
        # look at the entry: checked after the switchover below)
        client = f"198.51.100.{0 % 200 + 1}:20000"
        e = explain.explain(a_host.dp, client, f"{VIP}:80/tcp", False, {})
        assert "created by this node" in explain.render(e, client, VIP), e

        # planned switchover: a resigns, b takes over, a stands down after the grace
        assert b.switchover()["ok"] is False  # only the active can hand over
        assert a.switchover()["ok"] is True
        await _until(lambda: b.node.machine.state is State.ACTIVE, 2, "b active")
        await _until(lambda: a.node.machine.state is State.BACKUP, 2, "a backup")
        assert a_host.role() == abi.Role.ACTIVE  # still forwarding during the grace
        await asyncio.sleep(GRACE_S + 0.1)
        assert a_host.role() == abi.Role.BACKUP and b_host.role() == abi.Role.ACTIVE
        e = explain.explain(b_host.dp, client, f"{VIP}:80/tcp", False, {})
        assert "synced from a peer director" in explain.render(e, client, VIP), e
        await asyncio.sleep(0.5)
        assert a.node.machine.state is State.BACKUP  # no preempting straight back

        # the active dies: a takes over within dead_after intervals (+1 tick)
        tb.cancel()
        t0 = time.monotonic()
        await _until(lambda: a.node.machine.state is State.ACTIVE, 2, "a takes over")
        assert time.monotonic() - t0 < 4 * 0.05 + 0.15
        assert a_host.role() == abi.Role.ACTIVE and a_host.owner.active
        ta.cancel()
        for task in (ta, tb):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_fingerprint_mismatch_alarms_within_a_second_and_blocks_ready(
    tmp_path: Path, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        _, a = _node(tmp_path, "a", port)
        _, b = _node(tmp_path, "b", port, reals=[*REALS, "192.0.2.14"])
        ta = asyncio.create_task(a.run())
        await _until(lambda: a.node.machine.state is State.ACTIVE, 3, "a active")
        tb = asyncio.create_task(b.run())
        t0 = time.monotonic()
        await _until(lambda: 2 in a.node.mismatch, 1.0, "a sees b's tables differ")
        assert time.monotonic() - t0 < 1.0
        await _until(lambda: b.node.machine.state is State.BACKUP, 5, "b backup")
        assert not b.status()["fingerprints_agree"]
        assert not b.node.heartbeat().ready  # b cannot be elected
        assert any("Maglev tables differ" in r.message for r in caplog.records)
        # a dead peer's tables no longer matter: b takes over rather than leave
        # the VIP without a director
        ta.cancel()
        await _until(lambda: b.node.machine.state is State.ACTIVE, 2, "b takes over")
        tb.cancel()
        for task in (ta, tb):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_backup_follows_the_active_health_view_and_keeps_it_at_takeover(
    tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The active's health view over the real cluster channel: the backup's
    tables follow it although its own checks disagree; at a takeover it keeps
    the view for TAKEOVER_HOLD_S, then its own checks drive its tables."""
    monkeypatch.setattr(health_view, "TAKEOVER_HOLD_S", 0.5)
    down = ip(REALS[0])
    skey = (ip(VIP), "tcp", 80)

    async def scenario() -> None:
        (a_host, a), (b_host, b) = _node(tmp_path, "a", port), _node(tmp_path, "b", port)
        a_host.cluster, b_host.cluster = a, b
        ta = asyncio.create_task(a.run())
        await _until(lambda: a.node.machine.state is State.ACTIVE, 3, "a active")
        tb = asyncio.create_task(b.run())
        await _until(lambda: b.node.machine.state is State.BACKUP, 5, "b backup")
        same = a.digest
        # a's checks find REALS[0] down; b's own checks see every real up
        a_host.own = Inputs(
            health={(skey, down): Effective(0, "down", "refused")},
            down={(ip(VIP), 6, 80): {down}},
        )
        a_host.apply()
        assert a.digest != same
        lag = await _until(lambda: b.digest == a.digest, 1, "b's tables follow a's view")
        assert lag < 0.2
        v = b.view_status(b_host.config)
        assert v["tables_from"] == "following" and v["peer"] == "a" and v["entries"] == 1
        assert (
            v["disagree"]
            == [{"service": f"{VIP}:80/tcp", "real": str(down), "local": "up", "tables": "down"}]
            or v["disagree"][0]["local"] == "up"
        ), v
        assert a.status()["fingerprints_agree"] and b.status()["fingerprints_agree"]
        # the active dies: b takes over with a's view (no table change), then its own
        followed = b.digest
        ta.cancel()
        await _until(lambda: b.node.machine.state is State.ACTIVE, 2, "b takes over")
        assert b.digest == followed
        assert b.view_status(b_host.config)["tables_from"] == "inherited at takeover"
        await _until(lambda: b.digest == same, 2, "b's own checks drive its tables")
        assert b.view_status(b_host.config)["tables_from"] == "own checks"
        tb.cancel()
        for task in (ta, tb):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
