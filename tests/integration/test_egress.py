"""A director with two interfaces (issue 7, "multiple interfaces are honest").

carom forwards with XDP_TX, which sends a frame out of the interface it came in
on; a real reached through another interface would be a silent black hole. So
`carom check`, `carom run` and a reload refuse such a config, naming the real,
its route's interface and carom's interfaces, and a refused reload keeps the
previous state serving. Real TCP from a client, through the director, to a
real server that answers from the VIP (DSR).

    carom-dcc (client) --+
                         | bridge (carom-dcs) -- carom0 [carom-dcd] carom1 -- carom-dcb (real B)
    carom-dca (real A) --+
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from carom.bpf.loader import ensure_bpffs
from carom.daemon import control

pytestmark = [pytest.mark.root, pytest.mark.integration]

SWITCH, DIRECTOR, CLIENT, REAL_A, REAL_B = (
    "carom-dcs",
    "carom-dcd",
    "carom-dcc",
    "carom-dca",
    "carom-dcb",
)
VIP = "10.98.9.9"
DIR0, DIR1 = "10.98.1.1", "10.98.2.1"
CLIENT_ADDR, A_ADDR, B_ADDR = "10.98.1.100", "10.98.1.10", "10.98.2.10"
XDP_PASS = Path(__import__("carom").__file__).parent / "bpf/obj/xdp_pass.bpf.o"


def ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def in_ns(ns: str, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60, **kw
    )


def teardown() -> None:
    for ns in (SWITCH, DIRECTOR, CLIENT, REAL_A, REAL_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{VIP}", 80))
s.listen(64)
while True:
    c, _ = s.accept()
    c.sendall(b"real-a\\n")
    c.close()
"""


@pytest.fixture(scope="module")
def topo() -> Iterator[subprocess.Popen[bytes]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    teardown()
    try:
        for ns in (SWITCH, DIRECTOR, CLIENT, REAL_A, REAL_B):
            ip("netns", "add", ns)
            ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", "caromdcbr", "type", "bridge", ns=SWITCH)
        ip("link", "set", "caromdcbr", "up", ns=SWITCH)
        # director carom0 <-> bridge; client and real A on the bridge too
        for ns, port, ifname in (
            (DIRECTOR, "dcs-d", "carom0"),
            (CLIENT, "dcs-c", "eth0"),
            (REAL_A, "dcs-a", "eth0"),
        ):
            ip("link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns, ns=SWITCH)
            ip("link", "set", port, "master", "caromdcbr", "up", ns=SWITCH)
        # director carom1 <-> real B, a segment of its own
        ip(
            "link",
            "add",
            "carom1",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            REAL_B,
            ns=DIRECTOR,
        )
        for ns, ifname, addr in (
            (DIRECTOR, "carom0", f"{DIR0}/24"),
            (DIRECTOR, "carom1", f"{DIR1}/24"),
            (CLIENT, "eth0", f"{CLIENT_ADDR}/24"),
            (REAL_A, "eth0", f"{A_ADDR}/24"),
            (REAL_B, "eth0", f"{B_ADDR}/24"),
        ):
            ip("addr", "add", addr, "dev", ifname, ns=ns)
            ip("link", "set", ifname, "up", ns=ns)
        # native XDP_TX on a veth needs an XDP program on its peer
        ip("link", "set", "dcs-d", "xdpdrv", "obj", str(XDP_PASS), "sec", "xdp", ns=SWITCH)
        ip("link", "set", "eth0", "xdpdrv", "obj", str(XDP_PASS), "sec", "xdp", ns=REAL_B)
        ip("route", "add", f"{VIP}/32", "via", DIR0, ns=CLIENT)
        # a veth leaves TCP checksums to offload; frames XDP forwards would arrive
        # with a partial one: the client's stack computes them in full instead
        in_ns(CLIENT, "ethtool", "-K", "eth0", "tx", "off", check=True)
        # real A: the VIP on lo, not answering ARP for it (a DSR real server)
        ip("addr", "add", f"{VIP}/32", "dev", "lo", ns=REAL_A)
        for key, value in (("arp_ignore", "1"), ("arp_announce", "2")):
            in_ns(REAL_A, "sysctl", "-qw", f"net.ipv4.conf.all.{key}={value}", check=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", REAL_A, sys.executable, "-c", SERVER],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while f"{VIP}:80" not in in_ns(REAL_A, "ss", "-ltnH").stdout:
            assert time.monotonic() < deadline, "the server on real A did not start"
            time.sleep(0.05)
        try:
            yield server
        finally:
            server.kill()
            server.wait()
    finally:
        teardown()


class Daemon:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bpffs = str(tmp / "bpffs")
        ensure_bpffs(self.bpffs)
        self.path = tmp / "carom.yaml"
        self.sock = str(tmp / "carom.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self, interfaces: list[str], reals: list[str]) -> str:
        cfg = {
            "instance": "dc",
            "interfaces": interfaces,
            "bpffs": self.bpffs,
            "control_socket": self.sock,
            "limits": {"conn_table_size": 4096, "persist_table_size": 1024},
            "services": [
                {"name": "web", "vip": VIP, "port": 80, "reals": [{"address": a} for a in reals]}
            ],
        }
        self.path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return self.path.read_text()

    def carom(self, *args: str) -> subprocess.CompletedProcess[str]:
        return in_ns(DIRECTOR, sys.executable, "-m", "carom", *args)

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp / "daemon.log", "ab")  # noqa: SIM115 (kept open for the child)
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                DIRECTOR,
                sys.executable,
                "-m",
                "carom",
                "run",
                "-c",
                str(self.path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self.proc

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                control.request(self.sock, "status", timeout=2)
                return
            except (ConnectionError, OSError):
                time.sleep(0.1)
        raise AssertionError(f"no answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                control.request(self.sock, "stop", detach=True)
                self.proc.wait(15)
            except (ConnectionError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def daemon(topo: subprocess.Popen[bytes], tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", "-l", d.bpffs], capture_output=True)
        shutil.rmtree(tmp_path / "bpffs", ignore_errors=True)


def fetch(n: int) -> list[str]:
    """n TCP connections from the client to the VIP; what each one read."""
    code = (
        "import socket,sys\n"
        f"for _ in range({n}):\n"
        "    try:\n"
        f"        s = socket.create_connection(('{VIP}', 80), timeout=2)\n"
        "        print(s.recv(64).decode().strip() or 'empty'); s.close()\n"
        "    except OSError as e:\n"
        "        print('error', type(e).__name__)\n"
    )
    return in_ns(CLIENT, sys.executable, "-c", code).stdout.split("\n")[:n]


def xdp_attached(ifname: str) -> bool:
    out = in_ns(DIRECTOR, "ip", "-d", "link", "show", ifname).stdout
    return "prog/xdp" in out


def test_check_and_run_refuse_a_real_behind_an_unattached_interface(daemon: Daemon) -> None:
    daemon.config(["carom0"], [A_ADDR, B_ADDR])
    r = daemon.carom("check", "-c", str(daemon.path))
    assert r.returncode == 2, r
    expected = (
        f"{daemon.path}:15: services[0].reals[1].address: the real {B_ADDR} is reached "
        "through carom1 (its route), but carom is attached to carom0 only"
    )
    assert expected in r.stderr, r.stderr
    # the daemon refuses to start with it, and attaches nothing
    proc = daemon.start()
    assert proc.wait(30) == 2, daemon.log()
    assert expected in daemon.log()
    assert not xdp_attached("carom0") and not xdp_attached("carom1")


def test_a_service_split_over_both_interfaces_is_refused_and_a_reload_keeps_serving(
    daemon: Daemon,
) -> None:
    daemon.config(["carom0", "carom1"], [A_ADDR, B_ADDR])
    r = daemon.carom("check", "-c", str(daemon.path))
    assert r.returncode == 2
    assert (
        f"services[0].reals[1].address: the real {B_ADDR} is reached through carom1 but "
        f"reals[0] ({A_ADDR}) through carom0" in r.stderr
    ), r.stderr
    # valid: the service's reals are behind carom0; the check says where its traffic must arrive
    daemon.config(["carom0", "carom1"], [A_ADDR])
    r = daemon.carom("check", "-c", str(daemon.path))
    assert r.returncode == 0, r.stderr
    assert "warning: service web: its reals are behind carom0" in r.stdout
    daemon.start()
    daemon.wait_ready()
    assert xdp_attached("carom0") and xdp_attached("carom1")
    assert fetch(10) == ["real-a"] * 10
    # a reload that adds real B is refused; the previous state keeps serving
    daemon.config(["carom0", "carom1"], [A_ADDR, B_ADDR])
    r = daemon.carom("reload", "-c", str(daemon.path))
    assert r.returncode != 0
    assert f"the real {B_ADDR} is reached through carom1" in r.stderr, r.stderr
    st = control.request(daemon.sock, "status")["status"]
    assert [x["address"] for x in st["services"][0]["reals"]] == [A_ADDR]
    assert st["last_reload"]["ok"] is False
    assert fetch(10) == ["real-a"] * 10
    counters = st["counters"]
    assert counters["tx_dsr"] >= 10, counters
