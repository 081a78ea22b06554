"""daemon/health_task.py and daemon/overrides.py: what check states and manual
overrides make of each real's weight (down, agent drain and weight, slow start,
min_healthy with hysteresis), and the override actions the control socket and
the HTTP API share. The probes are the real scheduler's, with a prober that
answers what each test says."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import pytest

from carom.config.load import parse_config
from carom.config.schema import Config
from carom.daemon import overrides
from carom.daemon.health_task import HealthTask
from carom.daemon.image import Desired
from carom.health.scheduler import HealthScheduler
from carom.health.spec import CheckResult, ProbeKey

R1, R2, R3 = (IPv4Address(f"192.0.2.1{i}") for i in (1, 2, 3))


def config(**svc: Any) -> Config:
    fields = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in svc.items())
    return parse_config(
        "interfaces: [eth0]\n"
        "services:\n"
        "  - name: web\n"
        "    vip: 192.0.2.100\n"
        "    port: 80\n"
        "    check: {kind: tcp, interval: 0.1, timeout: 0.05, rise: 1, fall: 1}\n"
        f"{fields}"
        "    reals:\n"
        "      - address: 192.0.2.11\n"
        "      - address: 192.0.2.12\n"
        "        weight: 2\n"
        "      - address: 192.0.2.13\n"
    )


class Host:
    """The daemon as the task sees it: a lock, a config, an apply that records."""

    def __init__(self, cfg: Config) -> None:
        self.lock = asyncio.Lock()
        self.config: Config | None = cfg
        self.applied = 0

    async def apply(self, config: Config, old: Config | None) -> tuple[int, Desired]:
        self.applied += 1
        return 0, None  # type: ignore[return-value]  # the task ignores the result


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A HealthTask over a real scheduler whose prober answers `self.answers`."""

    def __init__(self, cfg: Config) -> None:
        self.answers: dict[IPv4Address | IPv6Address, CheckResult] = {}
        self.clock = Clock()
        self.host = Host(cfg)
        self.cfg = cfg

        async def prober(key: ProbeKey) -> CheckResult:
            return self.answers.get(key.target.real, CheckResult(ok=True, reason="fine"))

        self.task = HealthTask(
            self.host,
            overrides.OverrideStore(),
            scheduler=HealthScheduler(prober=prober),
            clock=self.clock,
        )

    def set(self, real: IPv4Address, ok: bool, **kw: Any) -> None:
        self.answers[real] = CheckResult(ok=ok, reason="fine" if ok else "refused", **kw)

    async def settle(self) -> dict[IPv4Address | IPv6Address, tuple[int, str]]:
        """Wait for every probe to have answered as set now, then the weights."""
        await asyncio.sleep(0.35)
        eff = self.task.effective(self.cfg)
        out = {}
        for r in self.cfg.services[0].reals:
            e = eff.get((self.cfg.services[0].key, r.address))
            out[r.address] = (e.weight, e.state) if e else (r.weight, "up")
        return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_down_real_gets_weight_0_and_down_flows_decides_rescheduling() -> None:
    async def main() -> None:
        for policy, resched in (("reschedule", True), ("keep", False)):
            rig = Rig(config(down_flows=policy))
            await rig.task.plan(rig.cfg)
            rig.set(R1, False)
            w = await rig.settle()
            assert w == {R1: (0, "down"), R2: (2, "up"), R3: (1, "up")}
            eff = rig.task.effective(rig.cfg)[(rig.cfg.services[0].key, R1)]
            assert eff.reschedule is resched and "refused" in eff.detail
            await rig.task.close()

    run(main())


def test_agent_drain_and_weight_percent() -> None:
    async def main() -> None:
        rig = Rig(config())
        await rig.task.plan(rig.cfg)
        rig.set(R2, True, weight_percent=50)
        rig.set(R3, True, drain=True)
        assert await rig.settle() == {R1: (1, "up"), R2: (1, "up"), R3: (0, "drained")}
        rig.set(R2, True, weight_percent=1)  # 1% of 2 rounds to 0: kept at 1
        assert (await rig.settle())[R2] == (1, "up")
        rig.set(R2, True, weight_percent=0)
        assert (await rig.settle())[R2] == (0, "drained")
        await rig.task.close()

    run(main())


def test_min_healthy_holds_the_service_with_hysteresis() -> None:
    async def main() -> None:
        rig = Rig(config(min_healthy=2))
        await rig.task.plan(rig.cfg)
        rig.set(R1, False)
        assert await rig.settle() == {R1: (0, "down"), R2: (2, "up"), R3: (1, "up")}
        rig.set(R2, False)  # 1 left, fewer than 2: the service takes no new flows
        assert await rig.settle() == {R1: (0, "down"), R2: (0, "down"), R3: (0, "held")}
        rig.set(R2, True)  # 2 again, but release needs 3 (min_healthy + 1)
        assert await rig.settle() == {R1: (0, "down"), R2: (0, "held"), R3: (0, "held")}
        rig.set(R1, True)
        assert await rig.settle() == {R1: (1, "up"), R2: (2, "up"), R3: (1, "up")}
        await rig.task.close()

    run(main())


def test_slow_start_raises_the_weight_in_tenths() -> None:
    async def main() -> None:
        rig = Rig(config(slow_start=10))
        await rig.task.plan(rig.cfg)
        rig.set(R1, False)
        assert (await rig.settle())[R1] == (0, "down")
        rig.set(R1, True)
        seen = []
        w = await rig.settle()
        seen.append(w)
        for _ in range(10):
            rig.clock.now += 1.0
            seen.append(await rig.settle())
        # the ramping real: 1..10 tenths of weight 1; the others scaled by 10
        assert seen[0] == {R1: (1, "slow-start"), R2: (20, "up"), R3: (10, "up")}
        # 10% at once, 10% more every second: all of it 9 s in (unscaled again)
        assert [s[R1] for s in seen[:9]] == [(i, "slow-start") for i in range(1, 10)]
        assert seen[9] == seen[10] == {R1: (1, "up"), R2: (2, "up"), R3: (1, "up")}
        await rig.task.close()

    run(main())


def test_overrides_drain_weight_undrain_and_errors(tmp_path: Path) -> None:
    cfg = config()
    path = str(tmp_path / "o.json")
    store = overrides.OverrideStore(path)
    reply = overrides.drain(store, cfg, "192.0.2.11")
    assert reply["ok"] and reply["services"] == ["web"]
    overrides.set_weight(store, cfg, "192.0.2.12", 7, service="web")
    assert store.for_real(R1, "web") is not None and store.for_real(R1, "web").drain  # type: ignore[union-attr]
    assert store.for_real(R2, "web").weight == 7  # type: ignore[union-attr]
    again = overrides.OverrideStore(path)  # a restart reads them back
    assert {(o.address, o.service, o.drain, o.weight) for o in again} == {
        ("192.0.2.11", None, True, None),
        ("192.0.2.12", "web", False, 7),
    }
    with pytest.raises(ValueError, match="not an IP address"):
        overrides.drain(store, cfg, "web1")
    with pytest.raises(ValueError, match="not a real of any service"):
        overrides.drain(store, cfg, "192.0.2.99")
    with pytest.raises(ValueError, match="no service named 'api'"):
        overrides.drain(store, cfg, "192.0.2.11", service="api")
    with pytest.raises(ValueError, match="out of range"):
        overrides.set_weight(store, cfg, "192.0.2.11", 70000)
    assert len(list(store)) == 2  # the refused actions changed nothing
    overrides.undrain(store, cfg, "192.0.2.11")
    with pytest.raises(ValueError, match="no manual override"):
        overrides.undrain(store, cfg, "192.0.2.11")
    assert [o.address for o in overrides.OverrideStore(path)] == ["192.0.2.12"]


def test_overrides_change_the_weights() -> None:
    async def main() -> None:
        rig = Rig(config(slow_start=0))
        await rig.task.plan(rig.cfg)
        await rig.settle()
        overrides.drain(rig.task.overrides, rig.cfg, "192.0.2.11")
        overrides.set_weight(rig.task.overrides, rig.cfg, "192.0.2.13", 5)
        assert await rig.settle() == {R1: (0, "drained"), R2: (2, "up"), R3: (5, "up")}
        # a manual drain wins over a passing check; a failing check over a weight
        rig.set(R3, False)
        assert (await rig.settle())[R3] == (0, "down")
        reply = await rig.task.handle({"command": "real-undrain", "address": "192.0.2.11"})
        assert reply["ok"] and reply["applied"] and rig.host.applied >= 1
        assert (await rig.settle())[R1] == (1, "up")
        assert ip_address("192.0.2.11") == R1
        await rig.task.close()

    run(main())


def test_a_via_vip_probe_without_a_route_yet_fails_instead_of_going_astray() -> None:
    """Before the probe namespace has a table for a real (a reload adds it: the
    apply runs before the routes are synced), its probe must fail, not reach
    whoever answers ARP for the VIP."""
    from carom.health.plan import NO_PATH
    from carom.health.vip_path import VipPath

    cfg = parse_config(
        "interfaces: [eth0]\n"
        "health: {probe_source: 192.0.2.250/24}\n"
        "services:\n"
        "  - {name: web, vip: 192.0.2.100, port: 80, check: {kind: tcp, via: vip},\n"
        "     reals: [{address: 192.0.2.11}, {address: 192.0.2.2, local: true}]}\n"
    )
    task = HealthTask(Host(cfg), overrides.OverrideStore())
    task._vip_path = VipPath("t", "eth0", cfg.health.probe_source)  # type: ignore[arg-type]
    keys = task.keys_of(cfg)
    remote = keys[(cfg.services[0].key, R1)].target
    local = keys[(cfg.services[0].key, IPv4Address("192.0.2.2"))].target
    assert remote.address == IPv4Address("192.0.2.100") and remote.via == NO_PATH
    assert local.address == IPv4Address("192.0.2.100") and local.via is None  # its own stack


def unchecked(reals: list[str]) -> Config:
    lines = "".join(f"      - address: {a}\n" for a in reals)
    return parse_config(
        "interfaces: [eth0]\n"
        "services:\n"
        "  - name: web\n"
        "    vip: 192.0.2.100\n"
        "    port: 80\n"
        "    reals:\n" + lines
    )


def test_pair_numbers_are_never_reused_after_a_real_leaves() -> None:
    """The bookkeeping (rotation, slow start, shown state) is keyed by a number
    per (service, real): a real that joins after another left must not take
    the leaver's number (it used to: numbers were the dict's length)."""
    rig = Rig(unchecked(["192.0.2.11", "192.0.2.12", "192.0.2.13"]))
    first = {a: n for n, a, _, _ in rig.task._rows_of(rig.cfg)[0][1]}
    later = unchecked(["192.0.2.11", "192.0.2.13", "192.0.2.14"])
    run(rig.task.plan(later))  # a reload: .12 leaves, .14 joins
    second = {a: n for n, a, _, _ in rig.task._rows_of(later)[0][1]}
    assert second[R1] == first[R1] and second[R3] == first[R3]  # kept
    assert second[ip_address("192.0.2.14")] not in first.values()


def test_a_service_only_its_config_decides_keeps_its_weights_and_logs_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No checks, overrides, min_healthy or slow start: effective() takes the
    short path, and still says when a real that was drained by an override is
    up again (and sets nothing for reals at their configured weight)."""
    cfg = unchecked(["192.0.2.11", "192.0.2.12"])
    rig = Rig(cfg)
    overrides.drain(rig.task.overrides, cfg, "192.0.2.11")
    assert rig.task.effective(cfg)[(cfg.services[0].key, R1)].state == "drained"
    overrides.undrain(rig.task.overrides, cfg, "192.0.2.11")
    assert not rig.task.overrides
    with caplog.at_level("INFO", logger="carom.health"):
        assert rig.task.effective(cfg) == {}
    assert "192.0.2.11: drained -> up" in caplog.text
