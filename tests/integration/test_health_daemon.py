"""Health checks in a running director, in the lab, with real servers.

The lab's reals run an extra HTTP server on port 8080 (started and stopped by
these tests, by PID) and real2 an agent on port 10000 that answers with the
contents of a file. Services:

- web   192.0.2.100:80    http check via: vip (to the VIP, at the real's MAC);
                          the director itself is a local real of it
- hc    192.0.2.100:8080  http check via: real, slow_start 10 s; real2 has an
                          agent check instead (weight 2)

A client sends a steady stream of new connections (health_load.py) and the
tests read who served each, and the director's status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carom.lab import Lab
from carom.lab import topology as t
from carom.lab.director import Director, lab_config
from carom.lab.traffic import curl

pytestmark = [pytest.mark.root, pytest.mark.integration]

HERE = Path(__file__).parent
VIP = str(t.VIP4)
R1, R2, R3 = (str(n.main.addr4) for n in t.REALS)
D1 = str(t.DIR1.main.addr4)  # the director, a local real of web
NAMES = {R1: "carom-real1", R2: "carom-real2", R3: "carom-real3"}
PROBE_SOURCE = "192.0.2.250/24"
AGENT = (
    "import socket, sys\n"
    "s = socket.create_server(('0.0.0.0', 10000))\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    try:\n"
    "        c.sendall(open(sys.argv[1], 'rb').read())\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
)


def config(agent_file: Path | None = None, **hc: Any) -> dict[str, Any]:
    reals: list[dict[str, Any]] = [{"address": a} for a in (R1, R2, R3)]
    reals.append({"address": D1, "local": True})
    hc_reals = [
        {"address": R1},
        {"address": R2, "weight": 2, "check": {"kind": "agent", "port": 10000}},
        {"address": R3},
    ]
    services = [
        {
            "name": "web",
            "vip": VIP,
            "port": 80,
            "check": {"kind": "http", "via": "vip"},
            "reals": reals,
        },
        {
            "name": "hc",
            "vip": VIP,
            "port": 8080,
            "check": {"kind": "http"},
            "slow_start": 10,
            "reals": hc_reals,
            **hc,
        },
    ]
    return lab_config(services=services, health={"probe_source": PROBE_SOURCE})


class Servers:
    """The 8080 HTTP servers and the agent, by PID."""

    def __init__(self, lab: Lab, agent_file: Path) -> None:
        self.lab = lab
        self.http: dict[str, subprocess.Popen[bytes]] = {}
        self.agent_file = agent_file
        agent_file.write_text("up\n")
        self.agent = lab.popen("real2", [sys.executable, "-c", AGENT, str(agent_file)])

    def start(self, real: str) -> None:
        name = NAMES[real]
        self.http[real] = self.lab.popen(
            name,
            [
                sys.executable,
                "-m",
                "carom.lab.servers",
                "--name",
                name,
                "--http-port",
                "8080",
                "--banner-port",
                "2600",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.lab.exec("client1", ["curl", "-s", "-m", "1", f"http://{real}:8080/"])
            if name in r.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the 8080 server on {name} did not start")

    def stop(self, real: str) -> float:
        """Stop a server; returns the wall time it stopped listening."""
        proc = self.http.pop(real)
        proc.kill()
        proc.wait(10)
        return time.time()

    def close(self) -> None:
        for proc in [*self.http.values(), self.agent]:
            proc.kill()
            proc.wait(10)
        self.http.clear()


@pytest.fixture(scope="module")
def servers(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    s = Servers(lab, tmp_path_factory.mktemp("agent") / "agent-real2")
    try:
        for real in (R1, R2, R3):
            s.start(real)
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def director(lab: Lab, servers: Servers) -> Iterator[Director]:
    d = Director(lab, "carom-dir1")
    d.remove()
    d.start(config(servers.agent_file))
    try:
        wait_for(  # every probe has a result
            d, lambda st: all("last" in r["health"] for s in st["services"] for r in s["reals"])
        )
        yield d
    finally:
        d.remove()
        print(d.log()[-4000:])


def real_of(st: dict[str, Any], service: str, address: str) -> dict[str, Any]:
    svc = next(s for s in st["services"] if s["name"] == service)
    real: dict[str, Any] = next(r for r in svc["reals"] if r["address"] == address)
    return real


def wait_for(d: Director, cond: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = d.status()
        if cond(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {json.dumps(st)[:3000]}")
        time.sleep(0.1)


class Load:
    """health_load.py in client1, read back when it ends."""

    def __init__(self, lab: Lab, url: str, seconds: float, rate: float = 50) -> None:
        self.proc = lab.popen(
            "client1",
            [sys.executable, str(HERE / "health_load.py"), url, str(seconds), str(rate)],
            stdout=subprocess.PIPE,
            text=True,
        )

    def results(self) -> list[tuple[float, str | None, str]]:
        out, _ = self.proc.communicate(timeout=120)
        return [tuple(json.loads(line)) for line in out.splitlines()]

    def kill(self) -> None:
        """On a failed test: no client left in the lab (`lab down` checks)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_a_stopped_server_is_out_within_3_s_and_slow_starts_back(
    lab: Lab, director: Director, servers: Servers
) -> None:
    load = Load(lab, f"{VIP}:8080", 40)
    try:
        time.sleep(3)
        stopped = servers.stop(R1)
        st = wait_for(director, lambda st: real_of(st, "hc", R1)["state"] == "down", 5)
        r1 = real_of(st, "hc", R1)
        detected = r1["health"]["since"] - stopped
        assert r1["weight"] == 0 and r1["health"]["ok"] is False, r1
        time.sleep(6)
        servers.start(R1)
        # its check up, and the apply that follows done: slow start
        st = wait_for(director, lambda st: real_of(st, "hc", R1)["state"] == "slow-start", 5)
        back = real_of(st, "hc", R1)["health"]["since"]
        results = load.results()
    finally:
        load.kill()
        if R1 not in servers.http:  # the next tests need it
            servers.start(R1)

    # out within 3 s: every request that started 3 s after the stop was served
    late = [(ts, name, err) for ts, name, err in results if stopped + 3 <= ts < back - 0.5]
    assert len(late) > 100, len(late)
    assert all(name in ("carom-real2", "carom-real3") for _, name, _ in late), [
        x for x in late if x[1] not in ("carom-real2", "carom-real3")
    ][:5]
    failed = [ts - stopped for ts, name, _ in results if name is None and ts >= stopped]
    print(
        f"detection {detected:.2f} s after the stop; last failed request at +"
        f"{max(failed, default=0):.2f} s; {len(failed)} failed requests"
    )
    assert detected <= 3.0
    assert max(failed, default=0) < 3.0

    # slow start: real1's share of new flows grows over the 10 s ramp
    def share(lo: float, hi: float) -> tuple[float, int]:
        names = [n for ts, n, _ in results if back + lo <= ts < back + hi and n]
        return (names.count("carom-real1") / len(names) if names else 0.0), len(names)

    early, n_early = share(0, 3)
    late_share, n_late = share(10.5, 25)
    print(
        f"real1 share: first 3 s of slow start {early:.3f} (n={n_early}), "
        f"after it {late_share:.3f} (n={n_late})"
    )
    assert n_early > 50 and n_late > 200
    # weights 1 (hc: real2 2, real3 1): the full share is 1/4; the first 3 s give
    # 10%, 20%, 30% of it (about 0.03 to 0.08 of the flows)
    assert early < 0.12, early
    assert late_share > 0.15, late_share
    assert early < late_share / 2


def test_via_vip_checks_the_director_itself_through_its_own_stack(
    lab: Lab, director: Director
) -> None:
    """The director is a local real of web: its via: vip check connects to the VIP
    from its own namespace, and fails once the VIP is not on its lo."""
    st = director.status()
    assert real_of(st, "web", D1)["state"] == "local", real_of(st, "web", D1)
    assert real_of(st, "web", D1)["health"]["ok"], real_of(st, "web", D1)
    lab.exec("dir1", ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"], check=True)
    try:
        st = wait_for(director, lambda st: real_of(st, "web", D1)["state"] == "down", 6)
        print("director (local, via vip):", real_of(st, "web", D1)["health"])
    finally:
        lab.exec("dir1", ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"], check=True)
    st = wait_for(director, lambda st: real_of(st, "web", D1)["state"] == "local", 6)


def test_via_vip_takes_out_a_real_without_the_vip_a_plain_check_does_not(
    lab: Lab, director: Director
) -> None:
    lab.exec("real3", ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"], check=True)
    try:
        st = wait_for(director, lambda st: real_of(st, "web", R3)["state"] == "down", 6)
        web3, hc3 = real_of(st, "web", R3), real_of(st, "hc", R3)
        print("web (via vip):", web3["health"], "\nhc (via real):", hc3["health"])
        assert "via vip" in web3["health"]["check"] and "timed out" in web3["health"]["last"]
        assert hc3["state"] == "up" and hc3["health"]["ok"], hc3  # its own address answers
        served = Counter(curl(lab, "client2", f"http://{VIP}/", 30))
        assert sum(served.values()) == 30 and "carom-real3" not in served, served
    finally:
        lab.exec("real3", ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"], check=True)
    wait_for(director, lambda st: real_of(st, "web", R3)["state"] == "up", 6)


def test_agent_drives_drain_and_weight(director: Director, servers: Servers) -> None:
    servers.agent_file.write_text("up 50%\n")
    st = wait_for(director, lambda st: real_of(st, "hc", R2)["weight"] == 1, 5)
    assert real_of(st, "hc", R2)["config_weight"] == 2
    servers.agent_file.write_text("drain\n")
    st = wait_for(director, lambda st: real_of(st, "hc", R2)["state"] == "drained", 5)
    assert "agent: up, drain" in real_of(st, "hc", R2)["detail"]
    servers.agent_file.write_text("up\n")
    wait_for(
        director,
        lambda st: real_of(st, "hc", R2)["state"] in ("up", "slow-start"),
        5,
    )


def test_drain_and_undrain_through_the_cli(lab: Lab, director: Director) -> None:
    r = director.carom("real", "drain", "--socket", director.socket, R3, "--service", "web")
    assert r.returncode == 0, r.stderr
    st = director.status()
    assert real_of(st, "web", R3)["state"] == "drained"
    assert real_of(st, "hc", R3)["state"] != "drained"  # only in web
    served = Counter(curl(lab, "client1", f"http://{VIP}/", 30))
    assert "carom-real3" not in served and sum(served.values()) == 30, served
    # a reload keeps it
    assert director.reload(director.config_path.read_text())["ok"]
    assert real_of(director.status(), "web", R3)["state"] == "drained"
    text = director.carom("status", "--socket", director.socket).stdout
    assert f"override: {R3} drained by hand in web" in text, text
    bad = director.carom("real", "drain", "--socket", director.socket, "192.0.2.99")
    assert bad.returncode == 1 and "not a real of any service" in bad.stderr
    r = director.carom("real", "undrain", "--socket", director.socket, R3)
    assert r.returncode == 0, r.stderr
    st = director.status()
    assert real_of(st, "web", R3)["state"] in ("up", "slow-start") and not st["overrides"]


def nft(lab: Lab, node: str, script: str) -> None:
    r = lab.exec(node, ["nft", "-f", "-"], input=script)
    assert r.returncode == 0, r.stderr


LOSS = """
table inet carom_hd_loss {
    chain input {
        type filter hook input priority 0;
        tcp dport { 80, 8080, 10000 } numgen random mod 100 < 1 drop
    }
    chain output {
        type filter hook output priority 0;
        tcp sport { 80, 8080, 10000 } numgen random mod 100 < 1 drop
    }
}
"""


def probes(st: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (s["name"], r["address"]): r["health"]
        for s in st["services"]
        for r in s["reals"]
        if r["health"]
    }


def test_one_percent_probe_loss_for_a_minute_does_not_flap(lab: Lab, director: Director) -> None:
    """1% of the check's packets dropped each way on every real, for 60 s."""
    before = probes(
        wait_for(director, lambda st: all(p["state"] == "up" for p in probes(st).values()))
    )
    for node in ("real1", "real2", "real3"):
        nft(lab, node, LOSS)
    try:
        downs = set()
        end = time.monotonic() + 60
        while time.monotonic() < end:
            now = probes(director.status())
            downs |= {k for k, p in now.items() if p["state"] != "up"}
            time.sleep(0.2)
    finally:
        for node in ("real1", "real2", "real3"):
            lab.exec(node, ["nft", "delete", "table", "inet", "carom_hd_loss"])
    after = probes(director.status())
    failures = sum(after[k]["failures"] - before[k]["failures"] for k in after)
    ran = sum(after[k]["probes"] - before[k]["probes"] for k in after)
    print(f"1% loss each way, 60 s: {ran} probes, {failures} failed, states seen down: {downs}")
    assert ran > 300
    assert failures > 0, "no probe failed: the loss did not happen"
    assert not downs
    assert all(after[k]["flaps"] == before[k]["flaps"] for k in after), (before, after)


def test_a_flapping_server_is_damped(lab: Lab, director: Director) -> None:
    """real3's 8080 refuses and accepts in turn: after three downs within ~30 s
    it is held down while its probes pass, and gets no new flows."""
    reject = (
        "table inet carom_hd_flap {\n chain input {\n"
        "  type filter hook input priority 0;\n  tcp dport 8080 reject with tcp reset\n }\n}\n"
    )
    held = False
    try:
        for _ in range(4):
            nft(lab, "real3", reject)
            wait_for(director, lambda st: real_of(st, "hc", R3)["health"]["state"] == "down", 6)
            lab.exec("real3", ["nft", "delete", "table", "inet", "carom_hd_flap"])
            st = wait_for(
                director,
                lambda st: (
                    real_of(st, "hc", R3)["health"]["state"] == "up"
                    or real_of(st, "hc", R3)["health"]["held"]
                ),
                6,
            )
            if real_of(st, "hc", R3)["health"]["held"]:
                held = True
                break
    finally:
        lab.exec("real3", ["nft", "delete", "table", "inet", "carom_hd_flap"])
    assert held, real_of(director.status(), "hc", R3)
    time.sleep(3)  # the server answers all along now
    st = director.status()
    r3 = real_of(st, "hc", R3)
    print("damped:", r3["health"], r3["detail"])
    assert r3["state"] == "down" and r3["health"]["ok"] and r3["health"]["flaps"] >= 3, r3
    assert "held down: flapping" in r3["detail"]
    served = Counter(curl(lab, "client1", f"http://{VIP}:8080/", 20))
    assert "carom-real3" not in served and sum(served.values()) == 20, served


KEEPALIVE = r"""
import json, socket, sys, time
conns = []
for i in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 8080), timeout=3)
    conns.append(s)
def ask(s):
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"served-by" not in data or not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                return "closed"
            data += chunk
        return data.decode().split("served-by ")[1].split()[0]
    except OSError as exc:
        return type(exc).__name__
print(json.dumps([ask(s) for s in conns]), flush=True)
sys.stdin.readline()
print(json.dumps([ask(s) for s in conns]), flush=True)
"""


@pytest.mark.parametrize("policy", ["keep", "reschedule"])
def test_established_flows_of_a_down_real_are_kept_or_rescheduled(
    lab: Lab, director: Director, servers: Servers, policy: str
) -> None:
    """real1 refuses new connections to 8080 (its check fails) while keep-alive
    connections to it stay open: `keep` leaves them on real1, `reschedule`
    sends their next packets to a live real, which resets them."""
    assert director.reload(config(servers.agent_file, down_flows=policy))["ok"]
    # real1 fully in rotation (after an earlier test it may still be in slow start)
    wait_for(director, lambda st: real_of(st, "hc", R1)["state"] == "up", 20)
    client = lab.popen(
        "client1",
        [sys.executable, "-c", KEEPALIVE, VIP, "12"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    refuse = (
        "table inet carom_hd_new {\n chain input {\n  type filter hook input priority 0;\n"
        "  tcp dport 8080 tcp flags syn reject with tcp reset\n }\n}\n"
    )
    try:
        first = json.loads(client.stdout.readline())
        assert "carom-real1" in first, f"no connection landed on real1: {first}"
        nft(lab, "real1", refuse)
        wait_for(director, lambda st: real_of(st, "hc", R1)["state"] == "down", 6)
        client.stdin.write("again\n")
        client.stdin.flush()
        second = json.loads(client.stdout.readline())
    finally:
        lab.exec("real1", ["nft", "delete", "table", "inet", "carom_hd_new"])
        client.kill()
        client.wait(10)
        assert director.reload(config(servers.agent_file))["ok"]
    print(policy, first, second)
    for before, after in zip(first, second, strict=True):
        if before != "carom-real1":
            assert after == before  # flows of live reals never move
        elif policy == "keep":
            assert after == "carom-real1"
        else:
            assert after in ("ConnectionResetError", "closed"), (before, after)
