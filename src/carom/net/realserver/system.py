"""The I/O edges: /proc/sys, netlink (pyroute2) and the state file. `up` and
`down` apply what the pure core plans and record it, so `down` undoes only
what `up` did."""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_PROXY

from carom.net.realserver.data import (
    DEFAULT_STATE,
    EADDRNOTAVAIL,
    EEXIST,
    IFF_LOOPBACK,
    IFF_NOARP,
    IFF_UP,
    PROC_SYS,
    Addr,
    Address,
    Conf,
    Interface,
    RealServerError,
    Result,
    Snapshot,
    State,
    Step,
    SysctlChange,
    sysctl_key,
)
from carom.net.realserver.evaluate import evaluate, host_prefixlen, merge_state, plan_up


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
