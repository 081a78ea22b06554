"""Part 5: the cost of health checks. 1,000 reals x 2 checks (TCP connect and
HTTP GET) at the default timing (a probe per key per second) through the real
HealthScheduler, against a responder in another process on 127.0.0.1 (its CPU
is not counted). Reported: CPU of the checking process as a share of one core
(the issue's target: at most 10%), split into user time (the Python work) and
system time (the kernel; on loopback a connect runs the peer's side of the
handshake in the caller's context too, so it overstates what a probe over a real
link costs: a perf profile puts the responder's SYN, ACK, request and RST
processing at about a sixth of the checker's CPU, and it is counted here; the
user/system split is sampled at the kernel's tick and moves with the engine's
tick, the total is exact), and
probes per second actually run. The scheduler's default path (TCP and plain
HTTP on the socket engine, health/engine.py: reused sockets, one epoll set read
on one tick) alternates with the coroutine path (run_check per probe, as the
other kinds run), A B A B, so their ratio is measured in one run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from ipaddress import IPv4Address

from benchmarks.common import Budget, Row
from carom.health.probe import run_check
from carom.health.scheduler import HealthScheduler, Prober
from carom.health.spec import HttpCheck, ProbeKey, Target, TcpCheck

SECTION = "5 health checks"
REALS = 1000
RESPONDER = r"""
import asyncio, sys
async def serve(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def keys(port: int) -> list[ProbeKey]:
    out = []
    for i in range(REALS):
        # distinct reals (the `real` label) aimed at one responder: no two keys equal
        real = IPv4Address(0x0A000000 + i + 1)
        target = Target(address=IPv4Address("127.0.0.1"), port=port, real=real)
        out.append(ProbeKey(target=target, check=TcpCheck()))
        out.append(ProbeKey(target=target, check=HttpCheck(path=f"/r{i}")))
    return out


async def measure(
    port: int, seconds: float, prober: Prober | None = None
) -> tuple[float, float, float, int]:
    sched = HealthScheduler(prober=prober)
    sched.update(keys(port))
    await asyncio.sleep(2.0)  # past the jittered first interval: steady state
    before = {k: s.probes for k, s in sched.snapshot().items()}
    t0, wall0 = os.times(), time.monotonic()
    await asyncio.sleep(seconds)
    t1 = os.times()
    wall = time.monotonic() - wall0
    after = sched.snapshot()
    probes = sum(s.probes - before.get(k, 0) for k, s in after.items())
    failures = sum(1 for s in after.values() if s.last is not None and not s.last.ok)
    await sched.close()
    user = (t1.user - t0.user) / wall * 100.0
    system = (t1.system - t0.system) / wall * 100.0
    return user, system, probes / wall, failures


def run(budget_s: float = 120.0) -> list[Row]:
    budget = Budget(budget_s)
    responder = subprocess.Popen(
        [sys.executable, "-c", RESPONDER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert responder.stdout is not None
        port = int(responder.stdout.readline())
        user_rows: list[float] = []
        system_rows: list[float] = []
        rate_rows: list[float] = []
        coro_user: list[float] = []
        coro_system: list[float] = []
        failing = 0
        for _ in range(3):
            if budget.left() < 25:
                break
            user, system, rate, failing = asyncio.run(measure(port, 8.0))
            user_rows.append(user)
            system_rows.append(system)
            rate_rows.append(rate)
            user, system, _, _ = asyncio.run(measure(port, 8.0, run_check))
            coro_user.append(user)
            coro_system.append(system)
    finally:
        responder.terminate()
        responder.wait(timeout=10)
    note = f"{failing} of {2 * REALS} keys failing at the end" if failing else ""
    name = f"{REALS} reals x 2 checks (tcp + http), defaults"
    total = [u + s for u, s in zip(user_rows, system_rows, strict=True)]
    coro_total = [u + s for u, s in zip(coro_user, coro_system, strict=True)]
    return [
        Row(
            SECTION,
            f"CPU total, {name}",
            "% of a core",
            total,
            baseline="CPU total, same, coroutine per probe",
            note="the issue's target: at most 10",
        ),
        Row(SECTION, f"CPU user, {name}", "% of a core", user_rows, note=note),
        Row(
            SECTION,
            f"CPU system, {name}",
            "% of a core",
            system_rows,
            note="on loopback this includes the responder's side of every TCP handshake",
        ),
        Row(SECTION, "probes run", "probes/s", rate_rows, higher_is_better=True),
        Row(SECTION, "CPU total, same, coroutine per probe", "% of a core", coro_total),
        Row(SECTION, "CPU user, same, coroutine per probe", "% of a core", coro_user),
        Row(SECTION, "CPU system, same, coroutine per probe", "% of a core", coro_system),
    ]


if __name__ == "__main__":
    for row in run(120.0):
        print(row.name, row.unit, [round(s, 1) for s in row.samples], row.note)
