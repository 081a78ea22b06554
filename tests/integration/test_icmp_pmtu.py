"""Path MTU discovery through a DSR director (field note 7), end to end.

client --(MTU 1400 at the router)-- router --bridge-- director (XDP)
                                                  \\-- real server (VIP on lo)

The real answers with full-size segments; the router cannot forward them to the
client and sends "fragmentation needed" (IPv4) or "packet too big" (IPv6) to
their source, the VIP, which it resolves (through the XDP ARP/NDP responder) to
the director. The director must
pass the error on to the real, or the large response never arrives."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

VIP, VIP6 = "192.0.2.100", "2001:db8:2::100"
CLIENT, CLIENT_GW = "198.51.100.10", "198.51.100.1"
CLIENT6, CLIENT_GW6 = "2001:db8:1::10", "2001:db8:1::1"
ROUTER, DIRECTOR, REAL = "192.0.2.1", "192.0.2.2", "192.0.2.11"
ROUTER6, DIRECTOR6, REAL6 = "2001:db8:2::1", "2001:db8:2::2", "2001:db8:2::11"
SMALL_MTU = 1400
RESPONSE = 400_000

# In the director's namespace: the real program with one service (VIP:80/tcp ->
# the real), active with a lease; prints its counters when asked on stdin.
DIRECTOR_CONTROL = """
import ipaddress, json, sys, time
import numpy as np
from carom import abi
from tests.harness.testrun import TestRunner
from carom.model.state import Node, Real, Service, State
runner = TestRunner()
size = runner.limits.maglev_table_size
state = State(
    node=Node(maglev_size=size, lease_until_ns=time.monotonic_ns() + 600 * 10**9),
    reals={1: Real(1, ipaddress.ip_address(sys.argv[2]), mac=bytes.fromhex(sys.argv[3]))},
    services=[Service(vip=ipaddress.ip_address(sys.argv[1]), proto=6, port=80, svc_id=0,
                      table=np.ones(size, dtype=np.uint32))],
)
runner.write_state(state)
runner.dp.attach("carom0", "generic")
print("up", flush=True)
for _ in sys.stdin:
    print(json.dumps({c.name.lower(): n for c, n in runner.counters().items()}), flush=True)
"""

SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 80))
s.listen()
print("up", flush=True)
c, _ = s.accept()
c.recv(64)
c.sendall(b"x" * int(sys.argv[2]))
c.close()
"""

CLIENT_FETCH = """
import socket, sys
c = socket.create_connection((sys.argv[1], 80), timeout=8)
c.sendall(b"GET")
n = 0
try:
    while chunk := c.recv(65536):
        n += len(chunk)
except TimeoutError:
    pass
print(n)
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@dataclass
class Topology:
    client: str
    router: str
    director: str
    real: str


def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    sh("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
       "netns", ns_b)  # fmt: skip
    sh("ip", "-n", ns_a, "link", "set", name_a, "up")
    sh("ip", "-n", ns_b, "link", "set", name_b, "up")


def _sysctl(ns: str, *settings: str) -> None:
    for s in settings:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", s)


@pytest.fixture
def topo() -> Iterator[Topology]:
    tag = uuid.uuid4().hex[:6]
    t = Topology(*(f"carom-dp2-{r}-{tag}" for r in ("c", "r", "d", "s")))
    names = (t.client, t.router, t.director, t.real)
    try:
        for ns in names:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sysctl(ns, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        _veth(t.client, "carom0", t.router, "caromc")
        sh("ip", "-n", t.router, "link", "set", "caromc", "mtu", str(SMALL_MTU))
        sh("ip", "-n", t.router, "link", "add", "carombr", "type", "bridge")
        sh("ip", "-n", t.router, "link", "set", "carombr", "up")
        for port, ns in (("caromd", t.director), ("caroms", t.real)):
            _veth(t.router, port, ns, "carom0")
            sh("ip", "-n", t.router, "link", "set", port, "master", "carombr")
        for ns, dev, a4, a6 in (
            (t.client, "carom0", f"{CLIENT}/24", f"{CLIENT6}/64"),
            (t.router, "caromc", f"{CLIENT_GW}/24", f"{CLIENT_GW6}/64"),
            (t.router, "carombr", f"{ROUTER}/24", f"{ROUTER6}/64"),
            (t.director, "carom0", f"{DIRECTOR}/24", f"{DIRECTOR6}/64"),
            (t.real, "carom0", f"{REAL}/24", f"{REAL6}/64"),
            (t.real, "lo", f"{VIP}/32", f"{VIP6}/128"),
        ):
            sh("ip", "-n", ns, "addr", "add", a4, "dev", dev)
            sh("ip", "-n", ns, "addr", "add", a6, "dev", dev, "nodad")
        sh("ip", "-n", t.client, "route", "add", "default", "via", CLIENT_GW)
        sh("ip", "-n", t.client, "-6", "route", "add", "default", "via", CLIENT_GW6)
        sh("ip", "-n", t.real, "route", "add", "default", "via", ROUTER)
        sh("ip", "-n", t.real, "-6", "route", "add", "default", "via", ROUTER6)
        _sysctl(t.router, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        _sysctl(t.real, "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
        yield t
    finally:
        for ns in names:
            sh("ip", "netns", "del", ns, check=False)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4-frag-needed", "ipv6-packet-too-big"])
def test_large_response_reaches_a_client_behind_a_small_mtu(topo: Topology, v6: bool) -> None:
    vip, real, client = (VIP6, REAL6, CLIENT6) if v6 else (VIP, REAL, CLIENT)
    link = json.loads(sh("ip", "-n", topo.real, "-j", "link", "show", "carom0").stdout)
    real_mac = link[0]["address"].replace(":", "")
    director = subprocess.Popen(
        ["ip", "netns", "exec", topo.director, sys.executable, "-c", DIRECTOR_CONTROL,
         vip, real, real_mac],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = subprocess.Popen(
        ["ip", "netns", "exec", topo.real, sys.executable, "-c", SERVER, vip, str(RESPONSE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert director.stdout is not None and director.stdin is not None
        assert director.stdout.readline().strip() == "up"
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        fetched = sh(
            "ip", "netns", "exec", topo.client, sys.executable, "-c", CLIENT_FETCH, vip
        )  # fmt: skip
        director.stdin.write("stats\n")
        director.stdin.flush()
        counters = json.loads(director.stdout.readline())
        cached = sh("ip", "-n", topo.real, "route", "get", client, "from", vip).stdout
    finally:
        server.kill()
        server.wait()
        if director.stdin is not None:
            director.stdin.close()
        director.wait(timeout=10)

    # Everything arrived, because the real learned the path MTU from the error
    # the director passed on; the router found the director through its ARP reply.
    # (With the ICMP hook removed from the program, the fetch stalls after the
    # first segments and the first assertion fails: checked by hand.)
    assert int(fetched.stdout) == RESPONSE, (fetched.stdout, counters)
    assert f"mtu {SMALL_MTU}" in cached, cached
    assert counters.get("tx_icmp_error", 0) >= 1, counters
    assert counters.get("tx_nd_advert" if v6 else "tx_arp_reply", 0) >= 1, counters
