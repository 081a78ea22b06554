"""The reals XDP_TX can reach (net/egress.py): pure rules over config and routes,
and their messages with the file's lines (config.load.located)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from carom.config.load import load_config, located
from carom.net.egress import egress_problems, egress_warnings

CONFIG = """\
interfaces: [{ifaces}]
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    reals:
      - address: 10.0.1.10
      - address: 10.0.2.10
      - address: 10.0.3.10
        local: true
  - name: mail
    vip: 192.0.2.101
    port: 25
    reals:
      - address: 10.0.2.11
"""

ROUTES = {
    ipaddress.ip_address("10.0.1.10"): "eth0",
    ipaddress.ip_address("10.0.2.10"): "eth1",
    ipaddress.ip_address("10.0.2.11"): "eth1",
    ipaddress.ip_address("10.0.3.10"): "eth9",  # local: never looked at
}


def write(tmp_path: Path, ifaces: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(ifaces=ifaces))
    return path


def test_a_real_behind_an_interface_carom_is_not_attached_to_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "eth0")
    problems = egress_problems(load_config(path), ROUTES)
    assert [loc for loc, _ in problems] == [
        ("services", 0, "reals", 1, "address"),
        ("services", 1, "reals", 0, "address"),
    ]
    errors = located(path, problems).errors
    assert errors[0].startswith(
        f"{path}:8: services[0].reals[1].address: the real 10.0.2.10 is reached through "
        "eth1 (its route), but carom is attached to eth0 only: carom forwards with XDP_TX"
    )
    assert (
        "put the real on the segment of eth0, or run a director on the segment of eth1"
        in (errors[0])
    )
    assert errors[1].startswith(f"{path}:15: services[1].reals[0].address: the real 10.0.2.11")


def test_a_service_split_over_two_attached_interfaces_is_refused(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "eth0, eth1"))
    problems = egress_problems(cfg, ROUTES)
    assert len(problems) == 1
    loc, msg = problems[0]
    assert loc == ("services", 0, "reals", 1, "address")
    assert "10.0.2.10 is reached through eth1 but reals[0] (10.0.1.10) through eth0" in msg
    assert "carom is attached to eth0, eth1" in msg
    # the service whose reals are all behind one interface is valid, with a warning
    assert egress_warnings(cfg, ROUTES) == [
        "service mail: its reals are behind eth1, so its VIP traffic must arrive on eth1; "
        "frames for it arriving on eth0 would leave by that interface and not reach them "
        "(XDP_TX)"
    ]


def test_reals_without_a_route_and_local_reals_are_left_to_the_neighbour_state(
    tmp_path: Path,
) -> None:
    cfg = load_config(write(tmp_path, "eth0"))
    routes = dict(ROUTES)
    routes[ipaddress.ip_address("10.0.2.10")] = None
    del routes[ipaddress.ip_address("10.0.2.11")]
    assert egress_problems(cfg, routes) == []
    assert egress_warnings(cfg, routes) == []  # one interface: nothing to say
