"""Multi-port services (`ports:`): what a valid one means. The error messages
are in config_cases/bad/ports_*.yaml (test_config.py)."""

from __future__ import annotations

from carom.config.incremental import ConfigCache
from carom.config.load import parse_config
from carom.config.schema import Config

TEXT = """\
interfaces: [eth0]
services:
  - vip: 192.0.2.1
    ports: [25, "5222-5223", 143]
    persistence_timeout: 5
  - vip: 192.0.2.1
    port: all
  - vip: 192.0.2.1
    protocol: udp
    ports: [25, 143]
"""


def test_ports_expand_and_name_the_service() -> None:
    svc = parse_config(TEXT).services[0]
    assert svc.port is None
    assert svc.port_numbers == (25, 5222, 5223, 143)
    assert svc.port_number == 25  # identity in the maps and status; a check's default port
    assert svc.key == (svc.vip, "tcp", 25)
    assert svc.display_name == "192.0.2.1:25,5222-5223,143/tcp"


def test_a_dump_loads_back_and_the_fast_path_agrees() -> None:
    cfg = parse_config(TEXT)
    dumped = cfg.model_dump(mode="json")
    assert dumped["services"][0]["ports"] == [25, "5222-5223", 143]
    assert dumped["services"][1]["port"] == "all"
    assert Config.model_validate(dumped) == cfg
    assert ConfigCache().fast(TEXT) == cfg


def test_ranges_are_normalised_and_a_port_all_service_may_share_the_vip() -> None:
    cfg = parse_config(TEXT.replace('"5222-5223"', '" 5222 - 5223 "'))
    assert cfg.services[0].ports == (25, "5222-5223", 143)
    assert [s.port_number for s in cfg.services] == [25, 0, 25]  # tcp all, udp 25: no clash
