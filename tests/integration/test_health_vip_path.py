"""The through-VIP probe path, proven with real TCP stacks in namespaces.

Topology (names carom-hc*, addresses from 192.0.2.0/24 and 2001:db8:1::/64):

    carom-hcs: bridge carom-hcbr
      |-- carom-hcd  (the director: 192.0.2.2/24 and 2001:db8:1::2/64, holds the
      |               VIPs 192.0.2.100 and 2001:db8:1::100 like a carom director;
      |               runs the prober, which builds carom-hc-t)
      |-- carom-hcr1 (a good DSR real: .11 and ::11, both VIPs on lo, arp_ignore=1)
      `-- carom-hcr2 (a broken DSR real: .12 and ::12, the VIPs missing from lo)

Both reals run an HTTP server on [::]:80 (both families) and a UDP echo on port 7
per family. A probe of a real's own address passes for both; a probe through the
VIP path passes for real1 and fails for real2, which drops packets addressed to a
VIP it does not have. In both families."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

SWITCH, DIRECTOR, REAL1, REAL2 = "carom-hcs", "carom-hcd", "carom-hcr1", "carom-hcr2"
NAMESPACES = (SWITCH, DIRECTOR, REAL1, REAL2)
# made by the prober inside `ip netns exec carom-hcd`, whose private mount
# namespace hides it from here; the prober removes it (and it dies with it)
PROBE_NS = "carom-hc-t"
VIP = "192.0.2.100"
VIP6 = "2001:db8:1::100"
ROOT = Path(__file__).parents[2]


def sh(*argv: str, ns: str | None = None) -> None:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    subprocess.run(full, check=True, capture_output=True, timeout=30)


def _down() -> None:
    for ns in (*NAMESPACES, PROBE_NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def topology() -> Iterator[None]:
    _down()
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for ns in NAMESPACES:
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "add", "carom-hcbr", "type", "bridge", ns=SWITCH)
        sh("ip", "link", "set", "carom-hcbr", "up", ns=SWITCH)
        for ns, address, address6 in (
            (DIRECTOR, "192.0.2.2", "2001:db8:1::2"),
            (REAL1, "192.0.2.11", "2001:db8:1::11"),
            (REAL2, "192.0.2.12", "2001:db8:1::12"),
        ):
            port = f"p-{ns[-3:]}"
            sh(
                "ip",
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "carom0",
                "netns",
                ns,
                ns=SWITCH,
            )
            sh("ip", "link", "set", port, "master", "carom-hcbr", "up", ns=SWITCH)
            sh("ip", "addr", "add", f"{address}/24", "dev", "carom0", ns=ns)
            sh("ip", "addr", "add", f"{address6}/64", "dev", "carom0", "nodad", ns=ns)
            sh("ip", "link", "set", "carom0", "up", ns=ns)
        sh("ip", "addr", "add", f"{VIP}/32", "dev", "carom0", ns=DIRECTOR)  # the director owns it
        # deprecated (preferred_lft 0): still the director's, but never the source
        # of its own probes, which the real holding the VIP would answer to itself
        sh(
            "ip", "addr", "add", f"{VIP6}/128", "dev", "carom0", "nodad", "preferred_lft", "0",
            ns=DIRECTOR,
        )  # fmt: skip
        sh("ip", "addr", "add", f"{VIP}/32", "dev", "lo", ns=REAL1)  # a proper DSR real
        sh("ip", "addr", "add", f"{VIP6}/128", "dev", "lo", ns=REAL1)
        for ns in (REAL1, REAL2):
            sh("sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1", ns=ns)
            sh("sysctl", "-q", "-w", "net.ipv4.conf.all.arp_announce=2", ns=ns)
            servers.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        sys.executable,
                        "-m",
                        "http.server",
                        "80",
                        "--bind",
                        "::",  # both families (the module's server is dual-stack)
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            for echo in (UDP_ECHO, UDP_ECHO6):
                servers.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", ns, sys.executable, "-c", echo],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        time.sleep(0.5)  # the servers bind
        for address in ("2001:db8:1::11", "2001:db8:1::12"):  # IPv6 up on the bridge
            for _ in range(10):
                ping = ["ip", "netns", "exec", DIRECTOR, "ping", "-6", "-c1", "-W1", address]
                if subprocess.run(ping, capture_output=True, timeout=30).returncode == 0:
                    break
        yield
    finally:
        for proc in servers:  # ip netns exec execs: the PID is the server's
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        _down()


# a UDP echo on 0.0.0.0:7 that answers from the address it was asked on
UDP_ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 8, 1)  # IP_PKTINFO: reply from the VIP it came to
s.bind(("0.0.0.0", 7))
while True:
    data, anc, _, peer = s.recvmsg(2048, 256)
    s.sendmsg([b"echo " + data], anc, 0, peer)
"""
# the same on [::]:7 (IPV6_RECVPKTINFO in, IPV6_PKTINFO out)
UDP_ECHO6 = r"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
s.bind(("::", 7))
while True:
    data, anc, _, peer = s.recvmsg(2048, 256)
    s.sendmsg([b"echo " + data], anc, 0, peer)
"""

PROBER = r"""
import asyncio, json, os, subprocess, sys
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from carom.health.probe import run_check
from carom.health.spec import (
    ExecCheck, HttpCheck, ProbeKey, SynCheck, Target, TcpCheck, Timing, UdpCheck,
)
from carom.health.vip_path import VipPath

# `ip netns exec` gave this process a fresh /sys without the cgroup mounts: the
# probe path mounts the hierarchy itself (in this private mount namespace)
from carom.health import exec_path
# a command that connects to what it is given, as an operator's script would
CONNECT = (
    "import os, socket; socket.create_connection("
    "(os.environ['CAROM_ADDRESS'], int(os.environ['CAROM_PORT'])), 1.5).close()"
)

vip, vip6 = IPv4Address("192.0.2.100"), IPv6Address("2001:db8:1::100")
reals = [IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12")]
reals6 = [IPv6Address("2001:db8:1::11"), IPv6Address("2001:db8:1::12")]
path = VipPath(
    "t", "carom0", IPv4Interface("192.0.2.250/24"), IPv6Interface("2001:db8:1::fa/64")
)
path.up()
path.sync({**{r: frozenset({vip}) for r in reals}, **{r: frozenset({vip6}) for r in reals6}})
timing = Timing(interval=2.0, timeout=1.0)
slow = Timing(interval=3.0, timeout=2.0)  # exec: an interpreter starts first

async def main():
    out = {}
    for real in reals + reals6:
        vip_of = vip if real.version == 4 else vip6
        for kind, check, port in (
            ("tcp", TcpCheck(timing=timing), 80),
            ("http", HttpCheck(timing=timing), 80),
            ("syn", SynCheck(timing=timing), 80),
            ("exec", ExecCheck(timing=slow, command=(sys.executable, "-c", CONNECT)), 80),
            ("udp", UdpCheck(timing=timing, send=b"hi", expect=b"echo hi"), 7),
        ):
            own = await run_check(ProbeKey(Target(address=real, port=port, real=real), check))
            via = await run_check(
                ProbeKey(Target(address=vip_of, port=port, real=real, via=path.via(real)), check)
            )
            out[f"{real} {kind}"] = [own.ok, own.reason, via.ok, via.reason]
    # real2 of each family removed: its table goes
    path.sync({reals[0]: frozenset({vip}), reals6[0]: frozenset({vip6})})
    for family in ("-4", "-6"):
        out[f"rules {family}"] = subprocess.run(
            ["ip", family, "-n", path.netns, "rule", "show"],
            capture_output=True, text=True, check=True,
        ).stdout
    out["marks"] = [path.via(reals[0]).mark, path.via(reals6[0]).mark]
    out["exec_error"] = path.exec_error
    out["cgroup2"] = exec_path.cgroup2_root()
    out["cgroups"] = sorted(os.listdir(os.path.join(out["cgroup2"], path.netns)))
    return out

try:
    print(json.dumps(asyncio.run(main())))
finally:
    path.down()
"""


def test_probe_through_the_vip_path_catches_a_real_without_the_vip(topology: None) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        ["ip", "netns", "exec", DIRECTOR, sys.executable, "-c", PROBER],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert not os.path.exists("/run/carom-hc-cgroup2")  # unmounted and removed by down()
    for good, bad in (("192.0.2.11", "192.0.2.12"), ("2001:db8:1::11", "2001:db8:1::12")):
        for kind in ("tcp", "http", "syn", "udp", "exec"):
            own_ok, own_reason, via_ok, via_reason = out[f"{good} {kind}"]
            assert own_ok and via_ok, (good, kind, own_reason, via_reason)
            own_ok, own_reason, via_ok, via_reason = out[f"{bad} {kind}"]
            assert own_ok, (bad, kind, own_reason)  # the real's own address answers...
            # ...but not DSR traffic. A timeout, not "connection refused": the probe did
            # not end at the director (which holds the VIP, with nothing on port 80)
            if kind == "exec":  # the command's own timeout (1.5 s), within the check's
                assert not via_ok and "timed out" in via_reason, (bad, via_reason)
            else:
                assert not via_ok and via_reason == "timed out after 1 s", (bad, kind, via_reason)
    assert out["exec_error"] == "" and out["cgroup2"] == "/run/carom-hc-cgroup2", out
    # a cgroup per real probed through the VIP path: real2's went with its route
    assert out["cgroups"] and len([c for c in out["cgroups"] if c.isdigit()]) == 2, out
    # the namespace holds the paths (real2's rules went) and nothing leaked into
    # the director's own rules. Numbers go by address order: .11 1, .12 2, ::11 3
    m4, m6 = out["marks"]
    assert f"fwmark {m4:#x} lookup {m4}" in out["rules -4"], out["rules -4"]
    assert f"fwmark {m6:#x} lookup {m6}" in out["rules -6"], out["rules -6"]
    assert f"lookup {m6}" not in out["rules -4"] and f"lookup {m4}" not in out["rules -6"]
    assert out["rules -4"].count("fwmark") == 1 and out["rules -6"].count("fwmark") == 1
    # the half-open probes through the VIP path sent their own RST along the
    # marked path: the good real holds no half-open connection from them
    half_open = subprocess.run(
        ["ip", "netns", "exec", REAL1, "ss", "-Htn", "state", "syn-recv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert half_open.strip() == "", half_open
    for family in ("-4", "-6"):
        director_rules = subprocess.run(
            ["ip", family, "-n", DIRECTOR, "rule", "show"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "fwmark" not in director_rules
