"""The declarative configuration: the pydantic models of carom.yaml.

Every rule a configuration must follow lives here, so a `Config` is valid however
it was built (from YAML by `carom.config.load`, or in Python by tests). Messages
say what is wrong and how to fix it; `load.py` prefixes the file, the line and
the field path. docs/config.md is the reference for every field.

Scalars are strict (`weight: "5"` is an error, not 5): the loader reads YAML with
the 1.2 core schema, so the types a file gives are the types its author wrote."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_serializer, model_validator

from carom.config.checks import Check, HealthSettings, service_check_problems, vip_path_problems
from carom.config.cluster import Cluster
from carom.config.fields import (
    MAGLEV_MAX,
    SLOTS_PER_REAL,
    WEEK_S,
    AbsPath,
    Bool,
    ConfigProblems,
    Instance,
    Int,
    Interfaces,
    IPAddress,
    Loc,
    Port,
    RealAddress,
    Seconds,
    ServiceName,
    SocketPath,
    VipAddress,
    describe,
    format_loc,
    is_prime,
    nearest_primes,
    next_prime,
)
from carom.config.fields import StrictModel as _Model
from carom.config.fields import check_method as _method
from carom.config.fields import int_range as _int_range
from carom.config.limits import MAX_REALS, MAX_SERVICES, MAX_VIPS, Limits

# Names other modules import from here: the schema is the config's public face.
__all__ = [
    "Config",
    "ConfigProblems",
    "IPAddress",
    "Limits",
    "Loc",
    "Node",
    "Real",
    "Service",
    "Timeouts",
    "cross_service_problems",
    "describe",
    "format_loc",
    "is_prime",
    "limit_problems",
    "nearest_primes",
    "next_prime",
]


# --- the models -----------------------------------------------------------------


class Node(_Model):
    """What this node is, and its per-node policies."""

    role: Literal["active", "backup"] = Field(
        default="active",
        description="active schedules VIP traffic; backup passes it to the local stack "
        "and never schedules (no double scheduling during HA)",
        examples=["active"],
    )
    fragments: Literal["drop", "pass"] = Field(
        default="drop",
        description="IP fragments addressed to a VIP: drop, or pass to the local stack "
        "(non-first fragments carry no ports, so they cannot follow their flow)",
        examples=["drop"],
    )
    vips_on_lo: Bool = Field(
        default=True,
        description="put every VIP on lo (/32, /128) with real-server ARP settings at start, "
        "as `carom realserver up` does, so this node's own stack accepts VIP traffic (it is "
        "a real server too); false if you manage the addresses yourself",
        examples=[True],
    )


class Timeouts(_Model):
    """Idle times after which a connection entry is ignored and the flow rescheduled."""

    tcp_idle: Seconds = Field(default=900, description="seconds, TCP", examples=[900])
    udp_idle: Seconds = Field(default=300, description="seconds, UDP", examples=[300])


class Real(_Model):
    """One real server of a service."""

    address: RealAddress = Field(
        description="the server's own address, same family as the vip", examples=["192.0.2.11"]
    )
    weight: Annotated[Int, _int_range(0, 65535)] = Field(
        default=1,
        description="share of new flows; 0 drains (no new flows, existing ones go on)",
        examples=[1],
    )
    local: Bool = Field(
        default=False,
        description="true: this node itself serves; packets go to the local stack",
        examples=[False],
    )
    check: Check | None = Field(
        default=None,
        description="health check of this real, replacing the service's; null: the service's",
        examples=[{"kind": "tcp"}],
    )


class Service(_Model):
    """A virtual service: (vip, protocol, port) and the reals that serve it."""

    name: ServiceName | None = Field(
        default=None, description='unique; default "<vip>:<port>/<protocol>"', examples=["web"]
    )
    vip: VipAddress = Field(description="the virtual IP address", examples=["192.0.2.100"])
    protocol: Literal["tcp", "udp"] = Field(
        default="tcp", description="tcp or udp", examples=["tcp"]
    )
    port: Port = Field(
        description="1..65535, or all (stored as 0): every port of the vip; "
        "a specific port on the same vip and protocol wins",
        examples=[80],
    )
    method: Annotated[Literal["dsr"], BeforeValidator(_method)] = Field(
        default="dsr",
        description="forwarding method; only dsr (MAC rewrite) for now",
        examples=["dsr"],
    )
    persistence_timeout: Annotated[Int, _int_range(0, WEEK_S, " seconds (7 days)")] = Field(
        default=0,
        description="seconds; > 0 sends a client IP to the same real across connections "
        "(like ipvsadm -p); 0 is off",
        examples=[0],
    )
    reals: tuple[Real, ...] = Field(
        default=(), description="the servers; none is valid but drops new flows", examples=[[]]
    )
    check: Check | None = Field(
        default=None,
        description="health check of every real (a real's own check replaces it); "
        "null: no check, reals are always up",
        examples=[{"kind": "http", "path": "/healthz"}],
    )
    slow_start: Annotated[Int, _int_range(0, 3600, " seconds")] = Field(
        default=0,
        description="seconds over which a real that comes back up ramps from a tenth of "
        "its weight to all of it, in steps (only new flows move); 0: at once",
        examples=[30],
    )
    min_healthy: Annotated[Int, _int_range(0, 65535)] = Field(
        default=0,
        description="fewest usable reals with which the service takes new flows; below "
        "it, none (docs/health.md); 0: no minimum",
        examples=[0],
    )
    down_flows: Literal["reschedule", "keep"] = Field(
        default="reschedule",
        description="established flows of a real whose check fails: reschedule (their "
        "packets go to a live real, which resets them) or keep (they stay on the real)",
        examples=["reschedule"],
    )

    @field_serializer("port")
    def _port_out(self, port: int) -> int | str:
        return port or "all"  # so that a dump validates again

    @model_validator(mode="after")
    def _check_reals(self) -> Service:
        problems: list[tuple[Loc, str]] = []
        first: dict[IPAddress, int] = {}
        for j, real in enumerate(self.reals):
            loc: Loc = ("reals", j, "address")
            if real.address.version != self.vip.version:
                problems.append(
                    (
                        loc,
                        f"{real.address} is IPv{real.address.version} but the vip {self.vip} "
                        f"is IPv{self.vip.version}; DSR forwards the packet unchanged, so a "
                        "real must have the family of its vip",
                    )
                )
            if real.address in first:
                problems.append(
                    (
                        loc,
                        f"{real.address} is listed twice in this service (also "
                        f"reals[{first[real.address]}]); list it once and use weight "
                        "to give it more traffic",
                    )
                )
            first.setdefault(real.address, j)
        if problems:
            raise ConfigProblems(problems)
        return self

    @model_validator(mode="after")
    def _check_checks(self) -> Service:
        problems = service_check_problems(self.port, self.check, [r.check for r in self.reals])
        if self.min_healthy > len(self.reals):
            problems.append(
                (
                    ("min_healthy",),
                    f"min_healthy {self.min_healthy} is more than the service's "
                    f"{len(self.reals)} reals, so it would never take a new flow; use at most "
                    f"{len(self.reals)}",
                )
            )
        if problems:
            raise ConfigProblems(problems)
        return self

    @property
    def family(self) -> int:
        """4 or 6."""
        return self.vip.version

    @property
    def port_number(self) -> int:
        """The port, 0 for all ports."""
        return self.port

    @property
    def key(self) -> tuple[IPAddress, str, int]:
        """What makes a service unique: (vip, protocol, port_number)."""
        return (self.vip, self.protocol, self.port)

    @property
    def display_name(self) -> str:
        if self.name is not None:
            return self.name
        host = f"[{self.vip}]" if self.vip.version == 6 else str(self.vip)
        return f"{host}:{self.port or 'all'}/{self.protocol}"


def cross_service_problems(
    services: Sequence[tuple[int, Service]], limits: Limits | None
) -> list[tuple[Loc, str]]:
    """Rules that look at several services at once. `services` pairs each service
    with its index in the file, so that the loader can also run these checks on
    the services that are valid when others are not; `limits` None skips the
    checks against the limits. Locations are relative to the top level."""
    problems: list[tuple[Loc, str]] = []
    by_key: dict[tuple[IPAddress, str, int], int] = {}
    by_name: dict[str, int] = {}
    vips: dict[IPAddress, int] = {}
    local_of: dict[IPAddress, tuple[bool, Loc]] = {}
    for i, svc in services:
        vips.setdefault(svc.vip, i)
    for i, svc in services:
        if svc.key in by_key:
            port = svc.port or "all"
            problems.append(
                (
                    ("services", i),
                    f"duplicate of services[{by_key[svc.key]}] (same vip {svc.vip}, protocol "
                    f"{svc.protocol}, port {port}); merge their reals into one service",
                )
            )
        duplicate = by_key.setdefault(svc.key, i) != i
        # a duplicate's default name is the same as the first's: one message is enough
        if svc.display_name in by_name and not (duplicate and svc.name is None):
            loc: Loc = ("services", i, "name") if svc.name is not None else ("services", i)
            problems.append(
                (
                    loc,
                    f"the name {svc.display_name!r} is also used by services"
                    f"[{by_name[svc.display_name]}]; give each service a unique name",
                )
            )
        by_name.setdefault(svc.display_name, i)
        for j, real in enumerate(svc.reals):
            rloc: Loc = ("services", i, "reals", j, "address")
            if real.address in vips:
                problems.append(
                    (
                        rloc,
                        f"{real.address} is a vip (services[{vips[real.address]}]); "
                        "a real must be a server's own address, not a vip",
                    )
                )
            seen = local_of.setdefault(real.address, (real.local, rloc))
            if seen[0] != real.local:
                problems.append(
                    (
                        ("services", i, "reals", j, "local"),
                        f"{real.address} is local: {str(real.local).lower()} here but local: "
                        f"{str(seen[0]).lower()} in {format_loc(seen[1][:-1])}; a real is "
                        "either this node or not: make them agree",
                    )
                )
    if limits is not None:
        problems += limit_problems(services, limits)
    return problems


def limit_problems(
    services: Sequence[tuple[int, Service]], limits: Limits
) -> list[tuple[Loc, str]]:
    """What the data plane's maps cannot hold. Each problem points at the first
    entry that does not fit and names the limit, so that `carom check` and a
    reload refuse what the apply would fail on."""
    problems: list[tuple[Loc, str]] = []
    if len(services) > limits.max_services:
        i = services[limits.max_services][0]
        problems.append(
            (
                ("services", i),
                f"{len(services)} services but limits.max_services is {limits.max_services}: "
                f"this one and the {len(services) - limits.max_services - 1} after it do not "
                f"fit in the services map; raise limits.max_services (up to {MAX_SERVICES})",
            )
        )
    vips: dict[IPAddress, None] = {}
    reals: dict[IPAddress, None] = {}
    vip_over: Loc | None = None
    real_over: Loc | None = None
    for i, svc in services:
        vips.setdefault(svc.vip)
        if vip_over is None and len(vips) > limits.max_vips:
            vip_over = ("services", i, "vip")
        for j, real in enumerate(svc.reals):
            reals.setdefault(real.address)
            if real_over is None and len(reals) > limits.max_reals - 1:
                real_over = ("services", i, "reals", j, "address")
        weighted = sum(1 for r in svc.reals if r.weight > 0)
        if weighted > limits.maglev_table_size:
            wanted = min(next_prime(weighted * SLOTS_PER_REAL), MAGLEV_MAX)
            problems.append(
                (
                    ("services", i, "reals"),
                    f"{weighted} reals with weight > 0 but limits.maglev_table_size is "
                    f"{limits.maglev_table_size}: some would get no Maglev slot; raise "
                    f"limits.maglev_table_size (for example to {wanted})",
                )
            )
    if vip_over is not None:
        problems.append(
            (
                vip_over,
                f"{len(vips)} distinct vips but limits.max_vips is {limits.max_vips}: this "
                "is the first that does not fit in the vip_addrs map; raise "
                f"limits.max_vips (up to {MAX_VIPS})",
            )
        )
    if real_over is not None:
        problems.append(
            (
                real_over,
                f"{len(reals)} distinct real addresses but limits.max_reals is "
                f"{limits.max_reals} (real ids 1..{limits.max_reals - 1}): this is the first "
                f"that does not fit; raise limits.max_reals (up to {MAX_REALS})",
            )
        )
    return problems


class Config(_Model):
    """A whole carom.yaml."""

    instance: Instance = Field(
        default="default",
        description="[a-z0-9-]{1,15}; names the pin directory <bpffs>/carom/<instance> and "
        "the default control socket",
        examples=["default"],
    )
    interfaces: Interfaces = Field(
        description="interfaces where the XDP program attaches; at least one, unique",
        examples=[["eth0"]],
    )
    xdp_mode: Literal["auto", "native", "generic"] = Field(
        default="auto",
        description="native (driver), generic (skb), or auto: native, falling back to "
        "generic with a warning",
        examples=["auto"],
    )
    bpffs: AbsPath = Field(
        default=Path("/sys/fs/bpf"),
        description="root of the bpffs that holds the pins",
        examples=["/sys/fs/bpf"],
    )
    control_socket: SocketPath | None = Field(
        default=None,
        description="path of the unix control socket; null: /run/carom/<instance>.sock",
        examples=["/run/carom/default.sock"],
    )
    node: Node = Field(default=Node(), description="this node's role and policies", examples=[{}])
    cluster: Cluster | None = Field(
        default=None,
        description="active/backup directors sharing connection state; none: a lone director",
        examples=[None],
    )
    limits: Limits = Field(default=Limits(), description="BPF map sizes", examples=[{}])
    timeouts: Timeouts = Field(default=Timeouts(), description="idle timeouts", examples=[{}])
    health: HealthSettings = Field(
        default=HealthSettings(),
        description="node-wide health-check settings (the VIP path's probe namespace)",
        examples=[{}],
    )
    services: tuple[Service, ...] = Field(
        default=(), description="the virtual services", examples=[[]]
    )

    @model_validator(mode="after")
    def _check_services(self) -> Config:
        problems = cross_service_problems(list(enumerate(self.services)), self.limits)
        problems += vip_path_problems(list(enumerate(self.services)), self.health)
        if problems:
            raise ConfigProblems(problems)
        return self

    def warnings(self) -> list[str]:
        """Valid but probably not what was meant, one sentence each."""
        out: list[str] = []
        if not self.services:
            out.append("no services: carom passes every packet to the local stack")
        slots = self.limits.maglev_table_size
        for svc in self.services:
            name = svc.display_name
            weighted = sum(1 for r in svc.reals if r.weight > 0)
            if not svc.reals:
                out.append(f"service {name} has no reals: new connections will be dropped")
            elif not weighted:
                out.append(
                    f"service {name}: all reals have weight 0: new connections will be dropped"
                )
            elif weighted * SLOTS_PER_REAL > slots:
                wanted = min(next_prime(weighted * SLOTS_PER_REAL), MAGLEV_MAX)
                out.append(
                    f"service {name}: {weighted} real{'s' if weighted > 1 else ''} share {slots} "
                    "Maglev slots, so their "
                    f"shares of traffic will be uneven; limits.maglev_table_size: {wanted} "
                    f"keeps them within about 1%"
                )
        return out
