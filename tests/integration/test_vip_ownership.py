"""VIP ownership end to end: a peer's own kernel resolves the VIP (ARP and NDP)
to the director's MAC only through the XDP responder, only while the director is
active and its lease runs, and a TCP connection to the VIP then works although
the VIP lives on the director's `lo` with real-server ARP settings."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

VIP, VIP6 = "192.0.2.100", "2001:db8:2::100"
DIRECTOR, DIRECTOR6 = "192.0.2.2", "2001:db8:2::2"
PEER, PEER6 = "192.0.2.1", "2001:db8:2::1"
IFACE = "carom0"

# Runs inside the director's namespace: loads the program (private maps),
# attaches it (the loader records the interface MAC), then obeys one command a
# line on stdin and answers with one JSON line.
CONTROL = """
import ipaddress, json, sys, time
from carom import abi
from carom.bpf.loader import Dataplane, interface_mac
from carom.config.limits import Limits
dp = Dataplane.load(Limits(max_services=4, max_reals=8, maglev_table_size=13,
                           conn_table_size=1024, persist_table_size=1024, max_vips=4))
for v in sys.argv[1:]:
    dp["vip_addrs"].update(abi.vip_key(ipaddress.ip_address(v)), 0)
def node(role, lease_s):
    lease = time.monotonic_ns() + int(lease_s * 1e9) if lease_s else 0
    dp["node_cfg"].update(0, abi.NodeCfg(role=int(role), maglev_size=13))
    dp["lease"].update(0, lease)
node(abi.Role.BACKUP, 0)
att = dp.attach("carom0", "generic")
print(json.dumps({"mac": interface_mac("carom0").hex(":"), "mode": att.mode}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "active":
        node(abi.Role.ACTIVE, float(cmd[1]))
    elif cmd[0] == "backup":
        node(abi.Role.BACKUP, 60)
    elif cmd[0] == "stats":
        pass
    print(json.dumps({abi.Counter(i).name.lower(): sum(v)
                      for i, v in dp["stats"].items() if sum(v)}), flush=True)
"""

# A dual-stack TCP server on the director answering two connections.
SERVER = """
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 7000))
s.listen()
print("up", flush=True)
for _ in range(2):
    c, _ = s.accept()
    c.sendall(b"hello " + c.recv(16))
    c.close()
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@dataclass
class Pair:
    director: str
    peer: str
    control: subprocess.Popen[str]
    director_mac: str

    def command(self, line: str) -> dict[str, int]:
        assert self.control.stdin is not None and self.control.stdout is not None
        self.control.stdin.write(line + "\n")
        self.control.stdin.flush()
        reply: dict[str, int] = json.loads(self.control.stdout.readline())
        return reply

    def resolve(self, address: str, wait_s: float) -> str | None:
        """Let the peer's kernel resolve `address` (a datagram triggers it) and
        return the MAC it learned, or None if none within `wait_s`."""
        sh("ip", "-n", self.peer, "neigh", "flush", "dev", IFACE)
        fam = "-6" if ":" in address else "-4"
        sh(
            "ip", "netns", "exec", self.peer, sys.executable, "-c",
            "import socket,sys; a=sys.argv[1]; "
            "s=socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET, socket.SOCK_DGRAM); "
            "s.sendto(b'x', (a, 9))",
            address,
        )  # fmt: skip
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            out = sh("ip", fam, "-n", self.peer, "-j", "neigh", "show", address, "dev", IFACE)
            for entry in json.loads(out.stdout or "[]"):
                if "lladdr" in entry and "REACHABLE" in entry.get("state", []):
                    return str(entry["lladdr"])
            time.sleep(0.05)
        return None


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    d, p = f"carom-dp2-d-{tag}", f"carom-dp2-p-{tag}"
    control: subprocess.Popen[str] | None = None
    try:
        for ns in (d, p):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", d, "link", "add", IFACE, "type", "veth", "peer", "name", IFACE, "netns", p)
        for ns, a4, a6 in ((d, DIRECTOR, DIRECTOR6), (p, PEER, PEER6)):
            sh("ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", IFACE)
            sh("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", IFACE, "nodad")
            sh("ip", "-n", ns, "link", "set", IFACE, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # The director as every carom node is: VIPs on lo, real-server ARP settings.
        sh("ip", "-n", d, "addr", "add", f"{VIP}/32", "dev", "lo")
        sh("ip", "-n", d, "addr", "add", f"{VIP6}/128", "dev", "lo")
        for key, val in (("arp_ignore", "1"), ("arp_announce", "2")):
            for dev in ("all", IFACE):
                sh("ip", "netns", "exec", d, "sysctl", "-qw", f"net.ipv4.conf.{dev}.{key}={val}")
        control = subprocess.Popen(
            ["ip", "netns", "exec", d, sys.executable, "-c", CONTROL, VIP, VIP6],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert control.stdout is not None
        hello = json.loads(control.stdout.readline())
        yield Pair(director=d, peer=p, control=control, director_mac=hello["mac"])
    finally:
        if control is not None:
            if control.stdin is not None:
                control.stdin.close()
            control.wait(timeout=10)
        for ns in (d, p):
            sh("ip", "netns", "del", ns, check=False)


def test_peer_resolves_vip_only_through_the_active_director(pair: Pair) -> None:
    # Backup: nobody answers (the kernel keeps quiet for a VIP on lo).
    pair.command("backup")
    assert pair.resolve(VIP, 1.5) is None
    assert pair.resolve(VIP6, 1.5) is None
    silent = pair.command("stats")
    assert silent.get("pass_neigh_inactive", 0) >= 2

    # Active with a running lease: the peer's kernel learns the director's MAC
    # from our ARP reply and our NA (the kernel checks the NA's checksum, hop
    # limit and flags before it believes it).
    pair.command("active 60")
    assert pair.resolve(VIP, 3) == pair.director_mac
    assert pair.resolve(VIP6, 3) == pair.director_mac
    answered = pair.command("stats")
    assert answered.get("tx_arp_reply", 0) >= 1
    assert answered.get("tx_nd_advert", 0) >= 1

    # A real TCP connection to the VIP (no service configured: the director's
    # own stack answers from lo), over IPv4 and IPv6.
    server = subprocess.Popen(
        ["ip", "netns", "exec", pair.director, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        for address in (VIP, VIP6):
            out = sh(
                "ip", "netns", "exec", pair.peer, sys.executable, "-c",
                "import socket,sys; c=socket.create_connection((sys.argv[1], 7000), timeout=3); "
                "c.sendall(b'vip'); print(c.recv(64).decode())",
                address,
            )  # fmt: skip
            assert out.stdout.strip() == "hello vip"
    finally:
        server.wait(timeout=10)

    # The lease runs out (a frozen daemon): the director goes quiet at once.
    pair.command("active 0.2")
    time.sleep(0.3)
    before = pair.command("stats").get("tx_arp_reply", 0)
    assert pair.resolve(VIP, 1.5) is None
    assert pair.resolve(VIP6, 1.5) is None
    after = pair.command("stats")
    assert after.get("tx_arp_reply", 0) == before
    assert after.get("pass_neigh_inactive", 0) > silent["pass_neigh_inactive"]
