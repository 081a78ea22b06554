"""The incremental desired image (daemon/desired.py) against the full rebuild.

Random configs go through the daemon's own loader (config/incremental.py: an
unchanged `services:` item is the same object), with random single changes to
every input of a service's part: its config, a real's neighbour entry (MAC,
state, interface), health weights and states, down reals and keep_flows, real
ids (draining reals, ids freed for new ones), the order of the services, an
image read back from the maps (adopt) and applies that fail or never happen. After
each change the image the reconciler works out from its memo must equal, byte
for byte on everything it writes to the maps (and in what status shows), the
one it works out from scratch from the same state; then it is applied to real
maps, and the maps must hold what the image says."""

from __future__ import annotations

import ctypes
import ipaddress
import random
from collections.abc import Iterator
from typing import Any

import pytest

from carom import abi
from carom.bpf.loader import Dataplane, Limits
from carom.config.incremental import ConfigCache
from carom.config.load import ConfigError, parse_config
from carom.config.schema import Config
from carom.daemon.image import ApplyError, Desired, Effective, Inputs, ReconcileError, SvcIdent
from carom.daemon.reconcile import Reconciler
from carom.net.neighbours import Neighbour

pytestmark = [pytest.mark.root]

SIZE = 251
MAX_REALS = 24  # fewer ids than addresses: draining ids get freed for new reals
V4 = [f"10.0.0.{i}" for i in range(1, 27)]
V6 = [f"2001:db8::{i:x}" for i in range(1, 7)]
LOCAL = {"10.0.0.7", "2001:db8::3"}  # local everywhere (a config rule)
VIPS4 = ["192.0.2.100", "192.0.2.101"]
VIP6 = "2001:db8:100::1"
STATES = ["reachable", "stale", "incomplete", "probing", "failed"]
Nb = dict[abi.IPAddress, Neighbour]


@pytest.fixture
def dp() -> Iterator[Dataplane]:
    d = Dataplane.load(
        Limits(
            max_services=16,
            max_reals=MAX_REALS,
            maglev_table_size=SIZE,
            conn_table_size=1024,
            persist_table_size=1024,
        )
    )
    try:
        yield d
    finally:
        d.close()


def _text(services: list[dict[str, Any]]) -> str:
    lines = [
        "interfaces: [lo]",
        f"limits: {{max_services: 16, max_reals: {MAX_REALS}, maglev_table_size: {SIZE}}}",
        "services:",
    ]
    for s in services:
        lines.append(f"  - vip: {s['vip']}")
        if "ports" in s:
            lines.append(f"    ports: [{', '.join(str(p) for p in s['ports'])}]")
        else:
            lines.append(f"    port: {s['port']}")
        if s.get("protocol") == "udp":
            lines.append("    protocol: udp")
        if s.get("persist"):
            lines.append(f"    persistence_timeout: {s['persist']}")
        lines.append("    reals:" + ("" if s["reals"] else " []"))
        for address, weight in s["reals"]:
            extra = ", local: true" if address in LOCAL else ""
            lines.append(f"      - {{address: {address}, weight: {weight}{extra}}}")
    return "\n".join(lines) + "\n"


class World:
    """A config (as text, loaded like the daemon does), neighbours and inputs."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cache = ConfigCache()
        self.services = [self._service(i) for i in range(rng.randint(1, 8))]
        self.config = self._load(self.services)
        assert self.config is not None
        self.nbs: Nb = {}
        for a in V4 + V6:
            self._neighbour(a, "reachable")
        self.health: dict[tuple[Any, abi.IPAddress], Effective] = {}
        self.down: dict[SvcIdent, set[abi.IPAddress]] = {}
        self.keep: frozenset[SvcIdent] = frozenset()

    def _service(self, n: int) -> dict[str, Any]:
        rng = self.rng
        six = rng.random() < 0.2
        pool = V6 if six else V4
        svc: dict[str, Any] = {
            "vip": VIP6 if six else rng.choice(VIPS4),
            "reals": [
                (a, rng.choice([0, 1, 1, 2, 5])) for a in rng.sample(pool, rng.randint(0, 5))
            ],
        }
        if rng.random() < 0.15:
            svc["ports"] = [2000 + 10 * n, 2001 + 10 * n]
        else:
            svc["port"] = "all" if rng.random() < 0.1 else 1000 + n
        if rng.random() < 0.2:
            svc["protocol"] = "udp"
        if rng.random() < 0.2:
            svc["persist"] = 60
        return svc

    def _load(self, services: list[dict[str, Any]]) -> Config | None:
        text = _text(services)
        config = self.cache.fast(text)
        if config is None:
            try:
                config = parse_config(text, "random.yaml")
            except ConfigError:
                return None  # e.g. two services on one vip/port: not applied
            self.cache.remember(text, config)
        return config

    def _neighbour(self, a: str, state: str, mac: bytes | None = None, ifname: str = "lo") -> None:
        address = ipaddress.ip_address(a)
        if mac is None and state in ("reachable", "stale"):
            mac = bytes([2, 0, 0, 0, address.version, address.packed[-1]])
        self.nbs[address] = Neighbour(
            address, ifname, mac, state, "" if mac else "not resolved", ifindex=1
        )

    def inputs(self) -> Inputs:
        return Inputs(health=dict(self.health), down=dict(self.down), keep_flows=self.keep)

    def change(self) -> str:
        """One random change; returns what it was."""
        rng, services = self.rng, [dict(s, reals=list(s["reals"])) for s in self.services]
        what = rng.choice(
            ["real", "real", "weight", "add-real", "drop-real", "add-svc", "drop-svc",
             "persist", "order", "reparse", "mac", "state", "astray", "health", "down",
             "keep"]
        )  # fmt: skip
        svc = rng.choice(services) if services else None
        if what in ("real", "weight", "drop-real") and svc and svc["reals"]:
            i = rng.randrange(len(svc["reals"]))
            a, w = svc["reals"][i]
            if what == "real":
                pool = V6 if ":" in a else V4
                free = [x for x in pool if x not in {r for r, _ in svc["reals"]}]
                if free:
                    svc["reals"][i] = (rng.choice(free), w)
            elif what == "weight":
                svc["reals"][i] = (a, rng.choice([0, 1, 3]))
            else:
                del svc["reals"][i]
        elif what == "add-real" and svc:
            pool = V6 if ":" in str(svc["vip"]) else V4
            free = [x for x in pool if x not in {r for r, _ in svc["reals"]}]
            if free:
                svc["reals"].append((rng.choice(free), 1))
        elif what == "add-svc":
            services.insert(rng.randint(0, len(services)), self._service(rng.randint(0, 40)))
        elif what == "drop-svc" and services:
            services.remove(rng.choice(services))
        elif what == "persist" and svc:
            svc["persist"] = 0 if svc.get("persist") else 120
        elif what == "order":
            rng.shuffle(services)
        elif what == "reparse":
            self.cache = ConfigCache()  # every service a new object, as after a full parse
        elif what in ("mac", "state", "astray"):
            a = rng.choice(V4 + V6)
            if what == "mac":
                self._neighbour(a, "reachable", bytes([2, 9, 9, 9, 9, rng.randint(1, 250)]))
            elif what == "state":
                self._neighbour(a, rng.choice(STATES))
            else:
                self._neighbour(a, "reachable", ifname=rng.choice(["lo", "carom-elsewhere"]))
        elif what in ("health", "down", "keep") and self.config.services:
            s = rng.choice(self.config.services)
            key = (s.vip, abi.PROTOCOLS[s.protocol], s.port_number)
            if what == "keep":
                self.keep = self.keep ^ {key}
            elif s.reals:
                r = rng.choice(s.reals)
                if what == "down":
                    gone = self.down.setdefault(key, set())
                    gone ^= {r.address}
                elif (s.key, r.address) in self.health and rng.random() < 0.4:
                    del self.health[(s.key, r.address)]
                else:
                    state = rng.choice(["up", "down", "drained", "slow-start", "held"])
                    self.health[(s.key, r.address)] = Effective(
                        rng.choice([0, 1, 4]), state, f"check said {state}"
                    )
        if services != self.services or what == "reparse":
            config = self._load(services)
            if config is None:
                return what + " (invalid: skipped)"
            self.services, self.config = services, config
        return what


def _written(want: Desired) -> dict[str, Any]:
    """Everything of a desired image that reaches the maps or status, as bytes."""
    img = want.image
    return {
        "node": bytes(img.node),
        "services": {k: bytes(v) for k, v in img.services.items()},
        # the rows the services use (commit() keeps removed services' rows too)
        "rows": {int(i.id): img.rows[int(i.id)].tobytes() for i in img.services.values()},
        "reals": {k: bytes(v) for k, v in img.reals.items()},
        "vips": {k: bytes(v) for k, v in img.vips.items()},
        "vip_filter": img.vip_filter,
        "real_macs": img.real_macs,
        "real_down": img.real_down,
        "views": want.service_views,
        "fingerprints": want.fingerprints,
        "names": want.names,
        "draining": sorted(want.draining),
        "real_ids": want.real_ids,
        "tables": set(want.tables),
        "built": want.built,
        "released": sorted(want.released),
    }


def _maps(dp: Dataplane, rec: Reconciler) -> dict[str, Any]:
    """What the maps hold, in the image's terms."""
    services = {(k.vip.to_ip(k.family), int(k.proto), abi.port_host(k.port)): bytes(v)
                for k, v in dp["services"].items()}  # fmt: skip
    rows = {int(v.id): dp["maglev"].read_range(int(v.id) * SIZE, SIZE)
            for v in rec.current.services.values()}  # fmt: skip
    reals = {int(k): bytes(v) for k, v in dp["reals"].items() if v.family}
    down = {int(k): int(v) for k, v in dp["real_down"].items() if v}
    return {"services": services, "rows": rows, "reals": reals, "real_down": down}


def _expected(rec: Reconciler) -> dict[str, Any]:
    img = rec.current
    u32 = ctypes.sizeof(ctypes.c_uint32)
    assert img.rows and all(r.itemsize == u32 for r in img.rows.values())
    return {
        "services": {k: bytes(v) for k, v in img.services.items()},
        "rows": {int(v.id): img.rows[int(v.id)].tobytes() for v in img.services.values()},
        "reals": {k: bytes(v) for k, v in img.reals.items()},
        "real_down": img.real_down,
    }


@pytest.mark.parametrize("seed", range(12))
def test_incremental_image_equals_the_full_rebuild(dp: Dataplane, seed: int) -> None:
    rng = random.Random(seed)
    world = World(rng)
    rec = Reconciler(dp)
    rec.apply(rec.desired(world.config, world.nbs, world.inputs()))
    reused = 0
    for step in range(60):
        what = world.change()
        try:
            full = rec.desired(world.config, world.nbs, world.inputs(), full=True)
        except ReconcileError as exc:  # no free real id: both must say so
            with pytest.raises(ReconcileError, match="no free real id"):
                rec.desired(world.config, world.nbs, world.inputs())
            assert "no free real id" in str(exc)
            continue
        want = rec.desired(world.config, world.nbs, world.inputs())
        assert _written(want) == _written(full), f"seed {seed}, step {step}: {what}"
        assert want.memo is not None
        kept = rec.memo.parts if rec.memo is not None else {}
        reused += sum(1 for k, p in want.memo.parts.items() if kept.get(k) is p)
        roll = rng.random()
        if roll < 0.05:
            rec.adopt()  # the image read back from the maps: no memo describes it
            continue
        if roll < 0.1:
            continue  # worked out, never applied: the memo of the last commit stays
        if roll < 0.2:
            rec.fault = lambda name: (_ for _ in ()).throw(RuntimeError(name))
            with pytest.raises(ApplyError):
                rec.apply(want)  # failed and rolled back: nothing changed
            rec.fault = None
            continue
        rec.apply(want)
        assert _maps(dp, rec) == _expected(rec), f"seed {seed}, step {step}: {what}"
    assert reused > 0  # the memo was used, not only rebuilt


def test_a_changed_service_is_the_only_part_made_again(dp: Dataplane) -> None:
    """One real of one service changes: one part is made again, the others
    (and their tables) come from the memo; a neighbour change of a real makes
    again exactly the services that have it."""
    rng = random.Random(7)
    world = World(rng)
    world.services = [
        {"vip": VIPS4[0], "port": 1000 + i, "reals": [(V4[i], 1), (V4[i + 1], 1)]} for i in range(6)
    ]
    config = world._load(world.services)
    assert config is not None
    rec = Reconciler(dp)
    rec.apply(rec.desired(config, world.nbs, world.inputs()))
    assert rec.memo is not None
    before = dict(rec.memo.parts)
    world.services[2]["reals"][0] = (V4[20], 1)
    config = world._load(world.services)
    assert config is not None
    want = rec.desired(config, world.nbs, world.inputs())
    assert want.memo is not None
    made = [p for p in want.memo.parts.values() if p not in before.values()]
    assert [p.svc.port for p in made] == [1002]
    assert want.built == 1
    rec.apply(want)
    # 10.0.0.4 (V4[3]) is a real of services 2 (port 1002) and 3 (port 1003)
    world._neighbour(V4[3], "reachable", bytes.fromhex("02aabbccddee"))
    before = dict(rec.memo.parts)
    want = rec.desired(config, world.nbs, world.inputs())
    assert want.memo is not None
    made = [p for p in want.memo.parts.values() if p not in before.values()]
    assert sorted(p.svc.port for p in made) == [1002, 1003]
    assert want.built == 0  # the MAC is not in the table: same member sets
