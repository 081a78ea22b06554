"""`carom realserver up|down|check` on a real Linux host (a namespace pair), with
ARP from a peer to prove the host never answers for the VIP."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

VIP, VIP6 = "192.0.2.100", "2001:db8:2::100"
HOST, PEER = "192.0.2.11", "192.0.2.1"


@dataclass
class Pair:
    host: str
    peer: str
    state: Path

    def run(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60
        )

    def carom(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            self.host,
            sys.executable,
            "-m",
            "carom",
            "realserver",
            *argv,
            "--state",
            str(self.state),
        )

    def sysctl(self, key: str) -> int:
        return int(self.run(self.host, "sysctl", "-n", key).stdout)

    def lo_addrs(self) -> str:
        return self.run(self.host, "ip", "-br", "addr", "show", "lo").stdout

    def arp_reply(self, target: str) -> bool:
        """Does the host answer an ARP request for `target` sent by the peer?"""
        script = (
            "from scapy.all import ARP, Ether, srp1, conf; conf.verb = 0\n"
            f"r = srp1(Ether(dst='ff:ff:ff:ff:ff:ff')/ARP(pdst='{target}', psrc='{PEER}'),"
            " iface='carom0', timeout=1)\n"
            "print('reply' if r is not None and r.haslayer(ARP) and r[ARP].op == 2 else 'none')"
        )
        return self.run(self.peer, sys.executable, "-c", script).stdout.strip() == "reply"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    p = Pair(f"carom-rsh-{tag}", f"carom-rsp-{tag}", tmp_path / "state.json")
    try:
        for ns in (p.host, p.peer):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(
            [
                "ip",
                "-n",
                p.host,
                "link",
                "add",
                "carom0",
                "type",
                "veth",
                "peer",
                "name",
                "carom0",
                "netns",
                p.peer,
            ],
            check=True,
        )
        for ns, addr in ((p.host, HOST), (p.peer, PEER)):
            subprocess.run(
                ["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "carom0"], check=True
            )
            subprocess.run(["ip", "-n", ns, "link", "set", "carom0", "up"], check=True)
        yield p
    finally:
        for ns in (p.host, p.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_up_check_arp_and_down(pair: Pair) -> None:
    # a fresh namespace: loopback down, arp_ignore 0, the VIP nowhere
    before = {k: pair.sysctl(f"net.ipv4.conf.all.{k}") for k in ("arp_ignore", "arp_announce")}
    assert pair.carom("check", "--vip", VIP).returncode == 1
    r = pair.carom("up", "--vip", VIP)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{VIP}/32" in pair.lo_addrs()
    assert pair.sysctl("net.ipv4.conf.all.arp_ignore") == 1
    assert pair.sysctl("net.ipv4.conf.all.arp_announce") == 2
    check = pair.carom("check", "--vip", VIP)
    assert check.returncode == 0 and check.stdout.startswith("ok"), check.stdout
    # the host answers ARP for its own address, never for the VIP
    assert pair.arp_reply(HOST)
    assert not pair.arp_reply(VIP)

    again = pair.carom("up", "--vip", VIP)
    assert again.returncode == 0 and "nothing to change" in again.stdout

    r = pair.carom("down", "--vip", VIP)
    assert r.returncode == 0
    assert VIP not in pair.lo_addrs()
    after = {k: pair.sysctl(f"net.ipv4.conf.all.{k}") for k in ("arp_ignore", "arp_announce")}
    assert after == before


def test_down_keeps_an_address_that_was_there_before(pair: Pair) -> None:
    pair.run(pair.host, "ip", "link", "set", "lo", "up")
    pair.run(pair.host, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    assert pair.carom("up", "--vip", VIP).returncode == 0
    assert pair.carom("down", "--vip", VIP).returncode == 0
    assert f"{VIP}/32" in pair.lo_addrs(), "down removed an address it did not add"


def test_check_catches_a_misconfigured_host(pair: Pair) -> None:
    pair.run(pair.host, "ip", "link", "set", "lo", "up")
    pair.run(pair.host, "ip", "addr", "add", f"{VIP}/24", "dev", "lo")
    pair.run(pair.host, "ip", "addr", "add", f"{VIP}/32", "dev", "carom0")
    pair.run(pair.host, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0")
    pair.run(pair.host, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    r = pair.carom("check", "--vip", VIP, "--json")
    assert r.returncode == 1
    messages = [f["message"] for f in json.loads(r.stdout)["findings"]]
    text = "\n".join(messages)
    assert "is on lo with /24, not /32" in text
    assert "configured on carom0: this host will answer ARP/NDP for the VIP" in text
    assert "arp_ignore is 0 on carom0" in text
    assert "strict reverse-path filtering on carom0" in text
    human = pair.carom("check", "--vip", VIP).stdout
    assert "fix: ip addr del 192.0.2.100/32 dev carom0" in human
    # not just words: with the /24 on lo the whole segment looks local, and the
    # host stops answering ARP even for its own address (field note 1)
    assert not pair.arp_reply(HOST)


def test_a_host_with_the_vip_on_its_interface_steals_it(pair: Pair) -> None:
    pair.run(pair.host, "ip", "addr", "add", f"{VIP}/32", "dev", "carom0")
    pair.run(pair.host, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0")
    assert pair.carom("check", "--vip", VIP).returncode == 1
    assert pair.arp_reply(VIP), "this host answers ARP for the VIP: it would steal it"
    pair.run(pair.host, "ip", "addr", "del", f"{VIP}/32", "dev", "carom0")
    assert pair.carom("up", "--vip", VIP).returncode == 0
    assert not pair.arp_reply(VIP)
    assert pair.arp_reply(HOST)


def test_ipv6_vip(pair: Pair) -> None:
    r = pair.carom("up", "--vip", VIP6, "--vip", VIP)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{VIP6}/128" in pair.lo_addrs()
    assert pair.carom("check", "--vip", VIP6, "--vip", VIP).returncode == 0
    assert pair.carom("down", "--vip", VIP6, "--vip", VIP).returncode == 0
    assert VIP6 not in pair.lo_addrs()
