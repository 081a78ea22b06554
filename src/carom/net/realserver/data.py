"""The real-server data: what is read from the host (Snapshot), what is
found wrong with it (Finding), what `up` plans and records (UpPlan, State).
Frozen values only, no I/O."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_STATE = Path("/run/carom/realserver.json")
PROC_SYS = Path("/proc/sys")
STATE_VERSION = 1

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80
EEXIST = 17
EADDRNOTAVAIL = 99

# arp_ignore modes that never answer ARP for an address that is only on lo:
# 1 (target must be on the incoming interface), 2 (same, and sender in its
# subnet). 8 answers nothing at all, which also hides the host's own address.
ARP_IGNORE_GOOD = frozenset({1, 2})
ARP_IGNORE_TARGET = 1
ARP_ANNOUNCE_TARGET = 2  # always pick a source on the outgoing interface
RP_FILTER_STRICT = 1
RP_FILTER_LOOSE = 2


def sysctl_key(interface: str, name: str) -> str:
    """The dotted sysctl(8) name; dots in an interface name become slashes."""
    return f"net.ipv4.conf.{interface.replace('.', '/')}.{name}"


class RealServerError(RuntimeError):
    """A change could not be made; the message says what and why."""


class Severity(StrEnum):
    ERROR = "error"  # DSR is broken or traffic is being stolen
    WARNING = "warning"  # works now, breaks under conditions the message names


@dataclass(frozen=True)
class Conf:
    """The IPv4 sysctls of one `net.ipv4.conf.NAME` directory that DSR cares about."""

    arp_ignore: int  # which ARP requests this interface answers
    arp_announce: int  # which source address its own ARP requests carry
    rp_filter: int  # reverse-path filtering: 0 off, 1 strict, 2 loose


@dataclass(frozen=True)
class Interface:
    """One network interface of the snapshot."""

    name: str  # interface name, e.g. eth0
    loopback: bool  # IFF_LOOPBACK
    up: bool  # IFF_UP (administratively up)
    arp: bool  # speaks ARP/NDP (no IFF_NOARP): dummy, tun, wireguard do not
    conf: Conf | None = None  # its IPv4 sysctls; None when it has no IPv4
    forwarding6: bool = False  # net.ipv6.conf.NAME.forwarding
    proxy_ndp: bool = False  # net.ipv6.conf.NAME.proxy_ndp


@dataclass(frozen=True)
class Addr:
    """An address configured on an interface (or a proxy-NDP entry on it)."""

    interface: str  # interface name
    address: Address  # the address itself
    prefixlen: int  # its mask length

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True)
class Snapshot:
    """Everything `evaluate()` needs to know about the host, read at one moment."""

    interfaces: tuple[Interface, ...]  # every interface, lo included
    addresses: tuple[Addr, ...]  # every IPv4/IPv6 address
    all_conf: Conf  # net.ipv4.conf.all.*
    all_proxy_ndp: bool = False  # net.ipv6.conf.all.proxy_ndp
    ndp_proxies: tuple[Addr, ...] = ()  # `ip -6 neigh show proxy` entries

    def loopback(self) -> Interface | None:
        return next((i for i in self.interfaces if i.loopback), None)


@dataclass(frozen=True)
class Finding:
    """One deviation from a working DSR real server."""

    severity: Severity  # error or warning
    code: str  # stable identifier, e.g. "arp-ignore"
    interface: str | None  # the interface it concerns, if any
    vip: str | None  # the VIP it concerns, None when it concerns every IPv4 VIP
    message: str  # what is wrong and what it does, in an operator's words
    fix: str  # a shell command that fixes it


@dataclass(frozen=True)
class Effective:
    """How the kernel combines `all` and an interface's value of one sysctl."""

    all: int  # net.ipv4.conf.all.X
    interface: int  # net.ipv4.conf.IFACE.X
    effective: int  # max(all, interface): what the kernel uses


@dataclass(frozen=True)
class InterfaceView:
    """The effective ARP and reverse-path settings of one interface, for reports."""

    name: str  # interface name
    arp: bool  # speaks ARP at all (the ARP settings matter only then)
    arp_ignore: Effective  # must be 1 or 2
    arp_announce: Effective  # must be 2
    rp_filter: Effective  # 1 (strict) is a risk


@dataclass(frozen=True)
class SysctlChange:
    """One IPv4 sysctl write: planned by `plan_up()`, recorded in the state file."""

    interface: str  # "all" or an interface name
    name: str  # arp_ignore | arp_announce | rp_filter
    before: int  # value before carom touched it (the first `up` wins)
    after: int  # value carom wrote

    @property
    def key(self) -> str:
        return sysctl_key(self.interface, self.name)


@dataclass(frozen=True)
class UpPlan:
    """What `up` will change; empty when the host is already configured."""

    bring_lo_up: bool  # lo is down
    add: tuple[Addr, ...]  # VIP host addresses to add to lo
    present: tuple[Address, ...]  # VIPs already on lo with a host mask
    sysctls: tuple[SysctlChange, ...]  # sysctl writes

    @property
    def empty(self) -> bool:
        return not (self.bring_lo_up or self.add or self.sysctls)


@dataclass(frozen=True)
class State:
    """What `up` changed, so that `down` undoes exactly that (the state file)."""

    vips: tuple[Address, ...] = ()  # VIPs `up` was asked for, added or found present
    added: tuple[Addr, ...] = ()  # addresses `up` added; `down` removes only these
    sysctls: tuple[SysctlChange, ...] = ()  # sysctls `up` changed, with original values
    lo_brought_up: bool = False  # `up` found lo down and set it up (never undone)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "vips": [str(v) for v in self.vips],
            "added": [
                {"interface": a.interface, "address": str(a.address), "prefixlen": a.prefixlen}
                for a in self.added
            ],
            "sysctls": [
                {"interface": s.interface, "name": s.name, "before": s.before, "after": s.after}
                for s in self.sysctls
            ],
            "lo_brought_up": self.lo_brought_up,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        if data.get("version") != STATE_VERSION:
            raise RealServerError(
                f"format version {data.get('version')!r} is not {STATE_VERSION} (written by "
                "another carom?): move the file away; `down --vip` works without one"
            )
        return cls(
            vips=tuple(ipaddress.ip_address(v) for v in data["vips"]),
            added=tuple(
                Addr(a["interface"], ipaddress.ip_address(a["address"]), int(a["prefixlen"]))
                for a in data["added"]
            ),
            sysctls=tuple(
                SysctlChange(s["interface"], s["name"], int(s["before"]), int(s["after"]))
                for s in data["sysctls"]
            ),
            lo_brought_up=bool(data.get("lo_brought_up", False)),
        )


@dataclass(frozen=True)
class Step:
    """One thing `up` or `down` did, or deliberately left alone."""

    action: str  # added | present | set | unchanged | link-up | removed | kept | restored | ...
    subject: str  # the address, sysctl key or interface it concerns
    message: str  # the same in an operator's words


@dataclass(frozen=True)
class Result:
    """The outcome of `up` or `down`."""

    steps: tuple[Step, ...]  # in the order they happened
    changed: bool  # whether anything on the host changed
    state_path: str  # the state file used
    state_written: bool  # `up` wrote it, `down` rewrote it
    state_removed: bool = False  # `down` removed the last VIP and the file
    findings: tuple[Finding, ...] = ()  # `up`: what is still wrong
