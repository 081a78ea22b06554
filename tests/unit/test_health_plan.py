"""config/checks.py and health/plan.py: from YAML to the probes the scheduler runs."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from carom.config.checks import COMMON, KINDS, OWN, Check
from carom.config.load import load_config, parse_config
from carom.health.plan import probe_keys, to_spec
from carom.health.spec import AgentCheck, DnsCheck, ExecCheck, HttpCheck, TcpCheck, UdpCheck

CASES = Path(__file__).parent / "config_cases"
DOCS = Path(__file__).parents[2] / "docs" / "config.md"


def test_docs_name_every_check_field() -> None:
    docs = DOCS.read_text()
    for name in Check.model_fields:
        assert f"| `{name}` |" in docs, f"docs/config.md does not describe check.{name}"
    assert set(Check.model_fields) == COMMON | set().union(*OWN.values())
    assert set(OWN) == set(KINDS)


def test_every_kind_converts_to_its_runtime_definition() -> None:
    cfg = load_config(CASES / "good" / "checks.yaml")
    keys = probe_keys(cfg)
    by_service = {svc.display_name: svc for svc in cfg.services}
    web = by_service["web"]
    a, b = (keys[(web.key, r.address)] for r in web.reals)
    assert a.check == HttpCheck(
        timing=a.check.timing,
        path="/healthz",
        host="www.example.com",
        expect_status=(200, 204),
        body=b"ok",
    )
    assert (a.target.address, a.target.port) == (IPv4Address("192.0.2.11"), 80)
    assert b.check == AgentCheck(timing=b.check.timing, send=b"status\n")
    assert b.target.port == 10000
    tls = keys[(by_service["web-tls"].key, IPv4Address("192.0.2.11"))].check
    assert isinstance(tls, HttpCheck) and tls.tls and tls.tls_verify and tls.kind == "https"
    assert (tls.timing.interval, tls.timing.timeout, tls.timing.fast_interval) == (2.0, 1.5, 0.3)
    dns = keys[(by_service["dns"].key, IPv4Address("192.0.2.21"))].check
    assert dns == DnsCheck(timing=dns.timing, query="example.com", query_type="A", transport="tcp")
    udp = keys[(by_service["game"].key, IPv4Address("192.0.2.22"))].check
    assert isinstance(udp, UdpCheck) and udp.send == b"\x00PING" and udp.expect == b"PONG"
    assert (udp.timing.rise, udp.timing.fall, udp.timing.fast_interval) == (3, 3, 0.25)
    ex = keys[(by_service["all-ports"].key, IPv4Address("192.0.2.23"))].check
    assert ex == ExecCheck(timing=ex.timing, command=("/usr/local/bin/check-app", "--quick"))


def test_identical_checks_across_services_give_one_key() -> None:
    cfg = parse_config(
        """
interfaces: [eth0]
services:
  - {vip: 192.0.2.100, port: 80, check: {kind: tcp, port: 80}, reals: [{address: 192.0.2.11}]}
  - {vip: 192.0.2.101, port: 80, check: {kind: tcp}, reals: [{address: 192.0.2.11}]}
  - {vip: 192.0.2.102, port: 80, check: {kind: tcp, rise: 3}, reals: [{address: 192.0.2.11}]}
  - {vip: 192.0.2.103, port: 81, reals: [{address: 192.0.2.11, check: {kind: tcp, port: 80}}]}
  - {vip: 192.0.2.104, port: 80, reals: [{address: 192.0.2.11}]}
"""
    )
    keys = probe_keys(cfg)
    assert len(keys) == 4  # the unchecked service has none
    # port: 80 and the service's port 80 are the same probe; rise 3 is another
    distinct = set(keys.values())
    assert len(distinct) == 2
    first, second, third, fourth = keys.values()
    assert first == second == fourth
    assert third.check.timing.rise == 3 and third != first


def test_default_check_detects_within_3_seconds() -> None:
    from carom.health.damping import worst_detection

    spec = to_spec(Check(kind="tcp"))
    assert isinstance(spec, TcpCheck)
    assert worst_detection(spec.timing) <= 3.0
