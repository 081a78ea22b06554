"""Run one probe: dispatch by kind, bound it by the timeout, turn every failure
into a CheckResult with a reason. Nothing a server does can raise out of here."""

from __future__ import annotations

import asyncio
import ssl
import time

from carom.health import agent, command, dns_query, http, syn, tcp, udp
from carom.health.spec import (
    AgentCheck,
    CheckResult,
    DnsCheck,
    ExecCheck,
    HttpCheck,
    ProbeKey,
    SynCheck,
    TcpCheck,
    UdpCheck,
)


async def _dispatch(key: ProbeKey) -> CheckResult:
    check, target = key.check, key.target
    if isinstance(check, TcpCheck):
        return await tcp.probe(check, target)
    if isinstance(check, SynCheck):
        return await syn.probe(check, target)
    if isinstance(check, HttpCheck):
        return await http.probe(check, target)
    if isinstance(check, UdpCheck):
        return await udp.probe(check, target)
    if isinstance(check, DnsCheck):
        return await dns_query.probe(check, target)
    if isinstance(check, ExecCheck):
        return await command.probe(check, target)
    if isinstance(check, AgentCheck):
        return await agent.probe(check, target)
    raise TypeError(f"unknown check {check!r}")  # pragma: no cover - exhaustive


def describe_error(exc: BaseException) -> str:
    """An exception as a short reason a human reads in `carom status`."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


async def run_check(key: ProbeKey) -> CheckResult:
    """The verdict of one probe, within key.check.timing.timeout seconds."""
    timeout = key.check.timing.timeout
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            result = await _dispatch(key)
    except TimeoutError:
        result = CheckResult(ok=False, reason=f"timed out after {timeout:g} s")
    except Exception as exc:  # every failure of a probe is a result, not a crash
        result = CheckResult(ok=False, reason=describe_error(exc))
    elapsed = time.monotonic() - start
    return CheckResult(
        ok=result.ok,
        reason=result.reason,
        elapsed=elapsed,
        weight_percent=result.weight_percent,
        drain=result.drain,
    )
