"""The declarative configuration: the pydantic models of carom.yaml.

Every rule a configuration must follow lives here, so a `Config` is valid however
it was built (from YAML by `carom.config.load`, or in Python by tests). Messages
say what is wrong and how to fix it; `load.py` prefixes the file, the line and
the field path. docs/config.md is the reference for every field.

Scalars are strict (`weight: "5"` is an error, not 5): the loader reads YAML with
the 1.2 core schema, so the types a file gives are the types its author wrote."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from carom.config.checks import Check, service_check_problems

IPAddress = IPv4Address | IPv6Address
Loc = tuple[str | int, ...]  # a field path: ("services", 0, "reals", 1, "address")

WEEK_S = 86400 * 7
MAGLEV_MIN, MAGLEV_MAX = 13, 1000003  # both prime
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1: the NUL terminator
IFNAME_MAX = 15  # IFNAMSIZ - 1
SLOTS_PER_REAL = 100  # Maglev: M >= 100 N keeps every share within about 1%


# --- messages ---------------------------------------------------------------


def format_loc(loc: Loc) -> str:
    """("services", 0, "reals", 1, "address") -> "services[0].reals[1].address"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def describe(value: Any) -> str:
    """A found value, in the words of someone reading the YAML file."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class ConfigProblems(ValueError):
    """Problems found by one cross-field check, each at its own location relative
    to the object that was checked. The loader reports one line per problem."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems = list(problems)
        super().__init__(
            "; ".join(f"{format_loc(loc)}: {msg}" if loc else msg for loc, msg in self.problems)
        )


def _fail(message: str) -> NoReturn:
    # The message goes through the context so that braces in user input stay as typed.
    raise PydanticCustomError("carom", "{message}", {"message": message})


# --- field types --------------------------------------------------------------


def _int_range(lo: int, hi: int, unit: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            _fail(f"{value} is out of range; use {lo} to {hi}{unit}")
        return value

    return AfterValidator(check)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def nearest_primes(n: int) -> tuple[int | None, int | None]:
    """The largest prime below n and the smallest above it (None past the range)."""
    below = next((p for p in range(n - 1, MAGLEV_MIN - 1, -1) if is_prime(p)), None)
    above = next((p for p in range(n + 1, MAGLEV_MAX + 1) if is_prime(p)), None)
    return below, above


def next_prime(n: int) -> int:
    while not is_prime(n):
        n += 1
    return n


def _maglev_size(value: int) -> int:
    if not is_prime(value):
        below, above = nearest_primes(value)
        options = " or ".join(str(p) for p in (below, above) if p is not None)
        _fail(f"{value} is not prime; a Maglev table needs a prime size: use {options}")
    return value


def _instance(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]{1,15}", value):
        _fail(
            f"{value!r} is not a valid instance name; use 1 to 15 characters "
            "from a-z, 0-9 and '-', such as default"
        )
    return value


def _interface(value: str) -> str:
    if not value:
        _fail("an interface name cannot be empty; use a name such as eth0")
    if len(value) > IFNAME_MAX:
        _fail(f"{value!r} is longer than {IFNAME_MAX} characters, the Linux limit")
    if value in (".", "..") or any(c in value for c in "/:") or any(c.isspace() for c in value):
        _fail(
            f"{value!r} is not a Linux interface name "
            "(no '/', ':' or spaces, not '.' or '..'); use a name such as eth0"
        )
    return value


def _unique_interfaces(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        _fail("at least one interface is needed; for example interfaces: [eth0]")
    first: dict[str, int] = {}
    problems: list[tuple[Loc, str]] = []
    for i, name in enumerate(names):
        if name in first:
            problems.append(
                ((i,), f"{name!r} is listed twice (also interfaces[{first[name]}]); list it once")
            )
        first.setdefault(name, i)
    if problems:
        raise ConfigProblems(problems)
    return names


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value:
        path = Path(value)
    else:
        _fail(f"expected an absolute path such as /sys/fs/bpf, found {describe(value)}")
    if not path.is_absolute():
        _fail(f"{str(path)!r} is not an absolute path; start it with '/'")
    return path


def _socket_path(path: Path) -> Path:
    if len(str(path).encode()) > SUN_PATH_MAX:
        _fail(
            f"the path is {len(str(path).encode())} bytes; a unix socket path "
            f"must be at most {SUN_PATH_MAX}: choose a shorter one"
        )
    return path


def _service_name(value: str) -> str:
    if not value or len(value) > 64 or any(not c.isprintable() or c.isspace() for c in value):
        _fail(f"{value!r} is not a valid name; use 1 to 64 characters without spaces, such as web")
    return value


def _ip(example: str) -> Callable[[Any], IPAddress]:
    """Parse an address from text; the messages name the field's example."""

    def parse(value: Any) -> IPAddress:
        if isinstance(value, IPv4Address | IPv6Address):
            return value
        if not isinstance(value, str):
            _fail(f"expected an IP address such as {example}, found {describe(value)}")
        if "/" in value:
            _fail(
                f"{value!r} is a network, not an address; "
                f"write a single address without a prefix length, such as {example}"
            )
        if "%" in value:
            _fail(f"{value!r} has a zone index; write the address without '%...'")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            _fail(f"{value!r} is not an IP address; use an IPv4 or IPv6 address such as {example}")
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            _fail(
                f"{value} is an IPv4-mapped IPv6 address; IPv4 packets carry IPv4 "
                f"addresses: write {address.ipv4_mapped}"
            )
        return address

    return parse


def _special(address: IPAddress) -> str | None:
    """What makes an address unusable as a VIP or a real, if anything."""
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address == IPv4Address("255.255.255.255"):
        return "the broadcast address"
    return None


def _vip(address: IPAddress) -> IPAddress:
    what = _special(address)
    if what:
        _fail(
            f"{address} is {what}; a vip must be a unicast address that clients "
            "reach through this node, such as 192.0.2.100"
        )
    return address


def _real(address: IPAddress) -> IPAddress:
    what = _special(address)
    if what == "a loopback address":
        _fail(
            f"{address} is a loopback address; for this node itself give its own "
            "address with local: true"
        )
    if what:
        _fail(f"{address} is {what}; a real must be a server's unicast address, such as 192.0.2.11")
    return address


def _port(value: Any) -> Any:
    if value == "all":
        return 0  # what the data plane's (vip, 0, protocol) lookup means
    if isinstance(value, str) and value.strip().isdigit():
        _fail(f"expected a port number, found the text {value!r}; write it without quotes")
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(f"expected a port 1 to 65535 or all, found {describe(value)}")
    if not 1 <= value <= 65535:
        _fail(f"{value} is not a port; use 1 to 65535, or all for every port of the vip")
    return value


def _method(value: Any) -> Any:
    if value in ("nat", "tunnel"):
        _fail(f"method {value!r} is not supported yet; use dsr")
    return value


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Seconds = Annotated[int, Strict(), _int_range(1, WEEK_S, " seconds (7 days)")]
Instance = Annotated[str, Strict(), AfterValidator(_instance)]
Interface = Annotated[str, Strict(), AfterValidator(_interface)]
Interfaces = Annotated[tuple[Interface, ...], AfterValidator(_unique_interfaces)]
AbsPath = Annotated[Path, BeforeValidator(_path)]
SocketPath = Annotated[Path, BeforeValidator(_path), AfterValidator(_socket_path)]
ServiceName = Annotated[str, Strict(), AfterValidator(_service_name)]
VipAddress = Annotated[IPAddress, BeforeValidator(_ip("192.0.2.100")), AfterValidator(_vip)]
RealAddress = Annotated[IPAddress, BeforeValidator(_ip("192.0.2.11")), AfterValidator(_real)]
Port = Annotated[int, BeforeValidator(_port)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class Limits(_Model):
    """Sizes of the pinned BPF maps. Fixed for the life of the maps: changing them
    needs `carom stop --detach` and a start."""

    max_services: Annotated[Int, _int_range(1, 4096)] = Field(
        default=64, description="services (rows of the Maglev map)", examples=[64]
    )
    max_reals: Annotated[Int, _int_range(2, 65536)] = Field(
        default=4096, description="real ids are 1..max_reals-1 (0 means none)", examples=[4096]
    )
    maglev_table_size: Annotated[
        Int, _int_range(MAGLEV_MIN, MAGLEV_MAX), AfterValidator(_maglev_size)
    ] = Field(default=65537, description="slots per service; prime", examples=[65537])
    conn_table_size: Annotated[Int, _int_range(1024, 67108864)] = Field(
        default=1048576, description="entries of the LRU connection table", examples=[1048576]
    )
    persist_table_size: Annotated[Int, _int_range(1024, 16777216)] = Field(
        default=65536, description="entries of the LRU client-persistence table", examples=[65536]
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
        if len(services) > limits.max_services:
            problems.append(
                (
                    ("services",),
                    f"{len(services)} services but limits.max_services is "
                    f"{limits.max_services}; raise limits.max_services (up to 4096)",
                )
            )
        if len(local_of) > limits.max_reals - 1:
            problems.append(
                (
                    ("services",),
                    f"{len(local_of)} distinct real addresses but limits.max_reals is "
                    f"{limits.max_reals} (real ids 1..{limits.max_reals - 1}); raise "
                    "limits.max_reals (up to 65536)",
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
    limits: Limits = Field(default=Limits(), description="BPF map sizes", examples=[{}])
    timeouts: Timeouts = Field(default=Timeouts(), description="idle timeouts", examples=[{}])
    services: tuple[Service, ...] = Field(
        default=(), description="the virtual services", examples=[[]]
    )

    @model_validator(mode="after")
    def _check_services(self) -> Config:
        problems = cross_service_problems(list(enumerate(self.services)), self.limits)
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
