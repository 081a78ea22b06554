"""The declarative configuration: the pydantic models of carom.yaml.

Every rule a configuration must follow lives here, so a `Config` is valid however
it was built (from YAML by `carom.config.load`, or in Python by tests). Messages
say what is wrong and how to fix it; `load.py` prefixes the file, the line and
the field path. docs/config.md is the reference for every field.

Scalars are strict (`weight: "5"` is an error, not 5): the loader reads YAML with
the 1.2 core schema, so the types a file gives are the types its author wrote."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_serializer, model_validator

from carom.config.checks import Check, HealthSettings, service_check_problems, vip_path_problems
from carom.config.cluster import Cluster
from carom.config.fields import (
    MAGLEV_MAX,
    MAX_PORTS_PER_SERVICE,
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
    PortItem,
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
    port_item_range,
)
from carom.config.fields import StrictModel as _Model
from carom.config.fields import check_method as _method
from carom.config.fields import int_range as _int_range
from carom.config.limits import MAX_REALS, MAX_SERVICES, MAX_VIPS, Limits
from carom.config.ops import Api, Metrics

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
    port: Port | None = Field(
        default=None,
        description="1..65535, or all (stored as 0): every port of the vip; "
        "a specific port on the same vip and protocol wins; give port or ports",
        examples=[80],
    )
    ports: tuple[PortItem, ...] | None = Field(
        default=None,
        description='several ports and ranges ("5222-5223", inclusive) of one service '
        "instead of port: one Maglev table, and persistence_timeout keeps a client on "
        "the same real across all of them (like an ipvsadm firewall-mark service)",
        examples=[[25, 110, 143, "5222-5223"]],
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
    def _port_out(self, port: int | None) -> int | str | None:
        return "all" if port == 0 else port  # so that a dump validates again

    @model_validator(mode="after")
    def _check_ports(self) -> Service:
        if self.port is None and self.ports is None:
            raise ConfigProblems(
                [
                    (
                        ("port",),
                        "required field is missing; add it, for example port: 80 "
                        '(or ports: [25, 143, "5222-5223"] for several)',
                    )
                ]
            )
        if self.port is not None and self.ports is not None:
            raise ConfigProblems(
                [(("ports",), "give either port or ports, not both; remove one of them")]
            )
        if self.ports is None:
            return self
        if not self.ports:
            raise ConfigProblems(
                [(("ports",), "an empty list; list at least one port, or use port: all")]
            )
        problems: list[tuple[Loc, str]] = []
        owner: dict[int, int] = {}
        for k, item in enumerate(self.ports):
            clash = next((p for p in port_item_range(item) if p in owner), None)
            if clash is not None:
                j = owner[clash]
                problems.append(
                    (
                        ("ports", k),
                        f"port {clash} is also in ports[{j}] ({self.ports[j]}); "
                        "list each port once",
                    )
                )
                continue
            for p in port_item_range(item):
                owner[p] = k
        if len(owner) > MAX_PORTS_PER_SERVICE:
            problems.append(
                (
                    ("ports",),
                    f"{len(owner)} ports; a service has at most {MAX_PORTS_PER_SERVICE} "
                    "(each is one entry of the services map): split it, or use port: all",
                )
            )
        if problems:
            raise ConfigProblems(problems)
        return self

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
        problems = service_check_problems(
            self.port_number, self.check, [r.check for r in self.reals]
        )
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
        """The port, 0 for all ports; the first port of `ports` (the service's
        identity in the maps and status, and the health check's default)."""
        if self.port is not None:
            return self.port
        assert self.ports  # _check_ports
        return port_item_range(self.ports[0])[0]

    @property
    def port_numbers(self) -> tuple[int, ...]:
        """Every port of the service (0: all ports): one services-map entry each."""
        if self.port is not None:
            return (self.port,)
        assert self.ports is not None  # _check_ports
        return tuple(p for item in self.ports for p in port_item_range(item))

    @property
    def key(self) -> tuple[IPAddress, str, int]:
        """What makes a service unique: (vip, protocol, port_number)."""
        return (self.vip, self.protocol, self.port_number)

    @property
    def ports_text(self) -> str:
        """The ports as written: "80", "all", or "25,143,5222-5223"."""
        if self.port is not None:
            return str(self.port or "all")
        assert self.ports is not None
        return ",".join(str(p) for p in self.ports)

    @property
    def display_name(self) -> str:
        if self.name is not None:
            return self.name
        host = f"[{self.vip}]" if self.vip.version == 6 else str(self.vip)
        return f"{host}:{self.ports_text}/{self.protocol}"


def addr_key(address: IPAddress) -> int:
    """An address as a dict key that is cheap to hash (an ipaddress object
    hashes through hex()); IPv6 keys are negative, so the families never meet."""
    return int(address) if type(address) is IPv4Address else ~int(address)


def cross_service_problems(
    services: Sequence[tuple[int, Service]], limits: Limits | None
) -> list[tuple[Loc, str]]:
    """Rules that look at several services at once. `services` pairs each service
    with its index in the file, so that the loader can also run these checks on
    the services that are valid when others are not; `limits` None skips the
    checks against the limits. Locations are relative to the top level."""
    problems: list[tuple[Loc, str]] = []
    owners: dict[tuple[int, str, int], int] = {}  # (vip key, protocol, port) -> service
    multi: set[int] = set()  # services given with ports
    by_name: dict[str, int] = {}
    vips: dict[int, int] = {}
    local_of: dict[int, tuple[bool, int, int]] = {}  # address key -> (local, service, real)
    for i, svc in services:
        vips.setdefault(addr_key(svc.vip), i)
    for i, svc in services:
        vkey = addr_key(svc.vip)
        duplicate = False
        if svc.ports is None:
            first = owners.setdefault((vkey, svc.protocol, svc.port_number), i)
            if first != i and first not in multi:
                duplicate = True
                problems.append(
                    (
                        ("services", i),
                        f"duplicate of services[{first}] (same vip {svc.vip}, protocol "
                        f"{svc.protocol}, port {svc.ports_text}); merge their reals into one "
                        "service",
                    )
                )
            elif first != i:
                problems.append(
                    (
                        ("services", i, "port"),
                        f"port {svc.port} of vip {svc.vip}/{svc.protocol} is also in "
                        f"services[{first}].ports; a port belongs to one service: remove it "
                        "from one of them",
                    )
                )
        else:
            multi.add(i)
            for k, item in enumerate(svc.ports):
                for port in port_item_range(item):
                    first = owners.setdefault((vkey, svc.protocol, port), i)
                    if first != i:
                        problems.append(
                            (
                                ("services", i, "ports", k),
                                f"port {port} of vip {svc.vip}/{svc.protocol} is also served "
                                f"by services[{first}]; a port belongs to one service: remove "
                                "it from one of them",
                            )
                        )
                        break  # one message per item
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
        # 32k reals at the schema's maximum: one cheap key per real, and the
        # locations built only for a problem (this runs on every reload)
        for j, real in enumerate(svc.reals):
            key = addr_key(real.address)
            if key in vips:
                problems.append(
                    (
                        ("services", i, "reals", j, "address"),
                        f"{real.address} is a vip (services[{vips[key]}]); "
                        "a real must be a server's own address, not a vip",
                    )
                )
            seen = local_of.setdefault(key, (real.local, i, j))
            if seen[0] != real.local:
                first_loc = format_loc(("services", seen[1], "reals", seen[2]))
                problems.append(
                    (
                        ("services", i, "reals", j, "local"),
                        f"{real.address} is local: {str(real.local).lower()} here but local: "
                        f"{str(seen[0]).lower()} in {first_loc}; "
                        "a real is either this node or not: make them agree",
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
    entries = 0
    for i, svc in services:
        entries += len(svc.port_numbers) if svc.ports else 1
        if entries > limits.max_services >= len(services):
            total = sum(len(s.port_numbers) if s.ports else 1 for _, s in services)
            problems.append(
                (
                    ("services", i, "ports" if svc.ports else "port"),
                    f"the services' ports need {total} entries in the services map (one "
                    f"per port) but limits.max_services is {limits.max_services}: this is "
                    "the first service that does not fit; raise limits.max_services to at "
                    f"least {total} (up to {MAX_SERVICES})",
                )
            )
            break
    vips: dict[int, None] = {}
    reals: dict[int, None] = {}
    vip_over: Loc | None = None
    real_over: Loc | None = None
    for i, svc in services:
        vips.setdefault(addr_key(svc.vip))
        if vip_over is None and len(vips) > limits.max_vips:
            vip_over = ("services", i, "vip")
        for j, real in enumerate(svc.reals):
            reals.setdefault(addr_key(real.address))
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
    metrics: Metrics | None = Field(
        default=None,
        description="Prometheus endpoint (GET /metrics); none: off",
        examples=[{"listen": "127.0.0.1:9641"}],
    )
    api: Api | None = Field(
        default=None,
        description="HTTP API (JSON, /openapi.json); none: off",
        examples=[{"listen": "127.0.0.1:9642", "token_file": "/etc/carom/api.token"}],
    )

    @model_validator(mode="after")
    def _check_services(self) -> Config:
        problems = self.whole_config_problems(self.services)
        if problems:
            raise ConfigProblems(problems)
        return self

    def whole_config_problems(self, services: Sequence[Service]) -> list[tuple[Loc, str]]:
        """Every rule that needs more than one service, or a service and the top
        level: Config's validator, and the incremental loader (which validates
        the top level and the services apart) run exactly these."""
        numbered = list(enumerate(services))
        return cross_service_problems(numbered, self.limits) + vip_path_problems(
            numbered, self.health
        )

    def warnings(self) -> list[str]:
        """Valid but probably not what was meant, one sentence each."""
        out: list[str] = []
        if not self.services:
            out.append("no services: carom passes every packet to the local stack")
        for svc in self.services:
            out += service_warnings(svc, self.limits.maglev_table_size)
        return out


def service_warnings(svc: Service, slots: int) -> list[str]:
    """Config.warnings() of one service, with `slots` Maglev slots per table
    (a function of the two alone: the daemon keeps them per service)."""
    name = svc.display_name
    weighted = sum(1 for r in svc.reals if r.weight > 0)
    if not svc.reals:
        return [f"service {name} has no reals: new connections will be dropped"]
    if not weighted:
        return [f"service {name}: all reals have weight 0: new connections will be dropped"]
    if weighted * SLOTS_PER_REAL > slots:
        wanted = min(next_prime(weighted * SLOTS_PER_REAL), MAGLEV_MAX)
        return [
            f"service {name}: {weighted} real{'s' if weighted > 1 else ''} share {slots} "
            "Maglev slots, so their "
            f"shares of traffic will be uneven; limits.maglev_table_size: {wanted} "
            f"keeps them within about 1%"
        ]
    return []
