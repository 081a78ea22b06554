"""The through-VIP probe path, proven with real TCP stacks in namespaces.

Topology (names carom-hc*, addresses from 192.0.2.0/24):

    carom-hcs: bridge carom-hcbr
      |-- carom-hcd  (the director: 192.0.2.2/24, holds the VIP 192.0.2.100 like a
      |               carom director; runs the prober, which builds carom-hc-t)
      |-- carom-hcr1 (a good DSR real: 192.0.2.11, VIP on lo /32, arp_ignore=1)
      `-- carom-hcr2 (a broken DSR real: 192.0.2.12, the VIP missing from lo)

Both reals run an HTTP server on 0.0.0.0:80 and a UDP echo on 0.0.0.0:7. A probe
of a real's own address passes for both; a probe through the VIP path passes
for real1 and fails for real2, which drops packets addressed to a VIP it does
not have."""

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
        for ns, address in ((DIRECTOR, "192.0.2.2"), (REAL1, "192.0.2.11"), (REAL2, "192.0.2.12")):
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
            sh("ip", "link", "set", "carom0", "up", ns=ns)
        sh("ip", "addr", "add", f"{VIP}/32", "dev", "carom0", ns=DIRECTOR)  # the director owns it
        sh("ip", "addr", "add", f"{VIP}/32", "dev", "lo", ns=REAL1)  # a proper DSR real
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
                        "0.0.0.0",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-c", UDP_ECHO],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)  # the servers bind
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

PROBER = r"""
import asyncio, json, subprocess, sys
from ipaddress import IPv4Address, IPv4Interface
from carom.health.probe import run_check
from carom.health.spec import HttpCheck, ProbeKey, Target, TcpCheck, Timing, UdpCheck
from carom.health.vip_path import VipPath

vip = IPv4Address("192.0.2.100")
reals = [IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12")]
path = VipPath("t", "carom0", IPv4Interface("192.0.2.250/24"))
path.up()
path.sync({r: frozenset({vip}) for r in reals})
timing = Timing(interval=2.0, timeout=1.0)

async def main():
    out = {}
    for real in reals:
        for kind, check, port in (
            ("tcp", TcpCheck(timing=timing), 80),
            ("http", HttpCheck(timing=timing), 80),
            ("udp", UdpCheck(timing=timing, send=b"hi", expect=b"echo hi"), 7),
        ):
            own = await run_check(ProbeKey(Target(address=real, port=port, real=real), check))
            via = await run_check(
                ProbeKey(Target(address=vip, port=port, real=real, via=path.via(real)), check)
            )
            out[f"{real} {kind}"] = [own.ok, own.reason, via.ok, via.reason]
    path.sync({reals[0]: frozenset({vip})})  # real2 removed: its table goes
    out["after sync"] = path.via(reals[0]).mark
    out["rules"] = subprocess.run(
        ["ip", "-n", path.netns, "rule", "show"], capture_output=True, text=True, check=True
    ).stdout
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
    for kind in ("tcp", "http", "udp"):
        own_ok, own_reason, via_ok, via_reason = out[f"192.0.2.11 {kind}"]
        assert own_ok and via_ok, (own_reason, via_reason)
        own_ok, own_reason, via_ok, via_reason = out[f"192.0.2.12 {kind}"]
        assert own_ok, own_reason  # the real's own address answers...
        # ...but not DSR traffic. A timeout, not "connection refused": the probe did
        # not end at the director (which holds the VIP, with nothing on port 80)
        assert not via_ok and via_reason == "timed out after 1 s"
    # the namespace holds the path (real2's rule went with it) and nothing leaked
    # into the director's own rules
    assert "fwmark 0x3e9 lookup 1001" in out["rules"], out["rules"]
    assert "lookup 1002" not in out["rules"]
    director_rules = subprocess.run(
        ["ip", "-n", DIRECTOR, "rule", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert "fwmark" not in director_rules
