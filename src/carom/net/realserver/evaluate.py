"""The pure core: findings and the `up` plan from a Snapshot. No I/O, so every
rule is unit-tested on hand-built snapshots (tests/unit/test_realserver_eval.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import replace

from carom.net.realserver.data import (
    ARP_ANNOUNCE_TARGET,
    ARP_IGNORE_GOOD,
    ARP_IGNORE_TARGET,
    RP_FILTER_LOOSE,
    RP_FILTER_STRICT,
    Addr,
    Address,
    Effective,
    Finding,
    InterfaceView,
    Severity,
    Snapshot,
    State,
    SysctlChange,
    UpPlan,
    sysctl_key,
)


def host_prefixlen(address: Address) -> int:
    return address.max_prefixlen


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
