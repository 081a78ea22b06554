"""Operations as an operator meets them, in the namespace lab: Prometheus scrapes
of a forwarding director, the HTTP API with curl, `carom top` in a tmux pane,
and `carom doctor` on a healthy lab and on one with the field notes' mistakes
planted (each undone afterwards)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carom.lab import Lab, nodes
from carom.lab import topology as t
from carom.lab.director import Director, lab_config
from carom.lab.traffic import curl

pytestmark = [pytest.mark.root, pytest.mark.integration]

METRICS = "127.0.0.1:9641"
API = "127.0.0.1:9642"
DIR1 = t.DIR1.name
REAL_ADDRS = [str(n.main.addr4) for n in t.REALS]


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ops") / "api.token"
    path.write_text("s3cret-token-for-the-lab-0123456789\n")
    path.chmod(0o600)
    return path


def ops_config(token: Path, **extra: Any) -> dict[str, Any]:
    return lab_config(
        metrics={"listen": METRICS}, api={"listen": API, "token_file": str(token)}, **extra
    )


@pytest.fixture(scope="module")
def director(lab: Lab, token: Path) -> Iterator[Director]:
    with Director(lab, DIR1).running(ops_config(token)) as d:
        yield d


def http(lab: Lab, *args: str) -> tuple[int, str]:
    """curl inside the director's namespace: (status code, body)."""
    out = lab.exec(DIR1, ["curl", "-s", "-m", "5", "-w", "\n%{http_code}", *args], check=True)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def scrape(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape, parsed by prometheus_client's parser: (name, labels) -> value."""
    code, text = http(lab, f"http://{METRICS}/metrics")
    assert code == 200, text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return m[(name, tuple(sorted(labels.items())))]


# --- metrics ------------------------------------------------------------------------


def test_scrape_counts_what_the_clients_sent(lab: Lab, director: Director) -> None:
    before = scrape(lab)
    served = curl(lab, "client1", f"http://{t.VIP4}/", 12)
    assert len(served) == 12
    time.sleep(1.1)  # the snapshot is cached for a second
    m = scrape(lab)
    svc = {"service": "web", "vip": str(t.VIP4), "port": "80", "protocol": "tcp"}
    grew = value(m, "carom_service_packets_total", **svc) - value(
        before, "carom_service_packets_total", **svc
    )
    assert grew >= 12 * 3, grew  # at least SYN, ACK, request and FIN per connection
    assert value(m, "carom_service_bytes_total", **svc) > value(
        before, "carom_service_bytes_total", **svc
    )
    real_growth = sum(
        value(m, "carom_real_packets_total", real=a)
        - value(before, "carom_real_packets_total", real=a)
        for a in REAL_ADDRS
    )
    assert real_growth >= grew  # every web packet went to one of the reals
    tx = value(m, "carom_datapath_packets_total", verdict="tx", reason="tx_dsr")
    assert tx - value(before, "carom_datapath_packets_total", verdict="tx", reason="tx_dsr") >= grew
    assert value(m, "carom_new_flows_total") - value(before, "carom_new_flows_total") >= 12

    def grown(name: str, **labels: str) -> float:
        return value(m, name, **labels) - value(before, name, **labels)

    # per service and per real: each connection one new flow, its later packets hits
    assert grown("carom_service_new_flows_total", **svc) >= 12
    assert grown("carom_service_conn_table_hits_total", **svc) >= 12
    for name in ("carom_real_new_flows_total", "carom_real_conn_table_hits_total"):
        per_real = sum(grown(name, real=a) for a in REAL_ADDRS)
        assert per_real == grown(name.replace("real", "service", 1), **svc), name
    assert value(m, "carom_conn_table_hits_total") > value(before, "carom_conn_table_hits_total")
    assert value(m, "carom_conn_table_entries") >= 12
    for a in REAL_ADDRS:
        assert value(m, "carom_real_state", service="web", real=a, state="up") == 1
        assert value(m, "carom_real_state", service="web", real=a, state="unresolved") == 0
        assert value(m, "carom_real_weight", service="web", real=a) == 1
    assert value(m, "carom_xdp_attached", interface="carom0", mode="native") == 1
    info = [k for k in m if k[0] == "carom_build_info"]
    assert info and dict(info[0][1])["version"]
    # every verdict reason is exposed, with the verdict it stands for
    reasons = {dict(k[1])["reason"] for k in m if k[0] == "carom_datapath_packets_total"}
    assert {"tx_dsr", "drop_loop", "pass_not_vip", "tx_arp_reply"} <= reasons


def test_reloads_are_counted_by_result(lab: Lab, director: Director, token: Path) -> None:
    before = scrape(lab)
    assert director.request("reload")["ok"]
    director.write_config("interfaces: [carom0]\nservices: nope\n")
    assert not director.request("reload")["ok"]
    director.write_config(ops_config(token))
    time.sleep(1.1)
    m = scrape(lab)
    for result, n in (("ok", 1), ("refused", 1), ("failed", 0)):
        grew = value(m, "carom_reloads_total", result=result) - value(
            before, "carom_reloads_total", result=result
        )
        assert grew == n, (result, grew)
    assert value(m, "carom_last_reload_success") == 0
    assert director.request("reload")["ok"]
    time.sleep(1.1)
    m = scrape(lab)
    assert value(m, "carom_last_reload_success") == 1
    assert 0 < value(m, "carom_last_reload_duration_seconds") < 30


# --- the HTTP API -------------------------------------------------------------------


def test_api_reads_match_the_control_socket(lab: Lab, director: Director) -> None:
    code, body = http(lab, f"http://{API}/v1/services")
    assert code == 200
    services = json.loads(body)["services"]
    assert [s["name"] for s in services] == [s["name"] for s in director.status()["services"]]
    code, body = http(lab, f"http://{API}/v1/reals")
    reals = {r["address"]: r for r in json.loads(body)["reals"]}
    assert set(REAL_ADDRS) <= set(reals)
    assert {s["service"] for s in reals[REAL_ADDRS[0]]["services"]} == {"web", "banner"}
    code, body = http(lab, f"http://{API}/v1/services/nosuch")
    assert code == 404 and "web" in json.loads(body)["error"]
    code, body = http(lab, f"http://{API}/v1/counters")
    assert code == 200 and "tx_dsr" in json.loads(body)["counters"]
    # explain: the same reply as `carom explain` over the socket
    client, service = "198.51.100.10:40000", f"{t.VIP4}:80/tcp"
    code, body = http(lab, f"http://{API}/v1/explain?client={client}&service={service}&syn=1")
    assert code == 200, body
    via_socket = director.request("explain", client=client, service=service, syn=True)
    assert json.loads(body)["explain"] == via_socket["explain"]
    code, body = http(lab, f"http://{API}/v1/explain?client=nonsense&service={service}")
    assert code == 400 and "ADDRESS:PORT" in json.loads(body)["error"]
    code, body = http(lab, f"http://{API}/openapi.json")
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.") and "/v1/reals/{address}/drain" in doc["paths"]


def test_api_actions_need_the_token(lab: Lab, director: Director, token: Path) -> None:
    url = f"http://{API}/v1/reload"
    code, body = http(lab, "-X", "POST", url)
    assert code == 401 and "Bearer" in body
    code, _ = http(lab, "-X", "POST", "-H", "Authorization: Bearer wrong-token-0123456789", url)
    assert code == 401
    auth = f"Authorization: Bearer {token.read_text().strip()}"
    code, body = http(lab, "-X", "POST", "-H", auth, url)
    assert code == 200 and json.loads(body)["ok"], body
    # drain / weight / undrain: the control commands of daemon/overrides.py
    drain = f"http://{API}/v1/reals/{REAL_ADDRS[0]}/drain"
    code, body = http(lab, "-X", "POST", "-H", auth, drain)
    assert code == 200, body
    assert director.status()["overrides"], "the drain shows in status as an override"
    weight = drain.replace("/drain", "/weight")
    code, body = http(lab, "-X", "POST", "-H", auth, "-d", '{"weight": 3}', weight)
    assert code == 200, body
    code, body = http(lab, "-X", "POST", "-H", auth, drain.replace("/drain", "/undrain"))
    assert code == 200, body
    assert not director.status()["overrides"], "undrain removes every override of the real"
    code, body = http(lab, "-X", "POST", "-H", auth, f"http://{API}/v1/reals/nonsense/drain")
    assert code == 400
    # the daemon kept serving through all of it
    assert len(curl(lab, "client1", f"http://{t.VIP4}/", 3)) == 3


# --- carom top ----------------------------------------------------------------------


def test_top_in_tmux(lab: Lab, director: Director) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (make deps)")
    tmux = ["tmux", "-L", "carom-opsd-test"]
    cmd = " ".join(
        [
            "ip",
            "netns",
            "exec",
            DIR1,
            sys.executable,
            "-m",
            "carom",
            "top",
            "--socket",
            director.socket,
            "-n",
            "0.5",
        ]
    )
    subprocess.run([*tmux, "kill-server"], capture_output=True)
    subprocess.run([*tmux, "new-session", "-d", "-x", "150", "-y", "40", cmd], check=True)
    try:
        traffic = lab.popen(
            "client1",
            ["sh", "-c", f"for i in $(seq 300); do curl -s -m 1 http://{t.VIP4}/ >/dev/null; done"],
        )
        try:
            # the web service's packets per second, once curl's traffic shows
            deadline, screen, rate = time.monotonic() + 15, "", "-"
            while rate in ("-", "0") and time.monotonic() < deadline:
                time.sleep(0.5)
                screen = subprocess.run(
                    [*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True
                ).stdout
                web = [line for line in screen.splitlines() if line.startswith("web ")]
                rate = web[0].split()[-4] if web else "-"
        finally:
            traffic.kill()
            traffic.wait()
        assert rate not in ("-", "0"), screen
        assert "carom top" in screen and "role active" in screen, screen
        assert "banner" in screen, screen
        for a in REAL_ADDRS:
            assert a in screen, screen
        subprocess.run([*tmux, "send-keys", "q"], check=True)
        deadline = time.monotonic() + 5
        while subprocess.run([*tmux, "has-session"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "carom top did not exit on q"
            time.sleep(0.1)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


# --- carom doctor -------------------------------------------------------------------


def doctor(director: Director) -> tuple[int, str, dict[str, Any]]:
    r = director.carom("doctor", "-c", str(director.config_path))
    j = director.carom("doctor", "-c", str(director.config_path), "--json")
    return r.returncode, r.stdout + r.stderr, json.loads(j.stdout)


def test_doctor_passes_on_a_healthy_lab(lab: Lab, director: Director) -> None:
    code, out, _ = doctor(director)
    assert code == 0, out
    assert "no findings" in out
    for a in REAL_ADDRS:
        assert f"real-dsr: {a} serves {t.VIP4}:80 from the VIP" in out, out
    assert f"vip-arp: {t.VIP4} on carom0 answered by this node only" in out
    # IPv6: neighbour solicitations and the same SYN through the VIP path
    assert f"vip-arp: {t.VIP6} on carom0 answered by this node only" in out
    for n in t.REALS:
        assert f"real-l2: {n.main.addr6} answers NDP on carom0 from one MAC" in out, out
        assert f"real-dsr: {n.main.addr6} serves {t.VIP6}:80 from the VIP" in out, out
    assert "skip" not in out, out


def test_doctor_finds_planted_mistakes(lab: Lab, director: Director) -> None:
    real1, real2, real3 = t.REALS
    dir2 = t.DIR2.name
    vip = f"{t.VIP4}/32"
    undo: list[list[str | list[str]]] = []

    def plant(node: str, argv: list[str], back: list[str]) -> None:
        lab.exec(node, argv, check=True)
        undo.append([node, back])

    try:
        # dir2 (a real server too) answers ARP for the VIP, and claims real1's address
        plant(
            dir2,
            ["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0"],
            ["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"],
        )
        plant(
            dir2,
            ["sysctl", "-qw", "net.ipv4.conf.carom0.arp_ignore=0"],
            ["sysctl", "-qw", "net.ipv4.conf.carom0.arp_ignore=1"],
        )
        plant(
            dir2,
            ["ip", "addr", "add", f"{real1.main.addr4}/32", "dev", "carom0"],
            ["ip", "addr", "del", f"{real1.main.addr4}/32", "dev", "carom0"],
        )
        # real2 leaves TCP checksums to offload on its veth, and so does dir1's
        # switch port (else the port would finish them on the way)
        nodes.run(
            nodes.netns_exec_argv(t.SWITCH_NS, ["ethtool", "-K", t.DIR1.main.port, "tx", "on"])
        )
        undo.append(["lan-tx", []])
        plant(
            real2.name,
            ["ethtool", "-K", "carom0", "tx", "on"],
            ["ethtool", "-K", "carom0", "tx", "off"],
        )
        # real3 lost its VIP and forwards: VIP frames come back (field note 2)
        plant(
            real3.name,
            ["ip", "addr", "del", vip, "dev", "lo"],
            ["ip", "addr", "add", vip, "dev", "lo"],
        )
        plant(
            real3.name,
            ["ip", "addr", "del", f"{t.VIP6}/128", "dev", "lo"],
            ["ip", "addr", "add", f"{t.VIP6}/128", "dev", "lo"],
        )
        plant(
            real3.name,
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=0"],
        )
        # (towards dir1, the VIP's owner, although dir2 now answers ARP for it too)
        plant(
            real3.name,
            [
                "ip",
                "neigh",
                "replace",
                str(t.VIP4),
                "lladdr",
                t.DIR1.main.mac,
                "dev",
                "carom0",
                "nud",
                "permanent",
            ],
            ["ip", "neigh", "del", str(t.VIP4), "dev", "carom0"],
        )
        code, out, report = doctor(director)
    finally:
        for node, back in reversed(undo):
            if node == "lan-tx":
                nodes.tx_checksum_off(t.SWITCH_NS, t.DIR1.main.port)
            else:
                lab.exec(node, back)  # type: ignore[arg-type]
    assert code == 1, out
    found = {(f["check"], f["problem"]) for f in report["findings"]}
    checks = [c for c, _ in found]
    text = "\n".join(p for _, p in found)
    assert "fix:" in out
    assert f"{t.VIP4} on carom0 is also answered by {t.DIR2.main.mac}" in text, out
    assert f"real {real1.main.addr4} is answered by 2 MACs" in text, out
    assert f"real {real3.main.addr4} does not answer a SYN for {t.VIP4}:80" in text, out
    assert f"real {real3.main.addr6} does not answer a SYN for {t.VIP6}:80" in text, out
    assert "loops" in checks, out
    assert f"frames from {real2.main.mac} arrive with their TCP/UDP checksum" in text, out
    # after the undo, and the fix doctor gives for the director's stale entry of
    # real1 (it resolved to dir2 while both claimed the address), all is well
    lab.exec(DIR1, ["ip", "neigh", "flush", str(real1.main.addr4)])
    lab.exec(DIR1, ["ping", "-c", "1", "-W", "1", str(real1.main.addr4)])

    def real1_mac() -> str | None:
        reals = director.status()["services"][0]["reals"]
        return next(r["mac"] for r in reals if r["address"] == str(real1.main.addr4))

    deadline = time.monotonic() + 15
    while real1_mac() != real1.main.mac:
        assert time.monotonic() < deadline, real1_mac()
        time.sleep(0.2)
    code, out, _ = doctor(director)
    assert code == 0, out


def test_doctor_finds_xdp_tx_drops_on_veth(lab: Lab, director: Director) -> None:
    """dir1's switch port loses the XDP program that lets it receive XDP_TX frames:
    every forwarded frame is dropped, and doctor sees the drops rise while it runs."""
    nodes.ip(t.SWITCH_NS, "link", "set", "dev", t.DIR1.main.port, "xdpdrv", "off")
    try:
        traffic = lab.popen(
            "client1",
            ["sh", "-c", f"for i in $(seq 100); do curl -s -m 1 http://{t.VIP4}/ >/dev/null; done"],
        )
        try:
            code, out, _ = doctor(director)
        finally:
            traffic.kill()
            traffic.wait()
    finally:
        nodes.attach_xdp_pass(t.DIR1.main)
    assert code == 1, out
    assert "carom0: " in out and "frames sent back out by XDP_TX were dropped while doctor" in out
    assert "has no XDP program and GRO off" in out, out
    # restored: requests get through again (the first may still meet a stale flow)
    assert sum(len(curl(lab, "client1", f"http://{t.VIP4}/", 1)) for _ in range(5)) >= 4


def test_doctor_finds_generic_mode_where_native_was_expected(
    lab: Lab, director: Director, token: Path
) -> None:
    director.stop(detach=True)
    director.start(ops_config(token, xdp_mode="generic"))
    try:
        director.write_config(ops_config(token, xdp_mode="auto"))
        assert director.request("reload")["ok"]  # auto accepts the running generic mode
        code, out, _ = doctor(director)
        assert code == 1, out
        assert "carom0 runs XDP in generic mode (xdp_mode: auto)" in out, out
    finally:
        director.stop(detach=True)
        director.start(ops_config(token))


def test_a_reload_moves_the_listeners(lab: Lab, director: Director, token: Path) -> None:
    """api.listen changes on reload: the old port closes, the new one serves,
    and metrics and the API share one listener when their addresses are equal."""
    shared = "127.0.0.1:9643"
    director.write_config(
        lab_config(metrics={"listen": shared}, api={"listen": shared, "token_file": str(token)})
    )
    try:
        assert director.request("reload")["ok"]
        deadline = time.monotonic() + 5
        while lab.exec(DIR1, ["curl", "-s", "-m", "1", f"http://{shared}/v1/counters"]).returncode:
            assert time.monotonic() < deadline, "the API did not move within 5 s"
            time.sleep(0.2)
        assert http(lab, f"http://{shared}/metrics")[0] == 200
        assert http(lab, f"http://{shared}/v1/status")[0] == 200
        old = lab.exec(DIR1, ["curl", "-s", "-m", "1", f"http://{API}/v1/status"])
        assert old.returncode != 0, "the old API port still answers"
        # a token file that became readable by others disables the actions
        token.chmod(0o644)
        auth = f"Authorization: Bearer {token.read_text().strip()}"
        code, body = http(lab, "-X", "POST", "-H", auth, f"http://{shared}/v1/reload")
        assert code == 403 and "chmod 600" in body, body
    finally:
        token.chmod(0o600)
        director.write_config(ops_config(token))
        assert director.request("reload")["ok"]
    deadline = time.monotonic() + 5
    while lab.exec(DIR1, ["curl", "-s", "-m", "1", f"http://{API}/v1/status"]).returncode:
        assert time.monotonic() < deadline
        time.sleep(0.2)
