"""The `check:` mapping of a service or a real: the health-check schema.

One flat model for every kind, so that a misplaced field is reported where it
is written ("path does not apply to kind tcp") and docs/config.md has one table.
`carom.health.plan` turns a validated Check into the runtime definition."""

from __future__ import annotations

import re
from ipaddress import IPv4Interface, IPv6Interface
from typing import Annotated, Any, Literal

import dns.exception
import dns.rcode
import dns.rdatatype
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    model_serializer,
)
from pydantic import model_validator as _model_validator

from carom.config.fields import ConfigProblems, Int, Loc
from carom.config.fields import fail as _fail

KINDS = ("tcp", "syn", "http", "https", "udp", "dns", "exec", "agent")
COMMON = {"kind", "port", "via", "interval", "timeout", "rise", "fall", "fast_interval"}
# the fields each kind accepts besides the common ones
OWN: dict[str, set[str]] = {
    "tcp": set(),
    "syn": set(),
    "http": {"method", "path", "host", "expect_status", "body"},
    "https": {"method", "path", "host", "expect_status", "body", "tls_verify"},
    "udp": {"send", "expect"},
    "dns": {"query", "query_type", "transport", "expect_rcode"},
    "exec": {"command"},
    "agent": {"send"},
}
FAST_INTERVAL = 0.3  # seconds, default fast_interval (capped at the interval)


def _range(lo: float, hi: float, unit: str) -> AfterValidator:
    def check(value: float | None) -> float | None:
        if value is not None and not lo <= value <= hi:
            _fail(f"{value:g} is out of range; use {lo:g} to {hi:g}{unit}")
        return value

    return AfterValidator(check)


def _port(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= 65535:
        _fail(f"{value} is not a port; use 1 to 65535")
    return value


def _http_token(what: str, example: str) -> AfterValidator:
    def check(value: str | None) -> str | None:
        if value is None:  # host: null (a dump of the default) is valid
            return value
        if not value or any(c.isspace() or not c.isprintable() for c in value):
            _fail(
                f"{value!r} is not a valid {what}: no spaces or control characters; e.g. {example}"
            )
        return value

    return AfterValidator(check)


def _path(value: str) -> str:
    if not value.startswith("/"):
        _fail(f"{value!r} does not start with '/'; write the path as in a URL, e.g. /healthz")
    return value


def _status(value: int) -> int:
    if not 100 <= value <= 599:
        _fail(f"{value} is not an HTTP status; use 100 to 599, e.g. 200")
    return value


def _latin1(value: str) -> str:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        _fail(
            "send and expect are bytes: use characters up to \\xff "
            '(\\xNN escapes in a double-quoted string, e.g. "\\x00\\x01")'
        )
    return value


def _query_type(value: str) -> str:
    try:
        dns.rdatatype.from_text(value)
    except dns.exception.DNSException:
        _fail(f"{value!r} is not a DNS record type; use one such as A, AAAA, SOA, NS")
    return value.upper()


def _rcode(value: str) -> str:
    try:
        code = dns.rcode.from_text(value)
    except dns.exception.DNSException:
        _fail(f"{value!r} is not a DNS rcode; use one such as NOERROR, NXDOMAIN, REFUSED")
    return dns.rcode.to_text(code)


def _query_name(value: str) -> str:
    if not value or len(value) > 253 or not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        _fail(f"{value!r} is not a DNS name; use one such as example.com or . for the root")
    return value


def _command(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value or not value[0]:
        _fail(
            "the command is empty; give the program and its arguments, "
            'e.g. ["/usr/local/bin/check-app"]'
        )
    return value


Float = Annotated[float, Strict()]
Text = Annotated[str, Strict()]


class Check(BaseModel):
    """A health check, per service (the default for its reals) or per real."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tcp", "syn", "http", "https", "udp", "dns", "exec", "agent"] = Field(
        description="what the probe does", examples=["http"]
    )
    port: Annotated[Int | None, BeforeValidator(_port)] = Field(
        default=None,
        description="port probed; null: the service's port (required for agent, "
        "and for a service with port: all)",
        examples=[8080],
    )
    via: Literal["real", "vip"] = Field(
        default="real",
        description="real: the probe goes to the real's own address; vip: to the VIP, "
        "delivered to the real's MAC, as DSR traffic goes (needs health.probe_source)",
        examples=["real"],
    )
    interval: Annotated[Float, _range(0.1, 3600, " seconds")] = Field(
        default=1.0, description="seconds between probes while the state is steady", examples=[1]
    )
    timeout: Annotated[Float, _range(0.05, 60, " seconds")] = Field(
        default=0.6, description="seconds a probe may take; at most interval", examples=[0.6]
    )
    rise: Annotated[Int, _range(1, 100, "")] = Field(
        default=2, description="consecutive successes that bring a real up", examples=[2]
    )
    fall: Annotated[Int, _range(1, 100, "")] = Field(
        default=3, description="consecutive failures that take a real down", examples=[3]
    )
    fast_interval: Annotated[Float | None, _range(0.05, 3600, " seconds")] = Field(
        default=None,
        description="seconds between probes while a change is pending; null: 0.3 "
        "(or interval if shorter)",
        examples=[0.3],
    )
    # http, https
    method: Literal["GET", "HEAD", "OPTIONS"] = Field(
        default="GET", description="http: request method", examples=["GET"]
    )
    path: Annotated[Text, _http_token("path", "/healthz"), AfterValidator(_path)] = Field(
        default="/", description="http: request path and query", examples=["/healthz"]
    )
    host: Annotated[Text | None, _http_token("host", "www.example.com")] = Field(
        default=None,
        description="http: Host header and TLS server name; null: the probed address",
        examples=["www.example.com"],
    )
    expect_status: tuple[Annotated[Int, AfterValidator(_status)], ...] = Field(
        default=(), description="http: accepted status codes; []: any 2xx or 3xx", examples=[[200]]
    )
    body: Text | None = Field(
        default=None, description="http: text the body must contain", examples=["ok"]
    )
    tls_verify: Annotated[bool, Strict()] = Field(
        default=False,
        description="https: verify the certificate (system CAs) and its name (host)",
        examples=[False],
    )
    # udp, agent
    send: Annotated[Text, AfterValidator(_latin1)] = Field(
        default="", description="udp, agent: bytes sent first", examples=["PING\\n"]
    )
    expect: Annotated[Text, AfterValidator(_latin1)] = Field(
        default="",
        description="udp: bytes the reply must contain; empty: any reply",
        examples=["PONG"],
    )
    # dns
    query: Annotated[Text, AfterValidator(_query_name)] = Field(
        default=".", description="dns: name queried", examples=["example.com"]
    )
    query_type: Annotated[Text, AfterValidator(_query_type)] = Field(
        default="SOA", description="dns: record type", examples=["A"]
    )
    transport: Literal["udp", "tcp"] = Field(
        default="udp", description="dns: udp or tcp", examples=["udp"]
    )
    expect_rcode: Annotated[Text, AfterValidator(_rcode)] = Field(
        default="NOERROR", description="dns: the rcode that means up", examples=["NOERROR"]
    )
    # exec
    command: Annotated[tuple[Text, ...], AfterValidator(_command)] = Field(
        default=(),
        description="exec: program and arguments, run without a shell",
        examples=[["/usr/local/bin/check-app", "--quick"]],
    )

    @_model_validator(mode="after")
    def _check_fields(self) -> Check:
        problems: list[tuple[Loc, str]] = []
        allowed = COMMON | OWN[self.kind]
        for name in sorted(self.model_fields_set - allowed):
            users = [k for k in KINDS if name in OWN[k]]
            problems.append(
                (
                    (name,),
                    f"{name} does not apply to kind {self.kind} (it is for "
                    f"{', '.join(users)}); remove it",
                )
            )
        if self.timeout > self.interval:
            which = "timeout" if "timeout" in self.model_fields_set else "the default timeout"
            problems.append(
                (
                    ("timeout",),
                    f"{which} {self.timeout:g} s is longer than interval {self.interval:g} s; "
                    "probes of one real never overlap: set timeout to at most "
                    f"{self.interval:g}",
                )
            )
        if self.fast_interval is not None and self.fast_interval > self.interval:
            problems.append(
                (
                    ("fast_interval",),
                    f"fast_interval {self.fast_interval:g} s is longer "
                    f"than interval {self.interval:g} s; it is meant to be shorter",
                )
            )
        if self.kind == "exec" and not self.command:
            problems.append(
                ((), 'kind exec needs command, e.g. command: ["/usr/local/bin/check-app"]')
            )
        if self.kind == "agent" and self.port is None:
            problems.append(
                ((), "kind agent needs port: the port the agent listens on, e.g. port: 10000")
            )
        if problems:
            raise ConfigProblems(problems)
        return self

    @model_serializer(mode="wrap")
    def _only_own_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a dump names only the fields of its kind, so that it validates again
        data: dict[str, Any] = handler(self)
        allowed = COMMON | OWN[self.kind]
        return {k: v for k, v in data.items() if k in allowed}

    @property
    def effective_fast_interval(self) -> float:
        if self.fast_interval is not None:
            return self.fast_interval
        return min(FAST_INTERVAL, self.interval)


def service_check_problems(
    port: int, service: Check | None, reals: list[Check | None]
) -> list[tuple[Loc, str]]:
    """Rules between a service and its checks: a service on every port (port: all)
    has no port to probe, so each check that probes one must name it."""
    problems: list[tuple[Loc, str]] = []
    if port != 0:
        return problems
    needs = (
        "the service has port: all, so the check must name the port to probe; add port: 80 (say)"
    )
    if service is not None and service.port is None and service.kind != "exec":
        problems.append((("check", "port"), needs))
    for j, check in enumerate(reals):  # a real without its own check: reported above
        if check is not None and check.port is None and check.kind != "exec":
            problems.append((("reals", j, "check", "port"), needs))
    return problems


def _probe_source(value: Any) -> Any:
    if value is None or isinstance(value, IPv4Interface):
        return value
    if not isinstance(value, str):
        _fail("write the address with its prefix length as text, e.g. 192.0.2.250/24")
    try:
        iface = IPv4Interface(value)
    except ValueError:
        _fail(f"{value!r} is not an IPv4 address with a prefix; e.g. 192.0.2.250/24")
    if "/" not in value or iface.network.prefixlen >= 31:
        _fail(
            f"{value!r} needs the prefix of the reals' segment (e.g. /24), so that the "
            "probe namespace reaches the reals directly"
        )
    return iface


def _probe_source6(value: Any) -> Any:
    if value is None or isinstance(value, IPv6Interface):
        return value
    if not isinstance(value, str):
        _fail("write the address with its prefix length as text, e.g. 2001:db8::fa/64")
    try:
        iface = IPv6Interface(value)
    except ValueError:
        _fail(f"{value!r} is not an IPv6 address with a prefix; e.g. 2001:db8::fa/64")
    if "/" not in value or iface.network.prefixlen >= 127:
        _fail(
            f"{value!r} needs the prefix of the reals' segment (e.g. /64), so that the "
            "probe namespace reaches the reals directly"
        )
    if iface.ip.is_link_local or iface.ip.is_multicast or iface.ip.is_unspecified:
        _fail(f"{value!r} must be a global or unique-local unicast address, e.g. 2001:db8::fa/64")
    return iface


def _ifname(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]{1,15}", value):
        _fail(f"{value!r} is not an interface name (1-15 characters, no spaces or '/')")
    return value


class HealthSettings(BaseModel):
    """Node-wide health-check settings: where probes through the VIP path start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    probe_source: Annotated[IPv4Interface | None, BeforeValidator(_probe_source)] = Field(
        default=None,
        description="address/prefix of the probe namespace on the reals' segment, for "
        "checks with via: vip; an address no other host uses",
        examples=["192.0.2.250/24"],
    )
    probe_source6: Annotated[IPv6Interface | None, BeforeValidator(_probe_source6)] = Field(
        default=None,
        description="the same for IPv6 services: address/prefix of the probe namespace on "
        "the reals' segment, added without duplicate address detection",
        examples=["2001:db8::fa/64"],
    )
    probe_interface: Annotated[Text | None, AfterValidator(_ifname)] = Field(
        default=None,
        description="the interface facing the reals (the probe namespace's macvlan "
        "parent); null: the first of interfaces",
        examples=["eth0"],
    )

    @model_serializer(mode="wrap")
    def _as_text(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.probe_source is not None:
            data["probe_source"] = str(self.probe_source)
        if self.probe_source6 is not None:
            data["probe_source6"] = str(self.probe_source6)
        return data


def vip_path_problems(
    services: list[tuple[int, Any]], health: HealthSettings
) -> list[tuple[Loc, str]]:
    """A check with via: vip needs the probe namespace's address in the VIP's family."""
    problems: list[tuple[Loc, str]] = []
    for i, svc in services:
        checks: list[tuple[Loc, Check | None]] = [(("services", i, "check"), svc.check)]
        checks += [(("services", i, "reals", j, "check"), r.check) for j, r in enumerate(svc.reals)]
        for loc, check in checks:
            if check is None or check.via != "vip":
                continue
            if svc.vip.version == 6 and health.probe_source6 is None:
                problems.append(
                    (
                        (*loc, "via"),
                        "via: vip for an IPv6 service needs health.probe_source6, an unused "
                        "address on the reals' segment for the probe namespace (e.g. health: "
                        "{probe_source6: 2001:db8::fa/64}); or use via: real",
                    )
                )
            elif svc.vip.version == 4 and health.probe_source is None:
                problems.append(
                    (
                        (*loc, "via"),
                        "via: vip needs health.probe_source, an unused address on the reals' "
                        "segment for the probe namespace (e.g. health: {probe_source: "
                        "192.0.2.250/24}); or use via: real",
                    )
                )
    return problems
