"""What every importer produces: carom services, the notes on what could not be
carried over, and the YAML text of the resulting config.

Importers are pure: text in, an `ImportResult` out. They never look at the host
(no name resolution, no interface list), so a conversion gives the same result
wherever it runs and golden tests pin it exactly."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

WEIGHT_MAX = 65535  # carom's largest real weight (IPVS allows up to 2^31 - 1)
PERSIST_MAX = 86400 * 7  # carom's largest persistence_timeout (docs/config.md)
DEFAULT_INTERFACE = "eth0"

# Why carom cannot carry over the common IPVS schedulers. Maglev is what carom
# does for every service, so a scheduler is only worth a warning when it differs.
SCHEDULERS: Mapping[str, str] = {
    "rr": "round robin",
    "wrr": "weighted round robin",
    "lc": "least-connection",
    "wlc": "weighted least-connection",
    "lblc": "locality-based least-connection",
    "lblcr": "locality-based least-connection with replication",
    "dh": "destination hashing",
    "sh": "source hashing",
    "sed": "shortest expected delay",
    "nq": "never queue",
    "fo": "weighted failover",
    "ovf": "weighted overflow",
    "twos": "weighted random twos choice",
}


def scheduler_note(name: str) -> str | None:
    """The warning for an IPVS scheduler, or None when carom does the same thing."""
    if name == "mh":
        return None  # IPVS's Maglev hashing: what carom does
    what = SCHEDULERS.get(name, "an unknown scheduler")
    return (
        f"scheduler {name} ({what}) not carried over: carom always spreads new flows "
        "by weight with Maglev consistent hashing"
    )


class ImportFailure(Exception):
    """The input cannot be read as the format it claims to be; nothing was written.
    One line per problem, `SOURCE:LINE: what is wrong; how to fix it`."""


@dataclass(frozen=True)
class Note:
    """One construct of the input that carom cannot carry over, and why."""

    line: int  # line of the construct in the input (1-based)
    message: str  # what was not carried over, why, and what to do instead

    def render(self, source: str) -> str:
        return f"{source}:{self.line}: {self.message}"


@dataclass(frozen=True)
class ImportedReal:
    """A real server of an imported service."""

    address: str  # normalised IP address text
    weight: int = 1  # carom weight, 0..65535
    local: bool = False  # this node itself (from --local)
    # its health check as the config's `check` mapping (keepalived checkers)
    check: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class ImportedService:
    """A carom service built from one service of the input."""

    vip: str  # normalised IP address text
    protocol: str  # tcp or udp
    port: int  # 1..65535, or 0 for every port
    line: int  # where the service was defined in the input
    persistence_timeout: int = 0  # seconds, 0 is off
    reals: tuple[ImportedReal, ...] = ()
    # a multi-port service (config `ports:`): ports and "first-last" ranges; the
    # port field is then unused
    ports: tuple[int | str, ...] = ()
    # the check of every real (when all of them had the same one)
    check: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class ImportResult:
    """A conversion: the services, the interfaces and every note."""

    kind: str  # "keepalived" or "ipvsadm": named in the header of the YAML
    interfaces: tuple[str, ...]  # where XDP attaches
    services: tuple[ImportedService, ...]
    notes: tuple[Note, ...]
    timeouts: Mapping[str, int] = field(default_factory=dict)  # tcp_idle / udp_idle

    def config_dict(self) -> dict[str, Any]:
        """The carom config as the mapping `carom.config` validates."""
        out: dict[str, Any] = {"interfaces": list(self.interfaces)}
        if self.timeouts:
            out["timeouts"] = dict(self.timeouts)
        out["services"] = [_service_dict(s) for s in self.services]
        return out

    def to_yaml(self, source: str) -> str:
        """carom.yaml text; each service carries a comment naming its origin."""
        lines = [
            f"# carom config converted by `carom import {self.kind}` from {source}.",
            "# Read the warnings printed with it: they list what was not carried over.",
            "# Every field is described in docs/config.md.",
            f"interfaces: [{', '.join(_scalar(i) for i in self.interfaces)}]",
        ]
        if self.timeouts:
            lines.append("timeouts:")
            lines += [f"  {k}: {v}" for k, v in self.timeouts.items()]
        if not self.services:
            lines.append("services: []")
            return "\n".join(lines) + "\n"
        lines.append("services:")
        for svc in self.services:
            lines.append(f"  - vip: {svc.vip}  # {source}:{svc.line}")
            lines.append(f"    protocol: {svc.protocol}")
            if svc.ports:
                items = ", ".join(str(p) if isinstance(p, int) else f'"{p}"' for p in svc.ports)
                lines.append(f"    ports: [{items}]")
            else:
                lines.append(f"    port: {svc.port or 'all'}")
            if svc.persistence_timeout:
                lines.append(f"    persistence_timeout: {svc.persistence_timeout}")
            if svc.check:
                lines.append(f"    check: {_flow(svc.check)}")
            if not svc.reals:
                lines.append("    reals: []")
                continue
            lines.append("    reals:")
            for real in svc.reals:
                lines.append(f"      - address: {real.address}")
                if real.weight != 1:
                    lines.append(f"        weight: {real.weight}")
                if real.local:
                    lines.append("        local: true")
                if real.check:
                    lines.append(f"        check: {_flow(real.check)}")
        return "\n".join(lines) + "\n"


def _service_dict(svc: ImportedService) -> dict[str, Any]:
    out: dict[str, Any] = {"vip": svc.vip, "protocol": svc.protocol}
    if svc.ports:
        out["ports"] = list(svc.ports)
    else:
        out["port"] = svc.port or "all"
    if svc.persistence_timeout:
        out["persistence_timeout"] = svc.persistence_timeout
    if svc.check:
        out["check"] = dict(svc.check)
    reals: list[dict[str, Any]] = []
    for real in svc.reals:
        r: dict[str, Any] = {"address": real.address}
        if real.weight != 1:
            r["weight"] = real.weight
        if real.local:
            r["local"] = True
        if real.check:
            r["check"] = dict(real.check)
        reals.append(r)
    out["reals"] = reals
    return out


def _flow(check: dict[str, Any]) -> str:
    """A check as one YAML flow mapping, e.g. `{kind: http, path: /healthz}`."""
    text: str = yaml.safe_dump(check, default_flow_style=True, width=10**6, sort_keys=False)
    return text.strip()


_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _scalar(text: str) -> str:
    """A YAML scalar for an interface name: plain when it is safe, quoted otherwise."""
    if _PLAIN.match(text) and text.lower() not in {"true", "false", "null"}:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_ip(text: str) -> str | None:
    """Normalised address text, or None when `text` is not an IP address."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


@dataclass(frozen=True)
class FwmarkTarget:
    """What an IPVS firewall-mark service covers, as the operator tells the import
    (the mark rules live in iptables/nftables, which the import cannot see)."""

    vip: str  # normalised address text
    protocol: str  # tcp or udp
    ports: tuple[int | str, ...] = ()  # ports and "first-last" ranges; () is every port


_PORT_ITEM = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


def parse_fwmark_map(specs: Sequence[str]) -> dict[int, FwmarkTarget]:
    """`MARK=VIP[/tcp|/udp][@PORTS]` options -> {mark: target}, PORTS being a
    comma-separated list of ports and ranges (25,143,5222-5223). Raises ValueError."""
    out: dict[int, FwmarkTarget] = {}
    for spec in specs:
        mark_text, sep, rest = spec.partition("=")
        rest, _, ports_text = rest.partition("@")
        vip_text, _, proto = rest.partition("/")
        proto = proto or "tcp"
        vip = parse_ip(vip_text)
        if not sep or not mark_text.isdigit() or vip is None or proto not in ("tcp", "udp"):
            raise ValueError(
                f"--fwmark {spec!r}: write MARK=VIP, MARK=VIP/udp or MARK=VIP@PORTS, for "
                "example --fwmark 100=192.0.2.10@25,110,143,5222-5223"
            )
        ports: list[int | str] = []
        for item in ports_text.split(",") if ports_text else []:
            m = _PORT_ITEM.match(item.strip())
            lo = int(m.group(1)) if m else 0
            hi = int(m.group(2)) if m and m.group(2) else lo
            if m is None or not 1 <= lo <= hi <= 65535:
                raise ValueError(
                    f"--fwmark {spec!r}: {item!r} is not a port 1-65535 or a range "
                    "FIRST-LAST, for example 5222-5223"
                )
            ports.append(lo if hi == lo else f"{lo}-{hi}")
        out[int(mark_text)] = FwmarkTarget(vip, proto, tuple(ports))
    return out


@dataclass
class ConvertState:
    """What every converter keeps while it reads: the source name (for
    `SOURCE:LINE:` messages), the fwmark map, the notes and the timeouts seen."""

    source: str
    fwmarks: Mapping[int, FwmarkTarget]
    notes: list[Note] = field(default_factory=list)
    timeouts: dict[str, int] = field(default_factory=dict)

    def note(self, line: int, message: str) -> None:
        self.notes.append(Note(line, message))

    def fail(self, line: int, message: str) -> ImportFailure:
        return ImportFailure(f"{self.source}:{line}: {message}")


def fwmark_note(mark: int, mapped: FwmarkTarget | None) -> str:
    """The warning for an IPVS firewall-mark service, converted or not."""
    if mapped is None:
        return (
            f"fwmark service {mark} not carried over: the VIP and ports it covers live "
            "in your iptables/nftables mark rules, which this import cannot see; pass "
            f"--fwmark {mark}=VIP@PORTS (for example {mark}=192.0.2.10@25,143,5222-5223) "
            "to convert it to a multi-port service on those ports, or "
            f"--fwmark {mark}=VIP for every port of that VIP"
        )
    if mapped.ports:
        listed = ",".join(str(p) for p in mapped.ports)
        return (
            f"fwmark service {mark} converted to a multi-port service on "
            f"{mapped.protocol.upper()} ports {listed} of {mapped.vip} (--fwmark): check "
            "that these are the ports your mark rules select"
        )
    return (
        f"fwmark service {mark} converted to every {mapped.protocol.upper()} port of "
        f"{mapped.vip} (--fwmark {mark}={mapped.vip}/{mapped.protocol}): it now takes all "
        "ports of the VIP, not only those your mark rules selected; give them with "
        f"--fwmark {mark}={mapped.vip}@PORTS for a multi-port service"
    )


def clamp_weight(weight: int, line: int, notes: list[Note]) -> int:
    """A weight carom accepts; a larger IPVS weight is capped, with a note."""
    if weight > WEIGHT_MAX:
        notes.append(
            Note(
                line,
                f"weight {weight} capped at {WEIGHT_MAX}, carom's largest weight; "
                "scale the weights of this service down to keep their ratios",
            )
        )
        return WEIGHT_MAX
    return weight


def clamp_persistence(seconds: int, line: int, notes: list[Note]) -> int:
    if seconds > PERSIST_MAX:
        notes.append(
            Note(
                line,
                f"persistence timeout {seconds}s capped at {PERSIST_MAX}s (7 days), "
                "carom's longest",
            )
        )
        return PERSIST_MAX
    return seconds


def mark_local(services: Sequence[ImportedService], local: Sequence[str]) -> list[ImportedService]:
    """Set local: true on the reals that are this node (--local ADDR)."""
    wanted = {parse_ip(a) or a for a in local}
    return [
        replace(svc, reals=tuple(replace(r, local=r.address in wanted) for r in svc.reals))
        for svc in services
    ]
