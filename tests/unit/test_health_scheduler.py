"""scheduler.py: shared probes, jitter, bounded concurrency, cancellation, and the
detection time with the defaults against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from carom.health.damping import Health, HealthState, worst_detection
from carom.health.scheduler import HealthScheduler
from carom.health.spec import (
    CheckResult,
    ExecCheck,
    HttpCheck,
    ProbeKey,
    Target,
    TcpCheck,
    Timing,
)
from tests.unit.health_servers import stream_server, target
from tests.unit.test_health_probes import _alive


class NoJitter(random.Random):
    """First probe at once (the scheduler's jitter would wait up to an interval)."""

    def uniform(self, a: float, b: float) -> float:
        return a


FAST = Timing(interval=0.1, timeout=0.05, fast_interval=0.05)


def key(i: int, timing: Timing = FAST) -> ProbeKey:
    real = IPv4Address(f"192.0.2.{i % 250 + 1}")
    return ProbeKey(
        target=Target(address=real, port=80 + i // 250, real=real), check=TcpCheck(timing=timing)
    )


def test_identical_checks_share_one_probe() -> None:
    async def main() -> None:
        seen: Counter[ProbeKey] = Counter()

        async def prober(k: ProbeKey) -> CheckResult:
            seen[k] += 1
            return CheckResult(ok=True, reason="fake")

        sched = HealthScheduler(prober=prober)
        # two services with the same real and the same definition, one with another port
        a = ProbeKey(target=target(80), check=TcpCheck(timing=FAST))
        b = ProbeKey(target=target(80), check=TcpCheck(timing=FAST))
        c = ProbeKey(target=target(81), check=TcpCheck(timing=FAST))
        sched.update([a, b, c])
        assert sched.running == 2
        await asyncio.sleep(0.35)
        await sched.close()
        assert set(seen) == {a, c}

    asyncio.run(main())


def test_first_probes_are_spread_over_the_interval() -> None:
    async def main() -> None:
        first: dict[ProbeKey, float] = {}
        timing = Timing(interval=1.0, timeout=0.5)
        start = time.monotonic()

        async def prober(k: ProbeKey) -> CheckResult:
            first.setdefault(k, time.monotonic() - start)
            return CheckResult(ok=True, reason="fake")

        sched = HealthScheduler(prober=prober, rng=random.Random(7))
        sched.update(key(i, timing) for i in range(500))
        deadline = time.monotonic() + 5
        while len(first) < 500 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await sched.close()
        assert len(first) == 500
        buckets = Counter(int(t * 10) for t in first.values())
        # uniform: ~50 per tenth of a second; no burst of all at once (a loaded
        # machine may delay a few tenths, hence the slack)
        assert max(buckets.values()) < 150, buckets
        assert len([b for b in buckets if b < 10]) >= 8, buckets

    asyncio.run(main())


def test_concurrency_is_bounded() -> None:
    async def main() -> None:
        in_flight = peak = 0

        async def prober(k: ProbeKey) -> CheckResult:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            return CheckResult(ok=True, reason="fake")

        sched = HealthScheduler(prober=prober, max_concurrent=5)
        sched.update(key(i) for i in range(60))
        await asyncio.sleep(0.5)
        await sched.close()
        assert peak == 5

    asyncio.run(main())


def test_update_keeps_state_and_close_cancels() -> None:
    async def main() -> None:
        changes: list[tuple[ProbeKey, Health, Health, str]] = []

        def on_change(k: ProbeKey, old: HealthState, new: HealthState, r: CheckResult) -> None:
            changes.append((k, old.health, new.health, r.reason))
            raise RuntimeError("a broken callback")  # must not stop the probes

        ok = {key(1): True, key(2): False}

        async def prober(k: ProbeKey) -> CheckResult:
            return CheckResult(ok=ok[k], reason="yes" if ok[k] else "no")

        sched = HealthScheduler(on_change=on_change, prober=prober)
        sched.update(ok)
        await asyncio.sleep(0.3)
        assert sched.usable(key(1)) and not sched.usable(key(2))
        probes = sched.snapshot()[key(1)].probes
        assert probes >= 2
        sched.update(ok)  # a reload with the same checks: nothing restarts
        assert sched.snapshot()[key(1)].probes == probes
        ok[key(2)] = True
        await asyncio.sleep(0.3)
        assert sched.usable(key(2))
        sched.update([key(1)])
        assert sched.status(key(2)) is None and sched.running == 1
        await sched.close()
        assert sched.running == 0
        assert (key(2), Health.DOWN, Health.UP, "yes") in changes
        assert (key(1), Health.UNKNOWN, Health.UP, "yes") in changes

    asyncio.run(main())


def test_close_kills_a_running_exec_probe() -> None:
    async def main(pidfile: Path) -> None:
        slow = Timing(interval=10.0, timeout=5.0)
        script = f"sleep 30 & echo $! > {pidfile}; wait"
        k = ProbeKey(
            target=target(0), check=ExecCheck(timing=slow, command=("/bin/sh", "-c", script))
        )
        sched = HealthScheduler(rng=NoJitter())
        sched.update([k])
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.05)
        await sched.close()

    with tempfile.TemporaryDirectory() as tmp:
        pidfile = Path(tmp) / "pid"
        asyncio.run(asyncio.wait_for(main(pidfile), 15))
        child = int(pidfile.read_text())
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.02)
        assert not _alive(child)


def test_default_timing_detects_a_hung_http_server_within_3_seconds() -> None:
    """The worst case for detection: the server accepts but never answers, so every
    probe runs to its timeout. Defaults: interval 1, timeout 0.6, fall 3, fast 0.3."""

    async def main() -> tuple[float, float]:
        healthy = True
        went: dict[Health, float] = {}

        async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if healthy:
                writer.write(b"HTTP/1.0 200 OK\r\n\r\nok")
                await writer.drain()
            else:
                await asyncio.sleep(60)

        def on_change(k: ProbeKey, old: HealthState, new: HealthState, r: CheckResult) -> None:
            went[new.health] = time.monotonic()

        async with stream_server(server) as port:
            sched = HealthScheduler(on_change=on_change)
            sched.update([ProbeKey(target=target(port), check=HttpCheck())])
            while Health.UP not in went:
                await asyncio.sleep(0.01)
            await asyncio.sleep(random.uniform(0.0, 1.0))  # die at any phase
            healthy = False
            died = time.monotonic()
            while Health.DOWN not in went:
                await asyncio.sleep(0.01)
            down_after = went[Health.DOWN] - died
            healthy = True
            back = time.monotonic()
            while went.get(Health.UP, 0) < back:
                await asyncio.sleep(0.01)
            up_after = went[Health.UP] - back
            await sched.close()
        return down_after, up_after

    down_after, up_after = asyncio.run(main())
    assert down_after <= worst_detection(Timing()) + 0.3, down_after  # 2.8 s + scheduling
    assert up_after <= 1.0 + 0.3 + 0.3, up_after  # one interval, then one fast interval


def test_a_prober_that_raises_counts_as_a_failure() -> None:
    async def main() -> None:
        async def prober(k: ProbeKey) -> CheckResult:
            raise OSError("boom")

        sched = HealthScheduler(prober=prober, rng=NoJitter())
        sched.update([key(1)])
        await asyncio.sleep(0.2)
        status = sched.status(key(1))
        await sched.close()
        assert status is not None and status.last is not None
        assert status.state.health is Health.DOWN
        assert status.last.reason == "prober error: OSError('boom')"

    asyncio.run(main())


def test_a_probe_that_fails_to_start_is_a_failed_result_and_the_timer_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from carom.health import engine

    def broken(
        self: object, key: ProbeKey, done: object, sockaddr: object = None, request: object = None
    ) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(engine.SocketEngine, "start", broken)

    async def main() -> None:
        sched = HealthScheduler(rng=NoJitter())
        k = key(1)
        sched.update([k])
        await asyncio.sleep(0.35)
        st = sched.status(k)
        await sched.close()
        assert st is not None and st.probes >= 3, st  # probed again and again
        assert st.last is not None and st.last.reason.startswith("probe error: ValueError")

    asyncio.run(main())
