"""Make this host a DSR real server for some VIPs, check it, and undo it.

Field note 1: a real server carries each VIP on loopback with a host mask, so
its TCP stack accepts the balancer's frames and answers from the VIP, and it
must never answer or announce ARP for the VIP, or it steals the VIP's traffic.

The kernel combines `net.ipv4.conf.all.X` and `net.ipv4.conf.IFACE.X` as
max(all, IFACE) for arp_ignore, arp_announce and rp_filter, so raising `all`
is enough unless an interface holds a *larger* value with a different meaning
(arp_ignore 3..7 and 9+ answer for the VIP; arp_announce 3+ behaves like 0).
Everything below reasons about that effective value.

IPv6 needs no sysctl: Linux answers a neighbour solicitation only for addresses
on the interface it arrived on (or for an active proxy-NDP entry), and the VIP
is on lo. See docs/realserver.md for what was verified.

Pure core: `evaluate()` and `plan_up()` work on a `Snapshot`; `read_snapshot()`,
`up()` and `down()` are the I/O edges (netlink through pyroute2, /proc/sys).
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_PROXY

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


# --- pure core -------------------------------------------------------------------


def host_prefixlen(address: Address) -> int:
    return address.max_prefixlen


def sysctl_key(interface: str, name: str) -> str:
    """The dotted sysctl(8) name; dots in an interface name become slashes."""
    return f"net.ipv4.conf.{interface.replace('.', '/')}.{name}"


def _sysctl_fix(changes: Iterable[tuple[str, str, int]]) -> str:
    pairs = [f"{sysctl_key(i, n)}={v}" for i, n, v in changes]
    return "sysctl -w " + " ".join(pairs)


def effective(all_value: int, iface_value: int) -> int:
    """The kernel's IN_DEV_MAXCONF: the larger of `all` and the interface's value."""
    return max(all_value, iface_value)


def _effective(all_value: int, iface_value: int) -> Effective:
    return Effective(all_value, iface_value, effective(all_value, iface_value))


def interface_views(snapshot: Snapshot) -> list[InterfaceView]:
    """Effective settings of every non-loopback interface that has IPv4."""
    a = snapshot.all_conf
    return [
        InterfaceView(
            name=i.name,
            arp=i.arp,
            arp_ignore=_effective(a.arp_ignore, i.conf.arp_ignore),
            arp_announce=_effective(a.arp_announce, i.conf.arp_announce),
            rp_filter=_effective(a.rp_filter, i.conf.rp_filter),
        )
        for i in snapshot.interfaces
        if not i.loopback and i.conf is not None
    ]


def _arp_ignore_fix(all_value: int, iface_value: int) -> tuple[int | None, int | None]:
    """New (all, interface) arp_ignore values, None meaning "leave it"."""
    new_all = None if all_value in ARP_IGNORE_GOOD else ARP_IGNORE_TARGET
    base = all_value if new_all is None else new_all
    new_iface = None if effective(base, iface_value) in ARP_IGNORE_GOOD else base
    return new_all, new_iface


def _arp_announce_fix(all_value: int, iface_value: int) -> tuple[int | None, int | None]:
    new_all = None if all_value == ARP_ANNOUNCE_TARGET else ARP_ANNOUNCE_TARGET
    new_iface = None if iface_value <= ARP_ANNOUNCE_TARGET else ARP_ANNOUNCE_TARGET
    return new_all, new_iface


def _fix_pairs(
    name: str, iface: str, new_all: int | None, new_iface: int | None
) -> list[tuple[str, str, int]]:
    pairs = [] if new_all is None else [("all", name, new_all)]
    return pairs if new_iface is None else [*pairs, (iface, name, new_iface)]


def _error(code: str, iface: str | None, vip: object, message: str, fix: str) -> Finding:
    return Finding(Severity.ERROR, code, iface, None if vip is None else str(vip), message, fix)


def _warning(code: str, iface: str | None, vip: object, message: str, fix: str) -> Finding:
    return Finding(Severity.WARNING, code, iface, None if vip is None else str(vip), message, fix)


def _address_findings(snapshot: Snapshot, vip: Address, lo: str) -> list[Finding]:
    out: list[Finding] = []
    host = host_prefixlen(vip)
    on_lo = [a for a in snapshot.addresses if a.interface == lo]
    if not any(a.address == vip for a in on_lo):
        why = f"{vip} is not on {lo}: this host drops the packets the balancer sends it for the VIP"
        out.append(_error("vip-missing", lo, vip, why, f"ip addr add {vip}/{host} dev {lo}"))
    for a in on_lo:
        net = ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False)
        if a.address.version != vip.version or a.prefixlen >= host or vip not in net:
            continue
        fix = f"ip addr del {a} dev {lo}"
        if a.address == vip and not any(b.address == vip and b.prefixlen == host for b in on_lo):
            fix += f" && ip addr add {vip}/{host} dev {lo}"
        why = f"{a} on {lo} covers {vip} with a /{a.prefixlen} mask instead of /{host}: "
        if vip.version == 4:
            why += (
                f"the host will believe the whole subnet {net} is local and stop answering on "
                "its real interface"
            )
        else:
            why += (
                f"the host also routes the whole subnet {net} to {lo}, and whenever that route "
                "wins over the real interface's (it depends on which came first) the host "
                "stops reaching its neighbours there"
            )
        out.append(_error("vip-wide-mask", lo, vip, why, fix))
    by_name = {i.name: i for i in snapshot.interfaces}
    for a in snapshot.addresses:
        if a.address != vip or a.interface == lo:
            continue
        iface, fix = by_name.get(a.interface), f"ip addr del {a} dev {a.interface}"
        if iface is None or iface.arp:
            proto = "ARP" if vip.version == 4 else "neighbour solicitations (NDP)"
            why = (
                f"{a} is configured on {a.interface}: this host will answer {proto} for the VIP "
                f"on {a.interface} and steal its traffic from the balancer"
            )
            out.append(_error("vip-on-interface", a.interface, vip, why, fix))
        else:
            why = (
                f"{a} is also configured on {a.interface}, which speaks no ARP/NDP, so it steals "
                f"nothing; carom keeps VIPs on {lo} only: remove this copy before someone moves "
                "it to a real interface"
            )
            out.append(_warning("vip-on-noarp-interface", a.interface, vip, why, fix))
    return out


def _ndp_proxy_findings(snapshot: Snapshot, vip: Address) -> list[Finding]:
    out: list[Finding] = []
    by_name = {i.name: i for i in snapshot.interfaces}
    for p in (p for p in snapshot.ndp_proxies if p.address == vip):
        i = by_name.get(p.interface)
        fix = f"ip -6 neigh del proxy {vip} dev {p.interface}"
        if i is not None and i.forwarding6 and (snapshot.all_proxy_ndp or i.proxy_ndp):
            why = (
                f"a proxy-NDP entry for {vip} on {p.interface} (IPv6 forwarding and proxy_ndp "
                f"on) makes this host answer neighbour solicitations for the VIP on "
                f"{p.interface} and steal its traffic from the balancer"
            )
            out.append(_error("ndp-proxy", p.interface, vip, why, fix))
        else:
            why = (
                f"a proxy-NDP entry for {vip} exists on {p.interface}; it is inactive because "
                "IPv6 forwarding or proxy_ndp is off there, but turning them on would make this "
                "host answer neighbour solicitations for the VIP"
            )
            out.append(_warning("ndp-proxy", p.interface, vip, why, fix))
    return out


def _sysctl_findings(snapshot: Snapshot, vips4: Sequence[Address]) -> list[Finding]:
    out: list[Finding] = []
    listed = ", ".join(str(v) for v in vips4)
    for view in interface_views(snapshot):
        n, ig, an, rp = view.name, view.arp_ignore, view.arp_announce, view.rp_filter
        if view.arp and ig.effective not in ARP_IGNORE_GOOD:
            how = f"arp_ignore is {ig.effective} on {n} (all={ig.all}, {n}={ig.interface}; "
            how += "the kernel uses the larger)"
            fix = _sysctl_fix(_fix_pairs("arp_ignore", n, *_arp_ignore_fix(ig.all, ig.interface)))
            if ig.effective == 8:
                why = (
                    f"{how}: this host answers no ARP at all on {n}, not even for its own "
                    "address, so the balancer cannot resolve its MAC"
                )
                out.append(_warning("arp-ignore", n, None, why, fix))
            else:
                mode3 = " (mode 3 refuses only scope-host addresses)" if ig.effective == 3 else ""
                why = (
                    f"{how}{mode3}: this host would answer ARP requests for the VIP on {n} and "
                    f"steal its traffic from the balancer ({listed})"
                )
                out.append(_error("arp-ignore", n, None, why, fix))
        if view.arp and an.effective != ARP_ANNOUNCE_TARGET:
            why = (
                f"arp_announce is {an.effective} on {n} (all={an.all}, {n}={an.interface}; the "
                f"kernel uses the larger), not 2: when this host answers from the VIP it may put "
                f"the VIP in its own ARP requests on {n}, which teaches the router and the "
                f"balancer that the VIP lives here ({listed})"
            )
            fix = _sysctl_fix(
                _fix_pairs("arp_announce", n, *_arp_announce_fix(an.all, an.interface))
            )
            out.append(_error("arp-announce", n, None, why, fix))
        if rp.effective == RP_FILTER_STRICT:
            why = (
                f"reverse-path filtering is strict on {n} (rp_filter all={rp.all}, "
                f"{n}={rp.interface}; the kernel uses the larger): DSR packets arrive with the "
                "client's address as source and are dropped whenever the route back to that "
                f"client does not leave through {n} (asymmetric routing, a second uplink, "
                "policy routing); loose mode (2) keeps spoofing protection without that risk"
            )
            fix = _sysctl_fix([(n, "rp_filter", RP_FILTER_LOOSE)])
            out.append(_warning("rp-filter-strict", n, None, why, fix))
    return out


def evaluate(snapshot: Snapshot, vips: Sequence[Address]) -> list[Finding]:
    """Every way this host, as captured in `snapshot`, fails as a DSR real server."""
    findings: list[Finding] = []
    lo = snapshot.loopback()
    lo_name = lo.name if lo else "lo"
    if lo is not None and not lo.up:
        why = (
            f"{lo_name} is down: nothing on this host can reach 127.0.0.1, ::1 or the VIP itself, "
            f"and taking {lo_name} down deletes every IPv6 address on it, IPv6 VIPs included"
        )
        findings.append(_error("lo-down", lo_name, None, why, f"ip link set {lo_name} up"))
    for vip in vips:
        findings += _address_findings(snapshot, vip, lo_name)
        if vip.version == 6:
            findings += _ndp_proxy_findings(snapshot, vip)
    vips4 = [v for v in vips if v.version == 4]
    if vips4:
        findings += _sysctl_findings(snapshot, vips4)
    return findings


def plan_up(snapshot: Snapshot, vips: Sequence[Address]) -> UpPlan:
    """The changes that make this host a real server for `vips`.

    It never removes anything: a VIP on another interface or with a wide mask is
    left for the operator (the findings say how), because carom cannot know what
    it is there for."""
    lo = snapshot.loopback()
    lo_name = lo.name if lo else "lo"
    add: list[Addr] = []
    present: list[Address] = []
    for vip in vips:
        host = host_prefixlen(vip)
        if any(
            a.interface == lo_name and a.address == vip and a.prefixlen == host
            for a in snapshot.addresses
        ):
            present.append(vip)
        else:
            add.append(Addr(lo_name, vip, host))
    sysctls: list[SysctlChange] = []
    if any(v.version == 4 for v in vips):
        a = snapshot.all_conf
        new_ignore, _ = _arp_ignore_fix(a.arp_ignore, 0)
        new_announce, _ = _arp_announce_fix(a.arp_announce, 0)
        if new_ignore is not None:
            sysctls.append(SysctlChange("all", "arp_ignore", a.arp_ignore, new_ignore))
        if new_announce is not None:
            sysctls.append(SysctlChange("all", "arp_announce", a.arp_announce, new_announce))
        for i in snapshot.interfaces:
            if i.loopback or i.conf is None:
                continue
            _, iface_ignore = _arp_ignore_fix(a.arp_ignore, i.conf.arp_ignore)
            _, iface_announce = _arp_announce_fix(a.arp_announce, i.conf.arp_announce)
            if i.arp and iface_ignore is not None:
                sysctls.append(SysctlChange(i.name, "arp_ignore", i.conf.arp_ignore, iface_ignore))
            if i.arp and iface_announce is not None:
                sysctls.append(
                    SysctlChange(i.name, "arp_announce", i.conf.arp_announce, iface_announce)
                )
            if effective(a.rp_filter, i.conf.rp_filter) == RP_FILTER_STRICT:
                sysctls.append(SysctlChange(i.name, "rp_filter", i.conf.rp_filter, RP_FILTER_LOOSE))
    return UpPlan(
        bring_lo_up=lo is not None and not lo.up,
        add=tuple(add),
        present=tuple(present),
        sysctls=tuple(sysctls),
    )


def merge_state(old: State | None, vips: Sequence[Address], plan: UpPlan) -> State:
    """The state after `up` carried out `plan`: an earlier `up`'s record wins, so
    `down` always goes back to the values from before the first `up`."""
    old = old or State()
    all_vips = list(old.vips) + [v for v in vips if v not in old.vips]
    sysctls = list(old.sysctls)
    for change in plan.sysctls:
        same = [
            k
            for k, s in enumerate(sysctls)
            if (s.interface, s.name) == (change.interface, change.name)
        ]
        if same:
            sysctls[same[0]] = replace(sysctls[same[0]], after=change.after)
        else:
            sysctls.append(change)
    return State(
        vips=tuple(all_vips),
        added=old.added + tuple(a for a in plan.add if a not in old.added),
        sysctls=tuple(sysctls),
        lo_brought_up=old.lo_brought_up or plan.bring_lo_up,
    )


# --- I/O edges -------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_conf(proc_sys: Path, name: str) -> Conf | None:
    base = proc_sys / "net/ipv4/conf" / name
    values = [_read_int(base / k) for k in ("arp_ignore", "arp_announce", "rp_filter")]
    if any(v is None for v in values):
        return None
    ignore, announce, rp = (int(v or 0) for v in values)
    return Conf(ignore, announce, rp)


def read_sysctl(interface: str, name: str, proc_sys: Path = PROC_SYS) -> int | None:
    """Current value of net.ipv4.conf.INTERFACE.NAME, None if it does not exist."""
    return _read_int(proc_sys / "net/ipv4/conf" / interface / name)


def write_sysctl(interface: str, name: str, value: int, proc_sys: Path = PROC_SYS) -> None:
    path = proc_sys / "net/ipv4/conf" / interface / name
    try:
        path.write_text(f"{value}\n")
    except OSError as exc:
        raise RealServerError(f"cannot set {sysctl_key(interface, name)}={value}: {exc}") from exc


def read_snapshot(proc_sys: Path = PROC_SYS) -> Snapshot:
    """The current network namespace's addresses, links and sysctls."""
    with IPRoute() as ipr:
        links = list(ipr.get_links())
        names = {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in links}
        addresses: list[Addr] = []
        for m in ipr.get_addr():
            raw = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
            if raw is None or int(m["index"]) not in names:
                continue
            addresses.append(
                Addr(names[int(m["index"])], ipaddress.ip_address(raw), int(m["prefixlen"]))
            )
        proxies: list[Addr] = []
        # NTF_PROXY in the request header selects proxy entries (`ip -6 neigh show
        # proxy`); dump_filter=None keeps pyroute2 from turning it into a match.
        try:
            entries = list(ipr.neigh("dump", family=10, flags=NTF_PROXY, dump_filter=None))
        except NetlinkError:  # IPv6 disabled in this kernel: no proxy entries either
            entries = []
        for m in entries:
            dst, index = m.get_attr("NDA_DST"), int(m["ifindex"])
            if dst is not None and index in names:
                proxies.append(Addr(names[index], ipaddress.ip_address(dst), 128))
    v6 = proc_sys / "net/ipv6/conf"
    interfaces = tuple(
        Interface(
            name=names[int(m["index"])],
            loopback=bool(m["flags"] & IFF_LOOPBACK),
            up=bool(m["flags"] & IFF_UP),
            arp=not m["flags"] & IFF_NOARP,
            conf=_read_conf(proc_sys, names[int(m["index"])]),
            forwarding6=_read_int(v6 / names[int(m["index"])] / "forwarding") == 1,
            proxy_ndp=(_read_int(v6 / names[int(m["index"])] / "proxy_ndp") or 0) > 0,
        )
        for m in links
    )
    all_conf = _read_conf(proc_sys, "all")
    if all_conf is None:
        raise RealServerError(f"cannot read {proc_sys}/net/ipv4/conf/all: is /proc mounted?")
    return Snapshot(
        interfaces=interfaces,
        addresses=tuple(addresses),
        all_conf=all_conf,
        all_proxy_ndp=(_read_int(v6 / "all/proxy_ndp") or 0) > 0,
        ndp_proxies=tuple(proxies),
    )


def load_state(path: Path) -> State | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RealServerError(f"cannot read state file {path}: {exc}") from exc
    try:
        return State.from_json(json.loads(text))
    except RealServerError as exc:
        raise RealServerError(f"state file {path}: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise RealServerError(f"state file {path} is damaged: {exc!r}") from exc


def save_state(path: Path, state: State) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_json(), f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _lo_index(ipr: Any) -> int:
    for m in ipr.get_links():
        if m["flags"] & IFF_LOOPBACK:
            return int(m["index"])
    raise RealServerError("this network namespace has no loopback interface")


def _addr(ipr: Any, command: str, index: int, a: Addr) -> bool:
    """Add or delete one address; False when it already was (or was not) there."""
    try:
        ipr.addr(command, index=index, address=str(a.address), prefixlen=a.prefixlen)
    except NetlinkError as exc:
        if (command, exc.code) in (("add", EEXIST), ("del", EADDRNOTAVAIL)):
            return False
        raise RealServerError(f"cannot {command} {a} on {a.interface}: {exc}") from exc
    return True


def up(vips: Sequence[Address], state_path: Path = DEFAULT_STATE) -> Result:
    """Configure this host as a DSR real server for `vips` and record what changed.

    Order matters: ARP settings first, VIPs last, so there is no moment at which
    the VIP is local and the host still answers ARP for it. Whatever was done is
    recorded even when a later step fails, so `down` can still undo it."""
    old = load_state(state_path)
    plan = plan_up(read_snapshot(), vips)
    steps: list[Step] = []
    done_sysctls: list[SysctlChange] = []
    done_add: list[Addr] = []
    lo_done = False
    failure: Exception | None = None
    try:
        with IPRoute() as ipr:
            lo_index = _lo_index(ipr)
            if plan.bring_lo_up:
                try:
                    ipr.link("set", index=lo_index, state="up")
                except NetlinkError as exc:
                    raise RealServerError(f"cannot set lo up: {exc}") from exc
                lo_done = True
                steps.append(Step("link-up", "lo", "lo was down: set it up"))
            for s in plan.sysctls:
                write_sysctl(s.interface, s.name, s.after)
                done_sysctls.append(s)
                steps.append(Step("set", s.key, f"{s.key}: {s.before} -> {s.after}"))
            for vip in plan.present:
                steps.append(
                    Step("present", str(vip), f"{vip}/{host_prefixlen(vip)} already on lo")
                )
            for a in plan.add:
                _addr(ipr, "add", lo_index, a)
                done_add.append(a)
                steps.append(Step("added", str(a), f"added {a} to {a.interface}"))
    except Exception as exc:
        failure = exc
        raise
    finally:
        done = replace(plan, bring_lo_up=lo_done, add=tuple(done_add), sysctls=tuple(done_sysctls))
        recorded = [v for v in vips if v in plan.present or any(a.address == v for a in done_add)]
        state = merge_state(old, recorded, done)
        written = state != (old or State())
        if written:
            try:
                save_state(state_path, state)
            except OSError as exc:
                lost = f"cannot record the changes in {state_path}: {exc}"
                raise RealServerError(f"{failure}; also {lost}" if failure else lost) from exc
    if plan.empty:
        steps.append(Step("unchanged", "host", "nothing to change: already configured"))
    findings = tuple(evaluate(read_snapshot(), vips))
    return Result(tuple(steps), not plan.empty, str(state_path), written, findings=findings)


def down(vips: Sequence[Address] | None, state_path: Path = DEFAULT_STATE) -> Result:
    """Undo `up` for `vips` (all recorded VIPs when None).

    With a state file only what `up` added is removed, and the sysctls go back to
    their earlier values once no VIP is left. Without one, the VIPs' host
    addresses are removed from lo and the sysctls are left alone."""
    state = load_state(state_path)
    if state is None and not vips:
        raise RealServerError(f"no state file at {state_path} and no --vip given: nothing to do")
    steps: list[Step] = []
    changed = False
    with IPRoute() as ipr:
        lo_index = _lo_index(ipr)
        lo_name = str(ipr.get_links(lo_index)[0].get_attr("IFLA_IFNAME"))
        if state is None:
            for vip in vips or ():
                a = Addr(lo_name, vip, host_prefixlen(vip))
                if _addr(ipr, "del", lo_index, a):
                    changed = True
                    steps.append(Step("removed", str(a), f"removed {a} from {lo_name}"))
                else:
                    steps.append(Step("absent", str(a), f"{a} was not on {lo_name}"))
            steps.append(
                Step(
                    "left-alone",
                    "sysctls",
                    f"no state file at {state_path}: sysctls left as they are (carom does "
                    "not know their values from before `up`)",
                )
            )
            return Result(tuple(steps), changed, str(state_path), False)
        targets = list(state.vips) if vips is None else list(vips)
        remaining = list(state.vips)
        added = list(state.added)
        for vip in targets:
            if vip not in state.vips:
                steps.append(
                    Step(
                        "left-alone",
                        str(vip),
                        f"{vip} is not recorded in {state_path}: `up` did not configure it, "
                        "left alone",
                    )
                )
                continue
            remaining.remove(vip)
            mine = [a for a in added if a.address == vip]
            if not mine:
                steps.append(Step("kept", str(vip), f"{vip} was on {lo_name} before `up`: kept"))
            for a in mine:
                added.remove(a)
                if _addr(ipr, "del", lo_index, a):
                    changed = True
                    steps.append(Step("removed", str(a), f"removed {a} from {a.interface}"))
                else:
                    steps.append(Step("absent", str(a), f"{a} was already gone"))
    if remaining:
        left = ", ".join(str(v) for v in remaining)
        steps.append(Step("kept", "sysctls", f"sysctls kept: still needed by {left}"))
        try:
            save_state(state_path, replace(state, vips=tuple(remaining), added=tuple(added)))
        except OSError as exc:
            raise RealServerError(f"cannot update {state_path}: {exc}") from exc
        return Result(tuple(steps), changed, str(state_path), True)
    for s in reversed(state.sysctls):
        current = read_sysctl(s.interface, s.name)
        if current is None:
            steps.append(Step("left-alone", s.key, f"{s.key}: {s.interface} no longer exists"))
        elif current != s.after:
            steps.append(
                Step(
                    "left-alone",
                    s.key,
                    f"{s.key} is {current}, not the {s.after} carom set: changed by someone "
                    f"else since `up`, left as it is (it was {s.before} before `up`)",
                )
            )
        else:
            write_sysctl(s.interface, s.name, s.before)
            changed = True
            steps.append(Step("restored", s.key, f"{s.key}: {s.after} -> {s.before} (restored)"))
    if state.lo_brought_up:
        steps.append(
            Step(
                "kept",
                "lo",
                "lo stays up although `up` found it down: taking it down breaks 127.0.0.1 "
                "and deletes every IPv6 address on it",
            )
        )
    state_path.unlink(missing_ok=True)
    return Result(tuple(steps), changed, str(state_path), False, state_removed=True)
