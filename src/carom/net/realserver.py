"""Setting up a Linux host as a DSR real server, and checking one.

Field note 1: a real server must accept packets for the VIP (VIP on the
loopback, host mask: a wider mask makes the whole subnet look local), must
never answer or announce ARP for it (arp_ignore=1, arp_announce=2; the kernel
applies max(all, interface)), and reverse-path filtering must not drop
packets whose source is a client and destination the VIP. `up` records what
it changed so `down` puts back exactly what was there."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_STATE = "/run/carom/realserver.json"
PROC = Path("/proc/sys/net/ipv4/conf")
KNOBS = ("arp_ignore", "arp_announce", "rp_filter")
WANT = {"arp_ignore": 1, "arp_announce": 2}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" breaks DSR, "warning" may break it
    interface: str
    message: str
    fix: str


@dataclass
class Snapshot:
    """What matters about this host for DSR, read in one go."""

    addresses: list[tuple[str, str, int]]  # (interface, address, prefix length)
    sysctls: dict[str, dict[str, int]]  # interface or "all" -> knob -> value
    lo_up: bool = True
    up_interfaces: list[str] = field(default_factory=list)


def _read_sysctls() -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d in sorted(PROC.iterdir()):
        if d.name == "default":
            continue
        out[d.name] = {k: int((d / k).read_text()) for k in KNOBS if (d / k).exists()}
    return out


def snapshot() -> Snapshot:
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        up = [names[link["index"]] for link in ipr.get_links() if link["flags"] & 1]
        addrs = [
            (names.get(a["index"], "?"), a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr()
        ]
    return Snapshot(addrs, _read_sysctls(), "lo" in up, up)


def effective(snap: Snapshot, iface: str, knob: str) -> int:
    return max(snap.sysctls.get("all", {}).get(knob, 0), snap.sysctls.get(iface, {}).get(knob, 0))


def evaluate(snap: Snapshot, vips: list[Address]) -> list[Finding]:
    """Every deviation from a working DSR real server, in an operator's words."""
    found: list[Finding] = []
    if not snap.lo_up:
        found.append(
            Finding(
                "error",
                "lo",
                "the loopback interface is down: VIPs on it do not work",
                "ip link set lo up",
            )
        )
    ifaces = [i for i in snap.up_interfaces if i != "lo"]
    for vip in vips:
        host = 32 if vip.version == 4 else 128
        on = [(i, p) for i, a, p in snap.addresses if ipaddress.ip_address(a) == vip]
        on_lo = [p for i, p in on if i == "lo"]
        if not on_lo:
            found.append(
                Finding(
                    "error",
                    "lo",
                    f"VIP {vip} is not on the loopback: this host "
                    "drops the packets the director sends it",
                    f"carom realserver up --vip {vip}",
                )
            )
        for p in on_lo:
            if p != host:
                found.append(
                    Finding(
                        "error",
                        "lo",
                        f"VIP {vip} is on lo with /{p}, not /{host}: the host "
                        "believes the whole subnet is local and stops answering on its real "
                        "interface",
                        f"ip addr del {vip}/{p} dev lo && ip addr add {vip}/{host} dev lo",
                    )
                )
        for i, p in on:
            if i != "lo":
                found.append(
                    Finding(
                        "error",
                        i,
                        f"VIP {vip} is configured on {i}: this host will answer "
                        "ARP/NDP for the VIP and steal its traffic from the director",
                        f"ip addr del {vip}/{p} dev {i}",
                    )
                )
    if any(v.version == 4 for v in vips):
        for i in ifaces:
            for knob, want in WANT.items():
                if effective(snap, i, knob) < want:
                    what = (
                        "would answer ARP requests for the VIP"
                        if knob == "arp_ignore"
                        else "may use the VIP as the source of its ARP requests"
                    )
                    found.append(
                        Finding(
                            "error",
                            i,
                            f"{knob} is {effective(snap, i, knob)} on {i} (needs "
                            f">= {want}): this host {what} on {i}",
                            f"sysctl -w net.ipv4.conf.all.{knob}={want}",
                        )
                    )
            if effective(snap, i, "rp_filter") == 1:
                found.append(
                    Finding(
                        "warning",
                        i,
                        f"strict reverse-path filtering on {i}: DSR packets (client "
                        f"source, VIP destination) are dropped unless the route back to every "
                        f"client leaves through {i}",
                        "sysctl -w net.ipv4.conf.all.rp_filter=2",
                    )
                )
    return found


def _write_sysctl(iface: str, knob: str, value: int) -> None:
    (PROC / iface / knob).write_text(f"{value}\n")


def _load_state(path: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return data
    except FileNotFoundError:
        return {"sysctls": {}, "addresses": []}


def up(vips: list[Address], state_path: str = DEFAULT_STATE) -> list[str]:
    """Make this host a DSR real server for `vips`; returns what it changed."""
    state = _load_state(state_path)
    changed: list[str] = []
    snap = snapshot()
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        if not snap.lo_up:
            ipr.link("set", index=lo, state="up")
            changed.append("lo up")
        for vip in vips:
            host = 32 if vip.version == 4 else 128
            if not any(
                i == "lo" and ipaddress.ip_address(a) == vip and p == host
                for i, a, p in snap.addresses
            ):
                kw = {"IFA_FLAGS": 0x80} if vip.version == 6 else {}  # IFA_F_NODAD
                ipr.addr("add", index=lo, address=str(vip), prefixlen=host, **kw)
                state["addresses"].append([str(vip), host])
                changed.append(f"{vip}/{host} on lo")
    wanted = dict(WANT)
    if any(effective(snap, i, "rp_filter") == 1 for i in snap.up_interfaces if i != "lo"):
        wanted["rp_filter"] = 2
    if any(v.version == 4 for v in vips):
        for knob, value in wanted.items():
            current = snap.sysctls["all"][knob]
            if current < value:
                state["sysctls"].setdefault(f"all/{knob}", current)  # first value wins
                _write_sysctl("all", knob, value)
                changed.append(f"net.ipv4.conf.all.{knob} {current} -> {value}")
    os.makedirs(os.path.dirname(state_path) or ".", exist_ok=True)
    Path(state_path).write_text(json.dumps(state, indent=1))
    return changed


def down(vips: list[Address], state_path: str = DEFAULT_STATE) -> list[str]:
    """Undo `up`: remove the VIPs it added and restore the sysctls it changed."""
    state = _load_state(state_path)
    changed: list[str] = []
    added = {(a, p) for a, p in state["addresses"]}
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for vip in vips:
            host = 32 if vip.version == 4 else 128
            if (str(vip), host) in added or not Path(state_path).exists():
                try:
                    ipr.addr("del", index=lo, address=str(vip), prefixlen=host)
                    changed.append(f"removed {vip}/{host} from lo")
                except Exception:
                    pass
            added.discard((str(vip), host))
    if not added:  # last VIP gone: put the host back as it was
        for key, value in state["sysctls"].items():
            iface, knob = key.split("/")
            _write_sysctl(iface, knob, int(value))
            changed.append(f"net.ipv4.conf.{iface}.{knob} restored to {value}")
        Path(state_path).unlink(missing_ok=True)
    else:
        state["addresses"] = [list(x) for x in sorted(added)]
        Path(state_path).write_text(json.dumps(state, indent=1))
    return changed


def findings_json(found: list[Finding]) -> list[dict[str, str]]:
    return [asdict(f) for f in found]
