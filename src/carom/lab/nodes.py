"""Building and removing the lab's namespaces, links, addresses and routes.

Thin I/O over the `ip`, `sysctl` and `ethtool` commands, run inside the lab's
namespaces only. Safety rules every function here keeps:

* the host's (initial) network namespace is never changed: veth pairs are
  created inside the switch namespace with their peer placed straight into the
  node's namespace (`ip -n carom-lan link add ... peer name carom0 netns NODE`);
* only namespaces listed in `topology.NAMESPACES` are ever deleted.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from carom.lab import topology as t

log = logging.getLogger("carom.lab")

NETNS_DIR = Path("/run/netns")


class LabError(RuntimeError):
    """A lab operation failed; the message says which command and why."""


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command, capture its output, and turn a failure into a LabError."""
    log.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: not installed ({exc})") from exc
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip -n NS ...`: the namespace is mandatory, so the host is never touched."""
    return run(["ip", "-n", ns, *args], check=check)


def netns_exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs a command inside a namespace."""
    return ["ip", "netns", "exec", ns, *argv]


def sysctl(ns: str, settings: dict[str, str | int]) -> None:
    """Set sysctls inside a namespace, all in one process."""
    pairs = [f"{k}={v}" for k, v in settings.items()]
    run(netns_exec_argv(ns, ["sysctl", "-q", "-w", *pairs]))


def netns_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def existing_namespaces() -> list[str]:
    """The lab's namespaces that exist right now (only those the lab defines)."""
    return [ns for ns in t.NAMESPACES if netns_exists(ns)]


def netns_pids(ns: str) -> list[int]:
    """Processes running inside a namespace."""
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def add_netns(ns: str) -> None:
    if not ns.startswith(f"{t.PREFIX}-"):
        raise LabError(f"refusing to create namespace {ns!r}: not a carom name")
    run(["ip", "netns", "add", ns])
    ip(ns, "link", "set", "lo", "up")


def del_netns(ns: str) -> None:
    if ns not in t.NAMESPACES:
        raise LabError(f"refusing to delete namespace {ns!r}: not defined by the lab")
    if netns_exists(ns):
        run(["ip", "netns", "del", ns])


def xdp_pass_object() -> Path:
    """The pass-everything XDP program for bridge ports, shipped in the package."""
    path = Path(str(resources.files("carom.bpf").joinpath("obj/xdp_pass.bpf.o")))
    if not path.is_file():
        raise LabError(f"{path} is missing: run `make bpf` first")
    return path


# --- the switch -----------------------------------------------------------------


def build_switch() -> None:
    """The switch namespace with one bridge per segment.

    IPv6 is off in the switch itself so the bridges and ports carry no
    link-local addresses and send no MLD or router solicitations of their own;
    the bridges still forward IPv6 frames. Multicast snooping is off: with no
    querier on the segment a snooping bridge may stop forwarding the
    solicited-node multicast that NDP relies on.
    """
    add_netns(t.SWITCH_NS)
    sysctl(
        t.SWITCH_NS,
        {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1},
    )
    for seg in t.SEGMENTS:
        ip(t.SWITCH_NS, "link", "add", seg.bridge, "type", "bridge", "mcast_snooping", "0")
        ip(t.SWITCH_NS, "link", "set", seg.bridge, "up")


# --- the nodes ------------------------------------------------------------------


def _node_sysctls(node: t.Node) -> dict[str, str | int]:
    settings: dict[str, str | int] = {
        # Addresses usable at once: no duplicate-address detection in a lab
        # whose addresses are all fixed and distinct.
        "net.ipv6.conf.all.accept_dad": 0,
        "net.ipv6.conf.default.accept_dad": 0,
        # Routes are static; router advertisements would only add noise.
        "net.ipv6.conf.default.accept_ra": 0,
    }
    if node.role is t.Role.ROUTER:
        settings["net.ipv4.ip_forward"] = 1
        settings["net.ipv6.conf.all.forwarding"] = 1
    return settings


def tx_checksum_off(ns: str, ifname: str) -> None:
    """On veth, frames sent back out by XDP_TX keep the partial checksum the
    sender's stack left for offload; with TX checksum offload off the sender's
    stack computes full checksums, so forwarded TCP segments arrive valid."""
    run(netns_exec_argv(ns, ["ethtool", "-K", ifname, "tx", "off"]))


def build_node(node: t.Node) -> None:
    """Namespace, veths to the switch, addresses, default routes."""
    add_netns(node.name)
    sysctl(node.name, _node_sysctls(node))
    for iface in node.interfaces:
        _attach(iface)
    if node.role is not t.Role.ROUTER:
        seg = node.main.segment
        ip(node.name, "route", "add", "default", "via", str(t.gateway4(seg)))
        ip(node.name, "-6", "route", "add", "default", "via", str(t.gateway6(seg)))


def _attach(iface: t.Interface) -> None:
    """One veth pair: the port end in the switch, the inner end in the node."""
    sw, seg = t.SWITCH_NS, iface.segment
    peer = ["peer", "name", iface.ifname, "netns", iface.node]
    ip(sw, "link", "add", iface.port, "type", "veth", *peer)
    ip(sw, "link", "set", iface.port, "master", seg.bridge, "up")
    ip(iface.node, "link", "set", iface.ifname, "address", iface.mac, "up")
    ip(iface.node, "addr", "add", f"{iface.addr4}/{seg.net4.prefixlen}", "dev", iface.ifname)
    addr6 = f"{iface.addr6}/{seg.net6.prefixlen}"
    ip(iface.node, "-6", "addr", "add", addr6, "dev", iface.ifname, "nodad")
    tx_checksum_off(sw, iface.port)
    tx_checksum_off(iface.node, iface.ifname)


def attach_xdp_pass(iface: t.Interface) -> None:
    """XDP_TX on a veth only reaches the peer if the peer runs an XDP program;
    give the director's bridge port one that passes everything."""
    obj = xdp_pass_object()
    ip(t.SWITCH_NS, "link", "set", "dev", iface.port, "xdpdrv", "obj", str(obj), "sec", "xdp")


def xdp_attached(ns: str, ifname: str) -> bool:
    proc = ip(ns, "-d", "link", "show", "dev", ifname, check=False)
    return proc.returncode == 0 and " xdp" in proc.stdout


# --- VIPs -----------------------------------------------------------------------


def realserver_up(node: t.Node, vips: Sequence[t.IPv4 | t.IPv6] = t.VIPS) -> None:
    """Make a node a DSR real server for the VIPs, the way an operator would:
    `carom realserver up` inside the node (field note 1: VIPs on loopback with
    host masks, ARP never answered or announced for them). IPv6 needs no ARP
    tuning: Linux answers a neighbour solicitation only for addresses on the
    interface it arrived on, and the VIP is on lo."""
    argv = [
        sys.executable,
        "-m",
        "carom",
        "realserver",
        "up",
        "--state",
        f"{t.DEFAULT_STATE_DIR}/{node.name}.realserver.json",
    ]
    for vip in vips:
        argv += ["--vip", str(vip)]
    proc = subprocess.run(
        ["ip", "netns", "exec", node.name, *argv], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"carom realserver up failed in {node.name}: {proc.stdout}{proc.stderr}")


# --- reading state back ---------------------------------------------------------


def addresses(ns: str) -> dict[str, list[str]]:
    """Global addresses per interface, as "ADDR/PREFIX"."""
    proc = ip(ns, "-j", "addr", "show", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    out: dict[str, list[str]] = {}
    for link in json.loads(proc.stdout):
        addrs = [
            f"{a['local']}/{a['prefixlen']}"
            for a in link.get("addr_info", [])
            if a.get("scope") == "global" or (link["ifname"] == "lo" and a["local"] in _vip_strs())
        ]
        if addrs:
            out[link["ifname"]] = addrs
    return out


def _vip_strs() -> set[str]:
    return {str(v) for v in t.VIPS}


def vip_neighbours(ns: str) -> dict[str, str]:
    """VIP -> MAC as a node's neighbour table has it (resolved entries only):
    who answered ARP/NDP for the VIPs, from that node's point of view."""
    proc = ip(ns, "-j", "neigh", "show", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    vips = _vip_strs()
    return {
        n["dst"]: n["lladdr"]
        for n in json.loads(proc.stdout)
        if n.get("dst") in vips and n.get("lladdr") and "FAILED" not in n.get("state", [])
    }
