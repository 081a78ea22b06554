"""Operations, the pure parts: listen addresses and token files, the metric
families built from a status snapshot (parsed back with Prometheus' parser),
the HTTP request reader, the doctor's judgements and `carom top`'s rates.
tests/integration/test_ops.py runs all of it against a daemon in the lab."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from carom.cli.top import Sample, human, rates
from carom.config.load import ConfigError, parse_config
from carom.config.ops import parse_endpoint, read_token
from carom.ops import http
from carom.ops.doctor import checks as c
from carom.ops.doctor import wire as w
from carom.ops.metrics import MetricsRegistry

V = IPv4Address("192.0.2.100")
R1, R2 = IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12")

# --- config ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:9641", "127.0.0.1", 9641), ("[::1]:80", "::1", 80), ("0.0.0.0:1", "0.0.0.0", 1)],
)
def test_endpoints(text: str, host: str, port: int) -> None:
    ep = parse_endpoint(text)
    assert (ep.host, ep.port) == (host, port)
    assert str(ep) == text


def token_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "api.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_file_must_be_private(tmp_path: Path) -> None:
    path = token_file(tmp_path, "0123456789abcdefXYZ\n", 0o600)
    assert read_token(path) == "0123456789abcdefXYZ"
    path.chmod(0o640)
    with pytest.raises(ValueError, match="mode 640, readable by others; chmod 600"):
        read_token(path)
    path.chmod(0o600)
    path.write_text("short")
    with pytest.raises(ValueError, match="at least 16 characters"):
        read_token(path)


def test_a_readable_token_file_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    path = token_file(tmp_path, "0123456789abcdefXYZ", 0o644)
    text = f"interfaces: [eth0]\napi:\n  token_file: {path}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert info.value.errors == [
        f"c.yaml:3: api.token_file: {path} has mode 644, readable by others; chmod 600 {path}"
    ]
    path.chmod(0o600)
    cfg = parse_config(text, "c.yaml")
    assert cfg.api is not None and cfg.api.listen == "127.0.0.1:9642"
    assert cfg.metrics is None  # off unless configured
    # a dump loads back
    assert parse_config(f"interfaces: [eth0]\napi: {{token_file: {path}}}\n").api == cfg.api


# --- metrics --------------------------------------------------------------------


def snapshot() -> dict[str, Any]:
    real = {"real_id": 1, "weight": 3, "local": False, "mac": "02:00:00:00:00:11"}
    return {
        "role": "active",
        "interfaces": [{"name": "eth0", "mode": "native"}],
        "services": [
            {
                "name": "web",
                "vip": str(V),
                "port": 80,
                "protocol": "tcp",
                "packets": 10,
                "bytes": 1000,
                "new_flows": 2,
                "conn_hits": 6,
                "reals": [
                    {
                        **real,
                        "address": str(R1),
                        "state": "up",
                        "detail": "",
                        "packets": 7,
                        "bytes": 700,
                        "new_flows": 2,
                        "conn_hits": 4,
                    },
                    {
                        **real,
                        "address": str(R2),
                        "real_id": 2,
                        "weight": 0,
                        "state": "drained",
                        "detail": "",
                        "packets": 3,
                        "bytes": 300,
                        "new_flows": 0,
                        "conn_hits": 2,
                    },
                ],
            }
        ],
        "draining": [],
        "counters": {"tx_dsr": 9, "drop_no_real": 1, "rx": 10, "new_flow": 4, "conn_hit": 5},
        "connections": 4,
        "conn_table_size": 1024,
        "map_writes_total": 17,
        "last_reload": {"ok": True, "time": 1.0e9, "seconds": 0.25},
        "loop_lag_ms": {"max_last_minute": 5.0},
        "neighbours": {"unresolved": 0},
    }


def scrape(reg: MetricsRegistry, st: dict[str, Any]) -> dict[tuple[str, frozenset[Any]], float]:
    text = reg.render(st, {"reloads": {"ok": 2, "refused": 1}, "started": 5.0}).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_from_a_snapshot() -> None:
    m = scrape(MetricsRegistry(), snapshot())
    svc = frozenset({"service": "web", "vip": str(V), "port": "80", "protocol": "tcp"}.items())
    assert m[("carom_service_packets_total", svc)] == 10
    assert m[("carom_service_bytes_total", svc)] == 1000
    assert m[("carom_real_packets_total", frozenset({"real": str(R1)}.items()))] == 7
    assert m[("carom_service_new_flows_total", svc)] == 2
    assert m[("carom_service_conn_table_hits_total", svc)] == 6
    assert m[("carom_real_new_flows_total", frozenset({"real": str(R1)}.items()))] == 2
    assert m[("carom_real_conn_table_hits_total", frozenset({"real": str(R2)}.items()))] == 2
    up = {"service": "web", "real": str(R2)}
    assert m[("carom_real_state", frozenset({**up, "state": "drained"}.items()))] == 1
    assert m[("carom_real_state", frozenset({**up, "state": "up"}.items()))] == 0
    assert m[("carom_real_weight", frozenset(up.items()))] == 0
    tx = frozenset({"verdict": "tx", "reason": "tx_dsr"}.items())
    assert m[("carom_datapath_packets_total", tx)] == 9
    drop = frozenset({"verdict": "drop", "reason": "drop_no_real"}.items())
    assert m[("carom_datapath_packets_total", drop)] == 1
    assert m[("carom_new_flows_total", frozenset())] == 4
    assert m[("carom_conn_table_hits_total", frozenset())] == 5
    assert m[("carom_conn_table_entries", frozenset())] == 4
    assert m[("carom_conn_table_capacity", frozenset())] == 1024
    assert m[("carom_reloads_total", frozenset({"result": "ok"}.items()))] == 2
    assert m[("carom_reloads_total", frozenset({"result": "failed"}.items()))] == 0
    assert m[("carom_last_reload_duration_seconds", frozenset())] == 0.25
    assert m[("carom_event_loop_lag_max_seconds", frozenset())] == 0.005
    assert m[("carom_xdp_attached", frozenset({"interface": "eth0", "mode": "native"}.items()))]


class SyncCollector:
    """What the cluster branch would register: its own families."""

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("carom_sync_lag_seconds", "sync lag", value=0.002)


def test_other_parts_of_the_daemon_add_collectors() -> None:
    reg = MetricsRegistry()
    sync = SyncCollector()
    reg.register(sync)
    assert scrape(reg, snapshot())[("carom_sync_lag_seconds", frozenset())] == 0.002
    reg.unregister(sync)
    assert ("carom_sync_lag_seconds", frozenset()) not in scrape(reg, snapshot())


# --- HTTP -----------------------------------------------------------------------


def read(raw: bytes) -> http.Request:
    async def go() -> http.Request:
        reader = asyncio.StreamReader(limit=http.MAX_HEAD_BYTES)
        reader.feed_data(raw)
        reader.feed_eof()
        return await http.read_request(reader)

    return asyncio.run(go())


def test_http_requests() -> None:
    req = read(
        b"POST /v1/reals/192.0.2.11/weight?x=1 HTTP/1.1\r\nContent-Length: 13\r\n"
        b'Authorization: Bearer t\r\n\r\n{"weight": 2}'
    )
    assert (req.method, req.path, req.query) == ("POST", "/v1/reals/192.0.2.11/weight", {"x": "1"})
    assert req.headers["authorization"] == "Bearer t" and req.body == b'{"weight": 2}'
    for raw, status in (
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ):
        with pytest.raises(http.HttpError) as info:
            read(raw)
        assert info.value.status == status, raw[:40]


# --- doctor ---------------------------------------------------------------------

OWN, OTHER, REAL1 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:11"


def test_vip_arp() -> None:
    r = c.Report()
    c.judge_vip_arp(r, V, "eth0", [], True, OWN, {})
    c.judge_vip_arp(r, V, "eth0", [OTHER], False, OWN, {})
    assert not r.findings and len(r.passed) == 2
    c.judge_vip_arp(r, V, "eth0", [REAL1, REAL1], True, OWN, {REAL1: str(R1)})
    c.judge_vip_arp(r, V, "eth0", [], False, OWN, {})
    c.judge_vip_arp(r, V, "eth0", [OTHER, REAL1], False, OWN, {})
    one, two, three = r.findings
    assert f"also answered by {REAL1} (real {R1})" in one.problem
    assert f"on {R1}: `carom realserver up --vip {V}`" in one.fix
    assert "nobody answers ARP" in two.problem
    assert "answered by 2 MACs" in three.problem


def test_real_l2() -> None:
    r = c.Report()
    c.judge_real_l2(r, R1, "eth0", [(REAL1, REAL1)] * 3, REAL1)
    assert not r.findings
    c.judge_real_l2(r, R1, "eth0", [], None)
    c.judge_real_l2(r, R1, "eth0", [(REAL1, REAL1), (OTHER, OTHER)], REAL1)
    c.judge_real_l2(r, R1, "eth0", [(REAL1, OTHER)], REAL1)
    c.judge_real_l2(r, R1, "eth0", [(REAL1, REAL1)], OTHER)
    problems = [f.problem for f in r.findings]
    assert "does not answer ARP" in problems[0]
    assert "answered by 2 MACs" in problems[1] and "field note 4" in problems[1]
    assert f"from frames sent by {OTHER}" in problems[2]
    assert f"the data plane forwards to {OTHER}" in problems[3]


def test_real_dsr() -> None:
    r = c.Report()
    c.judge_real_dsr(r, R1, V, 80, (c.SYN_ACK, V, REAL1), REAL1)
    assert not r.findings and r.passed
    c.judge_real_dsr(r, R1, V, 80, None, REAL1)
    c.judge_real_dsr(r, R1, V, 80, (c.RST | 0x10, V, REAL1), REAL1)
    c.judge_real_dsr(r, R1, V, 80, (c.SYN_ACK, R1, REAL1), REAL1)
    c.judge_real_dsr(r, R1, V, 80, (c.SYN_ACK, V, OTHER), REAL1)
    problems = [f.problem for f in r.findings]
    assert "drops VIP traffic" in problems[0]
    assert "refuses port 80" in problems[1]
    assert f"from {R1}, not from the VIP" in problems[2]
    assert f"answered by {OTHER}" in problems[3] and "forwards VIP traffic" in problems[3]


def test_loops_xdp_mode_and_veth() -> None:
    r = c.Report()
    c.judge_loops(r, 5, 5, 2.0)
    c.judge_xdp_mode(r, "generic", ["eth0"], {"eth0": "generic"})
    c.judge_veth(r, "eth0", "native", 7, 7, [])
    c.judge_veth(r, "eth0", "generic", 0, 0, [OTHER])  # generic mode finishes checksums
    assert not r.findings, r.findings
    c.judge_loops(r, 5, 9, 2.0)
    c.judge_xdp_mode(r, "auto", ["eth0", "eth1"], {"eth0": "generic"})
    c.judge_veth(r, "eth0", "native", 7, 9, [OTHER], peer_ifindex=4)
    checks = [f.check for f in r.findings]
    assert checks == ["loops", "xdp-mode", "xdp-mode", "veth", "veth"]
    assert "rose by 4" in r.findings[0].problem
    assert "generic mode (xdp_mode: auto)" in r.findings[1].problem
    assert "not attached to eth1" in r.findings[2].problem
    assert "2 frames sent back out by XDP_TX" in r.findings[3].problem
    assert "ifindex 4" in r.findings[3].problem
    assert f"frames from {OTHER}" in r.findings[4].problem
    assert "5 findings" in r.render()


def test_frames_round_trip() -> None:
    mac, peer = w.mac_raw(OWN), w.mac_raw(REAL1)
    syn = w.tcp_frame(mac, peer, R1, V, 40000, 80, 7, 0x02)
    seg = w.parse_tcp(syn)
    assert seg is not None and not seg.csum_pending  # checksums filled in
    assert (seg.src, seg.dst, seg.sport, seg.dport, seg.seq, seg.flags) == (R1, V, 40000, 80, 7, 2)
    broken = syn[:50] + b"\0\0" + syn[52:]  # TCP checksum left for offload
    assert w.parse_tcp(broken) is not None and w.parse_tcp(broken).csum_pending  # type: ignore[union-attr]
    req = w.arp_request(mac, R1, V)
    reply = req[:6] + peer + req[12:20] + b"\0\2" + peer + V.packed + mac + R1.packed
    got = w.parse_arp_reply(reply)
    assert got == w.ArpReply(V, REAL1, REAL1)
    assert w.parse_arp_reply(req) is None  # a request is not a reply


# --- top ------------------------------------------------------------------------


def test_top_rates() -> None:
    old = Sample(10.0, snapshot())
    newer = snapshot()
    newer["services"][0]["packets"] = 30
    newer["services"][0]["reals"][0]["packets"] = 27
    newer["services"][0]["new_flows"] = 8
    newer["services"][0]["reals"][0]["new_flows"] = 5
    newer["counters"] = {**newer["counters"], "new_flow": 14, "drop_no_real": 3}
    r = rates(Sample(12.0, newer), old)
    assert r["services"]["web"]["pps"] == 10.0
    assert r["reals"][str(R1)]["pps"] == 10.0
    assert (r["services"]["web"]["fps"], r["reals"][str(R1)]["fps"]) == (3.0, 1.5)
    assert r["counters"]["new_flow"] == 5.0
    assert r["drops"] == 1.0
    first = rates(old, None)
    assert first["services"]["web"]["pps"] is None  # no rate from one sample
    assert (human(None), human(999), human(1234567, "B")) == ("-", "999", "1.23MB")


# --- the hub's snapshot ---------------------------------------------------------


class SlowDaemon:
    """A daemon whose status read takes 0.3 s (a big per-CPU map walk)."""

    config = None
    started = 0.0

    def __init__(self) -> None:
        self.reads = 0
        self.threads: set[int] = set()

    def status(self) -> dict[str, Any]:
        import threading
        import time

        self.reads += 1
        self.threads.add(threading.get_ident())
        time.sleep(0.3)
        return snapshot()

    async def handle(self, req: dict[str, Any]) -> dict[str, Any] | bytes:
        return {"ok": True}


def test_snapshot_is_read_once_per_second_off_the_event_loop() -> None:
    import threading

    from carom.ops.hub import Ops

    daemon = SlowDaemon()

    async def go() -> tuple[int, int]:
        ops = Ops(daemon)
        # ten scrapes at once: one read, shared
        snaps = await asyncio.gather(*(ops.snapshot() for _ in range(10)))
        assert all(s is snaps[0] for s in snaps)
        pages = await asyncio.gather(*(ops.metrics_page() for _ in range(3)))
        reads_within_a_second = daemon.reads
        await asyncio.sleep(1.05)
        await ops.snapshot()  # older than a second: read again
        assert all(p == pages[0] for p in pages) and b"carom_service_packets_total" in pages[0]
        return reads_within_a_second, daemon.reads

    once, later = asyncio.run(go())
    assert once == 1
    assert later == 2
    # the maps are read in a worker thread, never on the event loop's (this one)
    assert threading.get_ident() not in daemon.threads


def test_ipv6_frames() -> None:
    from ipaddress import IPv6Address

    from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
    from scapy.layers.l2 import Ether

    from carom.net.announce import unsolicited_na_frame

    vip6, src6 = IPv6Address("2001:db8::100"), IPv6Address("2001:db8::2")
    ns = Ether(w.ns_request(w.mac_raw(OWN), src6, vip6))
    assert ns[Ether].dst == "33:33:ff:00:01:00" and ns[IPv6].hlim == 255
    assert ns[ICMPv6ND_NS].tgt == str(vip6)
    sent = ns[ICMPv6ND_NS].cksum
    del ns[ICMPv6ND_NS].cksum
    assert Ether(bytes(ns))[ICMPv6ND_NS].cksum == sent  # the checksum scapy computes
    na = unsolicited_na_frame(w.mac_raw(REAL1), vip6, IPv6Address("fe80::1"))
    assert w.parse_na(na) == w.ArpReply(vip6, REAL1, REAL1)
    assert w.parse_na(bytes(ns)) is None  # a solicitation is not an answer
    syn = w.tcp_frame(w.mac_raw(OWN), w.mac_raw(REAL1), src6, vip6, 40000, 80, 9, 0x02)
    seg = w.parse_tcp(syn)
    assert seg is not None and not seg.csum_pending
    assert (seg.src, seg.dst, seg.dport, seg.seq) == (src6, vip6, 80, 9)


def test_a_busy_port_is_retried_and_then_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """On loopback: the metrics port is taken when the hub starts; the daemon
    goes on, and the listener opens once the port is free."""
    import socket

    from carom.ops import hub

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    daemon = SlowDaemon()
    daemon.config = parse_config(f'interfaces: [eth0]\nmetrics: {{listen: "127.0.0.1:{port}"}}\n')

    async def go() -> bytes:
        ops = hub.Ops(daemon)
        await ops._sync_listeners()
        assert not ops._servers  # busy: nothing opened, nothing raised
        busy.close()
        await ops._sync_listeners()
        assert not ops._servers  # not retried before LISTEN_RETRY_S
        monkeypatch.setattr(hub, "LISTEN_RETRY_S", 0.0)
        await ops._sync_listeners()
        assert ops._servers
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await reader.read()
        writer.close()
        for server in ops._servers.values():
            server.close()
        return reply

    reply = asyncio.run(go())
    assert reply.startswith(b"HTTP/1.1 200 OK") and b"carom_build_info" in reply


def _cluster(ours: str, peers: list[tuple[str, bool, str]]) -> dict[str, Any]:
    return {
        "fingerprint": ours,
        "peers": [{"name": n, "alive": a, "fingerprint": f} for n, a, f in peers],
    }


def test_fingerprints() -> None:
    same = _cluster("aa" * 16, [("dir2", True, "aa" * 16)])
    r = c.Report()
    c.judge_fingerprints(r, [same, same])
    assert not r.findings and r.passed == [
        f"fingerprints: Maglev tables equal to dir2's ({'a' * 12})"
    ]
    # differing in one read only (a health change on its way): no finding
    differ = _cluster("aa" * 16, [("dir2", True, "bb" * 16)])
    r = c.Report()
    c.judge_fingerprints(r, [differ, same])
    assert not r.findings
    # differing in every read: a finding, with this node's unresolved reals
    r = c.Report()
    c.judge_fingerprints(r, [differ, differ], ["192.0.2.13"])
    (f,) = r.findings
    assert f.check == "fingerprints" and "differ from dir2's" in f.problem
    assert f"ours {'a' * 12}, theirs {'b' * 12}" in f.problem
    assert "weight" in f.fix and "no MAC for 192.0.2.13" in f.fix
    # a dead peer's tables do not count
    r = c.Report()
    c.judge_fingerprints(r, [_cluster("aa" * 16, [("dir2", False, "bb" * 16)])] * 2)
    assert not r.findings and r.skipped
