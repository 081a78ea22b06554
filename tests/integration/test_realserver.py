"""`carom realserver up|down|check` on real Linux network stacks.

Each test gets two fresh network namespaces joined by a veth pair: `host`, the
real server under test, and `peer`, which plays the router/balancer and sends
real ARP requests and neighbour solicitations (scapy) to see who answers. The
host's sysctls are set explicitly first, because a new namespace copies IPv4
settings from the machine's own namespace. Nothing outside the two namespaces
is touched, and both are deleted even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

VIP, VIP2, VIP6 = "192.0.2.100", "192.0.2.101", "2001:db8:2::100"
HOST, PEER = "192.0.2.11", "192.0.2.1"
HOST6, PEER6 = "2001:db8:2::11", "2001:db8:2::1"
CAROM = str(Path(sys.executable).with_name("carom"))
KNOBS = ("arp_ignore", "arp_announce", "rp_filter")

# Runs in the peer: one request per (kind, target), prints {target: replying MAC or null}.
PROBE = r"""
import json, socket, sys
from scapy.all import ARP, Ether, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6, conf, get_if_hwaddr, srp
from scapy.utils6 import in6_getnsma, in6_getnsmac
conf.verb = 0
iface, out = "carom0", {}
mac = get_if_hwaddr(iface)
for arg in sys.argv[1:]:
    kind, target, src = arg.split(",")
    if kind == "arp":
        pkt = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / ARP(hwsrc=mac, psrc=src, pdst=target)
    else:
        nsma = in6_getnsma(socket.inet_pton(socket.AF_INET6, target))
        pkt = (Ether(dst=in6_getnsmac(nsma), src=mac)
               / IPv6(src=src, dst=socket.inet_ntop(socket.AF_INET6, nsma), hlim=255)
               / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=mac))
    ans, _ = srp(pkt, iface=iface, timeout=1.0)
    out[target] = ans[0][1][Ether].src if len(ans) else None
print(json.dumps(out))
"""


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {proc.stdout}{proc.stderr}")
    return proc


@dataclass
class Pair:
    """The real server under test (`host`) and its neighbour on the segment (`peer`)."""

    host: str
    peer: str
    state: Path

    @staticmethod
    def netns_exec(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def sh(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([*self.netns_exec(ns), *argv], check=check)

    def ip(self, ns: str, *args: str) -> None:
        _run(["ip", "-n", ns, *args])

    def carom(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [CAROM, "realserver", *argv, "--state", str(self.state)]
        return self.sh(self.host, *cmd, check=False)

    def carom_json(self, *argv: str) -> tuple[int, dict[str, Any]]:
        r = self.carom(*argv, "--json")
        return r.returncode, json.loads(r.stdout)

    def set_sysctl(self, iface: str, knob: str, value: int, ns: str | None = None) -> None:
        path = f"/proc/sys/net/ipv4/conf/{iface}/{knob}"
        self.sh(ns or self.host, "sh", "-c", f"echo {value} > {path}")

    def sysctls(self) -> dict[str, int]:
        keys = [f"{i}/{k}" for i in ("all", "carom0") for k in KNOBS]
        out = self.sh(self.host, "cat", *[f"/proc/sys/net/ipv4/conf/{k}" for k in keys]).stdout
        return dict(zip(keys, map(int, out.split()), strict=True))

    def lo_addresses(self) -> set[str]:
        links = json.loads(self.sh(self.host, "ip", "-j", "addr", "show", "dev", "lo").stdout)
        return {f"{a['local']}/{a['prefixlen']}" for a in links[0].get("addr_info", [])}

    def mac(self, ns: str) -> str:
        return str(
            json.loads(self.sh(ns, "ip", "-j", "link", "show", "carom0").stdout)[0]["address"]
        )

    def probe(self, *targets: str) -> dict[str, str | None]:
        """Ask the segment who has each target (ARP for IPv4, NDP for IPv6): MAC or None."""
        args = [f"arp,{t},{PEER}" if ":" not in t else f"ns,{t},{PEER6}" for t in targets]
        return dict(json.loads(self.sh(self.peer, sys.executable, "-c", PROBE, *args).stdout))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for tool in ("ip", "sh", "cat", "ss", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    pytest.importorskip("scapy")
    tag = uuid.uuid4().hex[:8]
    p = Pair(f"carom-rs-h{tag}", f"carom-rs-p{tag}", tmp_path / "realserver.json")
    created: list[str] = []
    try:
        for ns in (p.host, p.peer):
            _run(["ip", "netns", "add", ns])
            created.append(ns)
        # the veth is created inside the host namespace, its peer moved straight
        # into the peer namespace: the machine's own namespace never sees it
        p.ip(p.host, "link", "add", "carom0", "type", "veth", "peer", "carom0", "netns", p.peer)
        for ns, v4, v6 in ((p.host, HOST, HOST6), (p.peer, PEER, PEER6)):
            for knob in KNOBS:  # a known starting point, whatever the machine uses
                for iface in ("all", "default", "carom0"):
                    p.set_sysctl(iface, knob, 0, ns=ns)
            p.ip(ns, "addr", "add", f"{v4}/24", "dev", "carom0")
            p.ip(ns, "addr", "add", f"{v6}/64", "dev", "carom0", "nodad")
            p.ip(ns, "link", "set", "carom0", "up")
        p.ip(p.peer, "link", "set", "lo", "up")
        yield p
    finally:
        for ns in created:
            for pid in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
                subprocess.run(["kill", pid], check=False)  # only our own test servers
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def web(pair: Pair) -> Iterator[None]:
    """An HTTP server in the host on every address (VIPs included), port 8080."""
    srv = subprocess.Popen(
        [*pair.netns_exec(pair.host), sys.executable, "-m", "http.server", "8080", "--bind", "::"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if "8080" in pair.sh(pair.host, "ss", "-ltnH", check=False).stdout:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the test's HTTP server did not listen within 10 s")
        yield
    finally:
        srv.terminate()
        srv.wait(timeout=10)


def fetch(pair: Pair, url: str, source: str | None = None) -> bool:
    """Does the peer (from `source`, if given) get an HTTP answer from the host?"""
    src = ["--interface", source] if source else []
    argv = ["curl", "-sg", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", *src, url]
    return pair.sh(pair.peer, *argv, check=False).stdout == "200"


def findings(report: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(f["code"], f["interface"]): f for f in report["findings"]}


# --- up / check / ARP ---------------------------------------------------------


def test_up_makes_a_real_server_that_never_answers_arp_or_ndp_for_the_vip(
    pair: Pair, web: None
) -> None:
    rc, report = pair.carom_json("check", "--vip", VIP, "--vip", VIP6)
    assert rc == 1 and not report["clean"]
    assert {"lo-down", "vip-missing", "arp-ignore", "arp-announce"} <= {
        f["code"] for f in report["findings"]
    }

    r = pair.carom("up", "--vip", VIP, "--vip", VIP6)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: this host is a DSR real server" in r.stdout
    assert {f"{VIP}/32", f"{VIP6}/128"} <= pair.lo_addresses()
    s = pair.sysctls()
    assert (s["all/arp_ignore"], s["all/arp_announce"]) == (1, 2)

    rc, report = pair.carom_json("check", "--vip", VIP, "--vip", VIP6)
    assert (rc, report["clean"], report["findings"]) == (0, True, [])
    (carom0,) = report["interfaces"]
    assert carom0["arp_ignore"] == {"all": 1, "interface": 0, "effective": 1}
    assert carom0["arp_announce"] == {"all": 2, "interface": 0, "effective": 2}

    # the host answers for its own addresses and never for the VIPs
    host_mac = pair.mac(pair.host)
    assert pair.probe(HOST, VIP, HOST6, VIP6) == {
        HOST: host_mac,
        VIP: None,
        HOST6: host_mac,
        VIP6: None,
    }
    # and it serves the VIPs when frames reach it (a balancer's MAC rewrite,
    # played here by routes in the peer), answering from the VIP
    pair.ip(pair.peer, "route", "add", f"{VIP}/32", "via", HOST)
    pair.ip(pair.peer, "-6", "route", "add", f"{VIP6}/128", "via", HOST6)
    assert fetch(pair, f"http://{VIP}:8080/")
    assert fetch(pair, f"http://[{VIP6}]:8080/")


def test_up_twice_changes_nothing_the_second_time(pair: Pair) -> None:
    pair.set_sysctl("all", "rp_filter", 1)
    assert pair.carom("up", "--vip", VIP, "--vip", VIP6).returncode == 0
    state, sysctls, addrs = pair.state.read_bytes(), pair.sysctls(), pair.lo_addresses()
    mtime = pair.state.stat().st_mtime_ns

    rc, again = pair.carom_json("up", "--vip", VIP, "--vip", VIP6)
    assert rc == 0 and again["clean"]
    assert (again["changed"], again["state_written"]) == (False, False)
    assert [s["action"] for s in again["steps"]] == ["present", "present", "unchanged"]
    assert "nothing to change" in pair.carom("up", "--vip", VIP, "--vip", VIP6).stdout
    assert pair.state.read_bytes() == state and pair.state.stat().st_mtime_ns == mtime
    assert (pair.sysctls(), pair.lo_addresses()) == (sysctls, addrs)


# --- down ---------------------------------------------------------------------


def test_down_restores_sysctls_and_keeps_an_address_that_was_there_before(pair: Pair) -> None:
    pair.ip(pair.host, "link", "set", "lo", "up")
    pair.ip(pair.host, "addr", "add", f"{VIP2}/32", "dev", "lo")  # an operator's, before carom
    pair.set_sysctl("all", "rp_filter", 1)
    pair.set_sysctl("carom0", "arp_announce", 1)
    before_sysctls, before_addrs = pair.sysctls(), pair.lo_addresses()

    assert pair.carom("up", "--vip", VIP, "--vip", VIP2, "--vip", VIP6).returncode == 0
    s = pair.sysctls()
    assert (s["all/arp_ignore"], s["all/arp_announce"], s["carom0/rp_filter"]) == (1, 2, 2)
    assert s["all/rp_filter"] == 1, "loose mode is set per interface; `all` stays"

    # taking one VIP down keeps the settings the others still need
    r = pair.carom("down", "--vip", VIP)
    assert r.returncode == 0 and "still needed by" in r.stdout
    assert f"{VIP}/32" not in pair.lo_addresses() and pair.sysctls() == s

    rc, report = pair.carom_json("down")  # every VIP still recorded
    assert rc == 0 and report["state_removed"]
    actions = {(x["action"], x["subject"]) for x in report["steps"]}
    assert ("kept", VIP2) in actions and ("removed", f"{VIP6}/128") in actions
    assert pair.sysctls() == before_sysctls
    assert pair.lo_addresses() == before_addrs, "down removed an address it did not add"
    assert not pair.state.exists()


def test_down_leaves_alone_a_sysctl_someone_changed_since_up(pair: Pair) -> None:
    assert pair.carom("up", "--vip", VIP).returncode == 0
    pair.set_sysctl("all", "arp_ignore", 2)  # an operator's later decision
    r = pair.carom("down")
    assert r.returncode == 0 and "changed by someone else since `up`" in r.stdout
    s = pair.sysctls()
    assert (s["all/arp_ignore"], s["all/arp_announce"]) == (2, 0)


def test_down_without_state_removes_the_vips_and_leaves_sysctls(pair: Pair) -> None:
    assert pair.carom("up", "--vip", VIP, "--vip", VIP6).returncode == 0
    pair.state.unlink()
    sysctls = pair.sysctls()
    r = pair.carom("down", "--vip", VIP, "--vip", VIP6)
    assert r.returncode == 0
    assert "sysctls left as they are" in r.stdout
    assert not {f"{VIP}/32", f"{VIP6}/128"} & pair.lo_addresses()
    assert pair.sysctls() == sysctls
    assert pair.carom("down").returncode == 1, "no state and no --vip: nothing to do"


# --- check on misconfigured hosts ---------------------------------------------


def test_check_catches_a_misconfigured_host(pair: Pair) -> None:
    pair.ip(pair.host, "link", "set", "lo", "up")
    pair.ip(pair.host, "addr", "add", f"{VIP}/24", "dev", "lo")
    pair.ip(pair.host, "addr", "add", f"{VIP}/32", "dev", "carom0")
    pair.set_sysctl("all", "arp_announce", 2)
    pair.set_sysctl("all", "rp_filter", 1)  # arp_ignore stays 0

    rc, report = pair.carom_json("check", "--vip", VIP)
    assert rc == 1
    found = findings(report)
    assert set(found) == {
        ("vip-wide-mask", "lo"),
        ("vip-on-interface", "carom0"),
        ("arp-ignore", "carom0"),
        ("rp-filter-strict", "carom0"),
    }
    wide = found["vip-wide-mask", "lo"]
    assert wide["severity"] == "error"
    assert "the host will believe the whole subnet 192.0.2.0/24 is local" in wide["message"]
    assert wide["fix"] == f"ip addr del {VIP}/24 dev lo && ip addr add {VIP}/32 dev lo"
    stolen = found["vip-on-interface", "carom0"]
    assert "will answer ARP for the VIP on carom0 and steal its traffic" in stolen["message"]
    ignore = found["arp-ignore", "carom0"]
    assert "this host would answer ARP requests for the VIP on carom0" in ignore["message"]
    assert ignore["fix"] == "sysctl -w net.ipv4.conf.all.arp_ignore=1"
    rp = found["rp-filter-strict", "carom0"]
    assert rp["severity"] == "warning" and rp["fix"].endswith("conf.carom0.rp_filter=2")
    assert report["interfaces"][0]["rp_filter"] == {"all": 1, "interface": 0, "effective": 1}

    human = pair.carom("check", "--vip", VIP).stdout
    assert "4 problems (3 errors, 1 warning)" in human
    assert f"fix: ip addr del {VIP}/32 dev carom0" in human

    # not just words: with the /24 on lo the peer's address looks local, so the
    # host drops the peer's ARP requests as martians, even for its own address
    assert pair.probe(VIP, HOST) == {VIP: None, HOST: None}

    # `up` fixes what is its own to fix and reports the rest, with the commands
    rc, up = pair.carom_json("up", "--vip", VIP)
    assert rc == 1
    left = findings(up)
    assert set(left) == {("vip-wide-mask", "lo"), ("vip-on-interface", "carom0")}
    pair.sh(pair.host, "sh", "-c", left["vip-wide-mask", "lo"]["fix"])
    # arp_ignore=1 does not protect a VIP configured on the interface itself
    assert pair.probe(VIP, HOST) == {VIP: pair.mac(pair.host), HOST: pair.mac(pair.host)}
    pair.sh(pair.host, "sh", "-c", left["vip-on-interface", "carom0"]["fix"])
    assert pair.probe(VIP, HOST) == {VIP: None, HOST: pair.mac(pair.host)}
    assert pair.carom("check", "--vip", VIP).returncode == 0


def test_the_kernel_uses_the_larger_of_all_and_the_interface(pair: Pair) -> None:
    """all=1 is not enough when the interface says 4 (reserved: answer everything)."""
    pair.set_sysctl("all", "arp_ignore", 1)
    pair.set_sysctl("carom0", "arp_ignore", 4)
    pair.ip(pair.host, "link", "set", "lo", "up")
    pair.ip(pair.host, "addr", "add", f"{VIP}/32", "dev", "lo")
    assert pair.probe(VIP)[VIP] == pair.mac(pair.host), "the kernel answered: max(1, 4) = 4"

    _, report = pair.carom_json("check", "--vip", VIP)
    ignore = findings(report)["arp-ignore", "carom0"]
    assert "arp_ignore is 4 on carom0 (all=1, carom0=4" in ignore["message"]
    assert ignore["fix"] == "sysctl -w net.ipv4.conf.carom0.arp_ignore=1"

    assert pair.carom("up", "--vip", VIP).returncode == 0
    assert pair.sysctls()["carom0/arp_ignore"] == 1
    assert pair.probe(VIP, HOST) == {VIP: None, HOST: pair.mac(pair.host)}
    assert pair.carom("down").returncode == 0
    assert pair.sysctls()["carom0/arp_ignore"] == 4
    # 8 answers nothing at all: the balancer could not resolve this server
    pair.set_sysctl("carom0", "arp_ignore", 8)
    assert pair.probe(VIP, HOST) == {VIP: None, HOST: None}
    _, report = pair.carom_json("check", "--vip", VIP)
    assert findings(report)["arp-ignore", "carom0"]["severity"] == "warning"


def first_solicitation_source(pair: Pair, vip: str, peer: str) -> str:
    """Send a datagram from `vip` to `peer` with an empty neighbour cache and return
    the sender address of the host's resulting ARP request / neighbour solicitation,
    as captured on the peer."""
    v6 = ":" in vip
    pair.sh(pair.host, "ip", "-6" if v6 else "-4", "neigh", "flush", "dev", "carom0")
    # requests from the host only, and no duplicate-address probes (source ::)
    what = "icmp6 and ip6[40] == 135 and not src host ::" if v6 else "arp[6:2] == 1"
    what = f"ether src {pair.mac(pair.host)} and {what}"
    dump = subprocess.Popen(
        [*pair.netns_exec(pair.peer), "tcpdump", "-i", "carom0", "-tnlc1", what],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        while "listening on" not in (line := dump.stderr.readline()):
            assert line, "tcpdump did not start"
        send = "import socket as s; u = s.socket(%d, 2); u.bind((%r, 0)); u.sendto(b'x', (%r, 9))"
        pair.sh(pair.host, sys.executable, "-c", send % (10 if v6 else 2, vip, peer))
        out, _ = dump.communicate(timeout=10)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    # "IP6 SRC > ff02::1:ffxx:xxxx: ICMP6, neighbor solicitation, ..." or
    # "ARP, Request who-has PEER tell SRC, length 28"
    return out.split()[1] if v6 else out.split("tell ")[1].split(",")[0]


def test_arp_announce_decides_the_source_of_the_hosts_own_arp_requests(pair: Pair) -> None:
    """With arp_announce=0 a reply sent from the VIP makes the host ask the segment
    for the next hop "tell VIP": everyone who hears it learns the VIP is here."""
    if shutil.which("tcpdump") is None:
        pytest.skip("needs tcpdump")
    pair.ip(pair.host, "link", "set", "lo", "up")
    pair.ip(pair.host, "addr", "add", f"{VIP}/32", "dev", "lo")
    pair.set_sysctl("all", "arp_ignore", 1)
    assert first_solicitation_source(pair, VIP, PEER) == VIP
    assert pair.carom("up", "--vip", VIP).returncode == 0
    assert first_solicitation_source(pair, VIP, PEER) == HOST
    # 3 is no stronger mode: the kernel treats unknown values like 0
    pair.set_sysctl("carom0", "arp_announce", 3)
    assert first_solicitation_source(pair, VIP, PEER) == VIP
    _, report = pair.carom_json("check", "--vip", VIP)
    assert findings(report)["arp-announce", "carom0"]["fix"].endswith("carom0.arp_announce=2")


def test_ipv6_solicitations_never_come_from_a_vip_on_lo(pair: Pair) -> None:
    """The IPv6 counterpart of arp_announce needs no setting."""
    if shutil.which("tcpdump") is None:
        pytest.skip("needs tcpdump")
    assert pair.carom("up", "--vip", VIP6).returncode == 0
    # the packet's source (the VIP) is not on carom0, so the kernel takes the
    # interface's link-local address instead
    assert first_solicitation_source(pair, VIP6, PEER6).startswith("fe80:")


def test_strict_rp_filter_drops_dsr_traffic_on_an_asymmetric_host(pair: Pair, web: None) -> None:
    """The client's packets reach the VIP through carom0, but the host's route
    back to the client leaves through carom1: strict reverse-path filtering
    drops every request; `up` switches carom0 to loose mode and `down` back."""
    client = "198.51.100.10"
    pair.ip(
        pair.host, "link", "add", "carom1", "type", "veth", "peer", "carom1", "netns", pair.peer
    )
    for ns, addr in ((pair.host, "203.0.113.2/24"), (pair.peer, "203.0.113.1/24")):
        pair.ip(ns, "addr", "add", addr, "dev", "carom1")
        pair.ip(ns, "link", "set", "carom1", "up")
        pair.set_sysctl("carom1", "rp_filter", 0, ns=ns)
    pair.ip(pair.peer, "addr", "add", f"{client}/32", "dev", "lo")
    pair.ip(pair.peer, "route", "add", f"{VIP}/32", "via", HOST)
    pair.ip(pair.host, "route", "add", "198.51.100.0/24", "via", "203.0.113.1")
    pair.ip(pair.host, "link", "set", "lo", "up")
    pair.ip(pair.host, "addr", "add", f"{VIP}/32", "dev", "lo")
    pair.set_sysctl("all", "rp_filter", 1)

    def rp_drops() -> int:
        lines = pair.sh(pair.host, "cat", "/proc/net/netstat").stdout.splitlines()
        names, values = lines[0].split(), lines[1].split()
        return int(values[names.index("IPReversePathFilter")])

    url = f"http://{VIP}:8080/"
    assert fetch(pair, url), "symmetric traffic passes strict filtering"
    drops = rp_drops()
    assert not fetch(pair, url, source=client)
    assert rp_drops() > drops, "dropped by reverse-path filtering, nothing else"
    _, report = pair.carom_json("check", "--vip", VIP)
    assert ("rp-filter-strict", "carom0") in findings(report)

    assert pair.carom("up", "--vip", VIP).returncode == 0
    assert fetch(pair, url, source=client)
    assert pair.carom("down").returncode == 0
    assert not fetch(pair, url, source=client)


# --- IPv6 ---------------------------------------------------------------------


def test_ipv6_vip(pair: Pair) -> None:
    rc, report = pair.carom_json("up", "--vip", VIP6)
    assert rc == 0, report
    assert not [s for s in report["steps"] if s["action"] == "set"], "no IPv4 sysctl for IPv6"
    assert f"{VIP6}/128" in pair.lo_addresses()
    assert pair.probe(VIP6, HOST6) == {VIP6: None, HOST6: pair.mac(pair.host)}

    # the one way Linux answers NDP for an address it does not have on the
    # interface: an active proxy-NDP entry
    pair.ip(pair.host, "-6", "neigh", "add", "proxy", VIP6, "dev", "carom0")
    rc, report = pair.carom_json("check", "--vip", VIP6)
    assert rc == 1 and findings(report)["ndp-proxy", "carom0"]["severity"] == "warning"
    assert pair.probe(VIP6)[VIP6] is None, "inactive while IPv6 forwarding is off"
    pair.sh(pair.host, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")
    pair.sh(pair.host, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/proxy_ndp")
    assert pair.probe(VIP6)[VIP6] == pair.mac(pair.host)
    rc, report = pair.carom_json("check", "--vip", VIP6)
    proxy = findings(report)["ndp-proxy", "carom0"]
    assert proxy["severity"] == "error"
    assert proxy["fix"] == f"ip -6 neigh del proxy {VIP6} dev carom0"
    pair.sh(pair.host, *proxy["fix"].split())
    assert pair.probe(VIP6)[VIP6] is None

    # the VIP on the real interface is answered, and reported
    pair.ip(pair.host, "addr", "add", f"{VIP6}/128", "dev", "carom0", "nodad")
    assert pair.probe(VIP6)[VIP6] == pair.mac(pair.host)
    rc, report = pair.carom_json("check", "--vip", VIP6)
    assert (
        "neighbour solicitations (NDP)" in findings(report)["vip-on-interface", "carom0"]["message"]
    )
    pair.ip(pair.host, "addr", "del", f"{VIP6}/128", "dev", "carom0")

    assert pair.carom("down").returncode == 0
    assert f"{VIP6}/128" not in pair.lo_addresses()


def test_taking_lo_down_deletes_ipv6_vips(pair: Pair, web: None) -> None:
    assert pair.carom("up", "--vip", VIP, "--vip", VIP6).returncode == 0
    pair.ip(pair.peer, "route", "add", f"{VIP}/32", "via", HOST)
    pair.ip(pair.host, "link", "set", "lo", "down")
    assert fetch(pair, f"http://{VIP}:8080/"), "IPv4 VIPs on a down lo still receive"
    rc, report = pair.carom_json("check", "--vip", VIP, "--vip", VIP6)
    assert rc == 1
    found = findings(report)
    assert "deletes every IPv6 address" in found["lo-down", "lo"]["message"]
    missing = [f["vip"] for f in report["findings"] if f["code"] == "vip-missing"]
    assert missing == [VIP6], "the kernel removed the IPv6 VIP, the IPv4 one survives"
    rc, report = pair.carom_json("up", "--vip", VIP, "--vip", VIP6)
    assert rc == 0 and report["clean"]


def test_a_failed_up_records_what_it_did_so_down_can_undo_it(pair: Pair) -> None:
    pair.ip(pair.host, "link", "set", "lo", "up")
    pair.sh(pair.host, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6")
    before_sysctls, before_addrs = pair.sysctls(), pair.lo_addresses()
    r = pair.carom("up", "--vip", VIP, "--vip", VIP6)
    assert r.returncode == 1 and f"cannot add {VIP6}/128 on lo" in r.stderr
    assert f"{VIP}/32" in pair.lo_addresses() and pair.sysctls() != before_sysctls
    recorded = json.loads(pair.state.read_text())
    assert recorded["vips"] == [VIP] and len(recorded["sysctls"]) == 2
    assert pair.carom("down").returncode == 0
    assert (pair.sysctls(), pair.lo_addresses()) == (before_sysctls, before_addrs)
