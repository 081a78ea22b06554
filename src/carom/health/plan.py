"""From a validated Config to the probes the scheduler runs.

`probe_keys(config)` maps every (service key, real address) that has a check to
its ProbeKey. Equal definitions aimed at the same real give equal keys, so the
scheduler runs one probe for all the services that share it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

from carom.config.checks import Check
from carom.config.schema import Config, Service
from carom.health.spec import (
    AgentCheck,
    CheckSpec,
    DnsCheck,
    ExecCheck,
    HttpCheck,
    ProbeKey,
    SynCheck,
    Target,
    TcpCheck,
    Timing,
    UdpCheck,
    Via,
)

IPAddress = IPv4Address | IPv6Address
ServiceKey = tuple[IPAddress, str, int]  # Service.key: (vip, protocol, port_number)


def to_spec(check: Check) -> CheckSpec:
    """The runtime definition of a configured check."""
    timing = Timing(
        interval=check.interval,
        timeout=check.timeout,
        rise=check.rise,
        fall=check.fall,
        fast_interval=check.effective_fast_interval,
    )
    port = check.port
    if check.kind == "tcp":
        return TcpCheck(timing=timing, port=port)
    if check.kind == "syn":
        return SynCheck(timing=timing, port=port)
    if check.kind in ("http", "https"):
        return HttpCheck(
            timing=timing,
            port=port,
            tls=check.kind == "https",
            method=check.method,
            path=check.path,
            host=check.host,
            expect_status=check.expect_status,
            body=None if check.body is None else check.body.encode("utf-8"),
            tls_verify=check.tls_verify,
        )
    if check.kind == "udp":
        return UdpCheck(
            timing=timing,
            port=port,
            send=check.send.encode("latin-1"),
            expect=check.expect.encode("latin-1"),
        )
    if check.kind == "dns":
        return DnsCheck(
            timing=timing,
            port=port,
            query=check.query,
            query_type=check.query_type,
            transport=check.transport,
            expect_rcode=check.expect_rcode,
        )
    if check.kind == "exec":
        return ExecCheck(timing=timing, port=port, command=check.command)
    return AgentCheck(timing=timing, port=port, send=check.send.encode("latin-1"))


def effective_check(service: Service, real_index: int) -> Check | None:
    """The real's own check, else its service's, else None (always up)."""
    own = service.reals[real_index].check
    return own if own is not None else service.check


ViaOf = Callable[[IPAddress], Via]
NO_PATH = Via(netns="", mark=0)  # a via: vip probe with no probe namespace: fails


def probe_key(service: Service, real_index: int, via_of: ViaOf | None = None) -> ProbeKey | None:
    """The probe of one real of a service. With `via: vip` the probe goes to the
    VIP: a remote real's through `via_of(real)` (the probe namespace's path to
    its MAC), a local real's (this node) through this node's own stack, which
    accepts it only if the VIP is on lo and something listens, as for clients."""
    check = effective_check(service, real_index)
    if check is None:
        return None
    real = service.reals[real_index]
    # the loader guarantees a port unless the service is port: all and the kind is exec
    port = check.port if check.port is not None else service.port_number
    # the port lives in the target: `port: 80` and the service's port 80 are one probe
    spec = replace(to_spec(check), port=None)
    target = Target(address=real.address, port=port, real=real.address)
    if check.via == "vip":
        via: Via | None = None
        if not real.local:  # without a probe namespace the probe fails, never goes astray
            via = via_of(real.address) if via_of is not None else NO_PATH
        target = Target(address=service.vip, port=port, real=real.address, via=via)
    return ProbeKey(target=target, check=spec)


def probe_keys(
    config: Config, via_of: ViaOf | None = None
) -> dict[tuple[ServiceKey, IPAddress], ProbeKey]:
    """Every checked (service key, real address) and the probe that decides its health."""
    out: dict[tuple[ServiceKey, IPAddress], ProbeKey] = {}
    for service in config.services:
        if service.check is None and all(r.check is None for r in service.reals):
            continue  # no probe (the common case: 32k reals, at every reload)
        for j, real in enumerate(service.reals):
            key = probe_key(service, j, via_of)
            if key is not None:
                out[(service.key, real.address)] = key
    return out
