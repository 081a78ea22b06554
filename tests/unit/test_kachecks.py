"""keepalived checkers to carom checks: the mapping the golden files do not cover."""

from __future__ import annotations

from carom.config.load import parse_config
from carom.importers.keepalived import convert

HEAD = """
virtual_server 192.0.2.10 53 {
    delay_loop 2
    lb_kind DR
    protocol UDP
    real_server 10.0.0.1 53 {
        DNS_CHECK {
            type a
            name www.example.com
            connect_timeout 4
            retry 4
            delay_before_retry 1
        }
        PING_CHECK {
        }
    }
    real_server 10.0.0.2 53 {
        BFD_CHECK {
        }
    }
}
"""


def test_dns_check_timing_and_the_checks_carom_cannot_carry() -> None:
    res = convert(HEAD, "t.conf")
    svc = res.services[0]
    assert svc.check is None  # the reals differ: one check each
    first, second = svc.reals
    assert first.check == {
        "kind": "dns",
        "query_type": "A",
        "query": "www.example.com",
        "interval": 2.0,
        "timeout": 2.0,  # connect_timeout 4 > delay_loop 2: clamped
        "fall": 5,  # retry 4, then fail
        "fast_interval": 1.0,
    }
    assert second.check is None
    notes = "\n".join(n.message for n in res.notes)
    assert "timeout 4 s is longer than the interval 2 s" in notes
    assert "PING_CHECK not carried over: carom has one check per real" in notes
    assert "the first (DNS_CHECK) is kept" in notes
    assert "BFD_CHECK not carried over: carom has no BFD" in notes


def test_the_written_config_loads_with_its_checks() -> None:
    cfg = parse_config(convert(HEAD, "t.conf").to_yaml("t.conf"), "carom.yaml")
    check = cfg.services[0].reals[0].check
    assert check is not None and check.kind == "dns" and check.fall == 5
