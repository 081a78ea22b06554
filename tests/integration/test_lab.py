"""The network-namespace lab itself: topology, services, routing, lifecycle.

Everything runs inside the lab's namespaces; the host's network is never
touched. The `lab` fixture (conftest.py) builds the lab once per session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from carom.cli.main import main as carom_main
from carom.lab import Lab, nodes, services
from carom.lab import topology as t

pytestmark = [pytest.mark.root, pytest.mark.integration]


def _url(addr: t.IPv4 | t.IPv6, path: str = "/") -> str:
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"http://{host}{path}"


def _curl(lab: Lab, node: str, url: str, *extra: str) -> tuple[dict[str, str], str]:
    """GET from inside a node; returns (lower-cased headers, body)."""
    r = lab.exec(node, ["curl", "-sS", "-m", "5", "-D", "-", *extra, url], timeout=10)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition("\n\n")  # text mode turned \r\n into \n
    headers = {}
    for line in head.splitlines()[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers, body


def _snmp(lab: Lab, node: str, path: str, table: str, counter: str) -> int:
    """One counter from /proc/net/snmp or snmp6 as seen inside a node's namespace."""
    text = lab.exec(node, ["cat", path], check=True).stdout
    if path.endswith("snmp6"):
        return next(int(v) for k, v in (ln.split() for ln in text.splitlines()) if k == counter)
    rows = [ln.split() for ln in text.splitlines() if ln.startswith(f"{table}:")]
    return int(rows[1][rows[0].index(counter)])


def _forwarded(lab: Lab, version: int) -> int:
    if version == 4:
        return _snmp(lab, t.ROUTER.name, "/proc/net/snmp", "Ip", "ForwDatagrams")
    return _snmp(lab, t.ROUTER.name, "/proc/net/snmp6", "", "Ip6OutForwDatagrams")


SERVER_ADDRS = [
    pytest.param(n, addr, id=f"{n.short}-v{addr.version}")
    for n in t.SERVICE_NODES
    for addr in (n.main.addr4, n.main.addr6)
]


@pytest.mark.parametrize(("server", "addr"), SERVER_ADDRS)
def test_client_reaches_every_server_directly(lab: Lab, server: t.Node, addr: t.IPv4) -> None:
    headers, body = _curl(lab, "client1", _url(addr))
    assert body == f"served-by {server.name}\n"
    assert headers["x-served-by"] == server.name
    assert headers["x-local-addr"] == str(addr)
    assert headers["x-client-addr"] == str(
        t.CLIENT1.main.addr4 if addr.version == 4 else t.CLIENT1.main.addr6
    )


@pytest.mark.parametrize("version", [4, 6])
def test_http_keepalive_reuses_one_connection(lab: Lab, version: int) -> None:
    addr = t.REAL2.main.addr4 if version == 4 else t.REAL2.main.addr6
    twice = ["-o", "/dev/null", _url(addr), "-o", "/dev/null", _url(addr, "/again")]
    r = lab.exec("client2", ["curl", "-sS", "-m", "5", "-w", "%{num_connects}\n", *twice])
    assert r.stdout.split() == ["1", "0"]  # the second request rode the first connection


def test_large_response(lab: Lab) -> None:
    url = _url(t.REAL3.main.addr6, "/?size=1000000")
    argv = ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{size_download}", url]
    r = lab.exec("client1", argv, check=True)
    assert r.stdout == "1000000"


_BANNER_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile("rwb")
print(f.readline().decode().strip())
for n in (1, 2):
    f.write(b"PING %d\\r\\n" % n); f.flush()
    print(f.readline().decode().strip())
f.write(b"QUIT\\r\\n"); f.flush()
print(f.readline().decode().strip())
print("closed" if f.readline() == b"" else "still open")
"""


@pytest.mark.parametrize("version", [4, 6])
def test_server_speaks_first_service(lab: Lab, version: int) -> None:
    addr = t.REAL1.main.addr4 if version == 4 else t.REAL1.main.addr6
    r = lab.exec(
        "client1",
        [sys.executable, "-c", _BANNER_CLIENT, str(addr), str(t.BANNER_PORT)],
        check=True,
    )
    assert r.stdout.splitlines() == [
        "220 carom-real1 ready",
        "250 carom-real1 1",
        "250 carom-real1 2",
        "221 carom-real1 bye",
        "closed",
    ]


@pytest.mark.parametrize("version", [4, 6])
def test_clients_reach_servers_through_the_router(lab: Lab, version: int) -> None:
    fam = "-4" if version == 4 else "-6"
    server = t.REAL3.main.addr4 if version == 4 else t.REAL3.main.addr6
    gw = t.gateway4(t.CLIENT_SEGMENT) if version == 4 else t.gateway6(t.CLIENT_SEGMENT)
    route = lab.exec("client1", ["ip", fam, "route", "get", str(server)], check=True).stdout
    assert f"via {gw} " in route
    before = _forwarded(lab, version)
    _curl(lab, "client1", _url(server))
    assert _forwarded(lab, version) >= before + 2  # at least a request and a response


def test_without_a_daemon_nobody_answers_for_the_vips(lab: Lab) -> None:
    """Every node carries the VIPs on lo as a real server does (arp_ignore), so
    only a running carom daemon's XDP responder may answer ARP/NDP for them:
    without one, the router resolves the VIPs to nobody."""
    for vip in t.VIPS:
        lab.exec("router", ["ip", "neigh", "flush", "to", str(vip)])  # earlier tests' answers
        assert lab.exec("router", ["ping", "-c1", "-W1", str(vip)]).returncode != 0
        assert str(vip) not in nodes.vip_neighbours(t.ROUTER.name)
    assert lab.status().vip_owners == ()


@pytest.fixture
def vip_pinned_to_real1(lab: Lab) -> Iterator[None]:
    """Make the router send VIP traffic straight to real1's MAC: exactly what
    the director's MAC rewrite does, minus the director."""
    for vip in t.VIPS:
        pin = ["lladdr", t.REAL1.main.mac, "nud", "permanent", "dev", t.ROUTER.main.ifname]
        lab.exec("router", ["ip", "neigh", "replace", str(vip), *pin], check=True)
    try:
        yield
    finally:
        for vip in t.VIPS:
            lab.exec("router", ["ip", "neigh", "del", str(vip), "dev", t.ROUTER.main.ifname])


def test_real_servers_accept_vip_traffic_and_answer_from_the_vip(
    lab: Lab, vip_pinned_to_real1: None
) -> None:
    for vip in t.VIPS:
        headers, body = _curl(lab, "client1", _url(vip))
        assert body == "served-by carom-real1\n"
        assert headers["x-local-addr"] == str(vip)


@pytest.mark.parametrize("real", t.REALS, ids=lambda n: n.short)
def test_real_servers_are_configured_for_dsr(lab: Lab, real: t.Node) -> None:
    lo = nodes.addresses(real.name)["lo"]
    assert sorted(lo) == sorted(f"{v}/{v.max_prefixlen}" for v in t.VIPS)
    keys = ["net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce"]
    r = lab.exec(real.name, ["sysctl", "-n", *keys], check=True)
    assert r.stdout.split() == ["1", "2"]
    route = lab.exec(real.name, ["ip", "route", "show", "default"], check=True).stdout
    assert f"via {t.gateway4(t.SERVER_SEGMENT)} " in route


def test_xdp_and_checksum_offload_on_the_veths(lab: Lab) -> None:
    st = {n.node.name: n for n in lab.status().nodes}
    for d in t.DIRECTORS:
        assert st[d.name].xdp_on_port is True
    for n in t.NODES:
        for iface in n.interfaces:
            for ns, ifname in ((t.SWITCH_NS, iface.port), (n.name, iface.ifname)):
                r = lab.exec(ns, ["ethtool", "-k", ifname], check=True)
                assert "tx-checksumming: off" in r.stdout, (ns, ifname)


def test_exec_passes_exit_codes(lab: Lab, capfd: pytest.CaptureFixture[str]) -> None:
    assert lab.exec("real1", ["sh", "-c", "exit 7"]).returncode == 7
    assert lab.exec("carom-real1", ["true"]).returncode == 0
    assert carom_main(["lab", "exec", "dir2", "--", "sh", "-c", "exit 3"]) == 3
    assert carom_main(["lab", "exec", "carom-client1", "--", "sh", "-c", "echo hi"]) == 0
    assert carom_main(["lab", "exec", "lan", "--", "ip", "link", "show", "carom-br0"]) == 0
    assert carom_main(["lab", "exec", "nosuch", "--", "true"]) == 2
    out = capfd.readouterr().out
    assert "hi\n" in out and "carom-br0" in out


def test_status_reports_everything_up(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    st = lab.status()
    assert st.up, st
    assert carom_main(["lab", "status"]) == 0
    out = capsys.readouterr().out
    for n in t.NODES:
        assert n.name in out


def test_down_is_idempotent_and_survives_a_crash(lab: Lab) -> None:
    """Simulate a crash (state dir gone, servers still running), then down twice.
    Restores the lab at the end for any test that runs later."""
    pids = [services.read_pid(lab.state_dir, n.name) for n in t.SERVICE_NODES]
    assert all(p is not None and services.is_lab_server(p) for p in pids)
    for f in lab.state_dir.iterdir():
        f.unlink()
    lab.state_dir.rmdir()

    assert lab.down() == []
    assert lab.down() == []
    assert carom_main(["lab", "down"]) == 0
    assert not [ns for ns in t.NAMESPACES if Path("/run/netns", ns).exists()]
    assert not any(services.alive(p) for p in pids if p is not None)
    assert not lab.state_dir.exists()
    assert lab.status().absent

    assert lab.up() is False  # nothing was there to rebuild
    assert lab.status().up
