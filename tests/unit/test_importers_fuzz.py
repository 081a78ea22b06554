"""Any text given to an importer gives a config or an ImportFailure, never a crash,
and whatever config it writes is read by carom's loader (valid or not, with
file:line errors): the converter has no input that escapes its error handling.

Inputs are built from each format's grammar, with good and bad values mixed, so
that most examples get deep into the converter (the last test checks that)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carom.config.load import ConfigError, parse_config
from carom.importers import ipvsadm, keepalived
from carom.importers.common import FwmarkTarget, ImportFailure, ImportResult


def _mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Good values, and now and then a bad one."""
    return st.sampled_from(good * 8 + bad)


IPS = _mostly(["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "10.0.0.1"], ["x"])
PORTS = _mostly(["80", "0", "443"], ["65536", "http"])
NUMBERS = _mostly(["0", "1", "3", "300", "70000", "9999999"], ["-1", "x", ""])

KA_SERVICE_LINES = st.one_of(
    st.tuples(st.sampled_from(["lb_kind", "lvs_method"]), st.sampled_from(["DR", "NAT", "dr"])),
    st.tuples(st.sampled_from(["lb_algo", "lvs_sched"]), st.sampled_from(["rr", "mh", "wlc"])),
    st.tuples(st.just("protocol"), st.sampled_from(["TCP", "UDP", "SCTP", ""])),
    st.tuples(
        st.sampled_from(["persistence_timeout", "delay_loop", "quorum", "ops", "frobnicate"]),
        NUMBERS,
    ),
    st.tuples(st.just("persistence_granularity"), st.sampled_from(["255.255.255.0", "128"])),
).map(" ".join)
KA_REAL = st.builds(
    lambda ip, port, weight, check: (
        f"real_server {ip} {port} {{\n weight {weight}\n {check} {{\n connect_port 80\n }}\n}}"
    ),
    IPS,
    PORTS,
    NUMBERS,
    st.sampled_from(["TCP_CHECK", "HTTP_GET", "MISC_CHECK", "notify_up"]),
)
KA_HEAD = st.one_of(
    st.builds(lambda ip, port: f"{ip} {port}", IPS, PORTS),
    _mostly(["fwmark 7", "fwmark 8", "group G"], ["group H", "fwmark x"]),
)
KA_VS = st.builds(
    lambda head, lines, reals: "virtual_server %s {\n%s\n}" % (head, "\n".join([*lines, *reals])),  # noqa: UP031
    KA_HEAD,
    st.lists(KA_SERVICE_LINES, max_size=6),
    st.lists(KA_REAL, max_size=4),
)
KA_OTHER = _mostly(
    [
        "virtual_server_group G {\n 192.0.2.10-12 80\n 2001:db8::a-c 443\n fwmark 7\n}",
        "vrrp_instance V {\n interface eth1\n}",
        "global_defs {\n lvs_timeouts tcp 60 tcpfin 5 udp 30\n}",
        "include /etc/keepalived/x.conf",
    ],
    [
        "virtual_server_group G {\n 192.0.2.12-10 80\n}",
        "global_defs {\n lvs_timeouts tcp x\n}",
        "}",
    ],
)
KA_FILE = st.lists(st.one_of(KA_VS, KA_VS, KA_OTHER), min_size=1, max_size=5).map("\n".join)

IPV_SERVICE = st.one_of(
    st.builds(lambda k, ip, p: f"{k} {ip}:{p}", st.sampled_from(["-t", "-u"]), IPS, PORTS),
    st.builds(lambda ip, p: f"-t [{ip}]:{p}", IPS, PORTS),
    _mostly(["-f 100", "-f 7"], ["-f x", ""]),
)
IPV_SVC_OPTS = st.lists(
    st.sampled_from(["-s rr", "-s mh", "-s", "-p", "-p 60", "-M 255.255.255.0", "-o", "--pe sip"]),
    max_size=3,
).map(" ".join)
IPV_REAL_OPTS = st.lists(
    st.sampled_from(["-g", "-m", "-i", "-w 3", "-w 70000", "-w x", "-x 5", "-y 1"]), max_size=3
).map(" ".join)
IPV_LINE = st.one_of(
    st.builds(
        lambda c, s, o: f"{c} {s} {o}",
        st.sampled_from(["-A", "-E", "-D"]),
        IPV_SERVICE,
        IPV_SVC_OPTS,
    ),
    st.builds(
        lambda c, s, ip, p, o: f"ipvsadm {c} {s} -r {ip}:{p} {o}",
        st.sampled_from(["-a", "-a", "-e", "-d"]),
        _mostly(["-t 192.0.2.1:80", "-u 192.0.2.1:53", "-f 7"], ["-t 192.0.2.9:1"]),
        IPS,
        PORTS,
        IPV_REAL_OPTS,
    ),
    _mostly(["-C", "--set 900 120 300", "--start-daemon master", "# c"], ["--set 1 2"]),
)
IPV_SERVICES = st.sampled_from(["-A -t 192.0.2.1:80 -s rr", "-A -u 192.0.2.1:53", "-A -f 7 -p 5"])
IPV_FILE = st.builds(
    lambda first, rest: "\n".join([*first, *rest]),
    st.lists(IPV_SERVICES, min_size=1),
    st.lists(IPV_LINE, max_size=8),
)

Convert = Callable[..., ImportResult]


def _check(convert: Convert, text: str) -> ImportResult | None:
    try:
        result = convert(
            text,
            "in",
            fwmarks={7: FwmarkTarget("192.0.2.9", "tcp", (25, "5222-5223"))},
            local=["192.0.2.2"],
        )
    except ImportFailure as exc:
        assert str(exc).startswith("in:")
        return None
    try:
        parse_config(result.to_yaml("in"), "out.yaml")
    except ConfigError as exc:
        assert all(e.startswith("out.yaml:") for e in exc.errors)
    return result


@settings(max_examples=400, deadline=None)
@given(KA_FILE)
def test_keepalived_never_crashes(text: str) -> None:
    _check(keepalived.convert, text)


@settings(max_examples=400, deadline=None)
@given(IPV_FILE)
def test_ipvsadm_never_crashes(text: str) -> None:
    _check(ipvsadm.convert, text)


@pytest.mark.parametrize("convert", [keepalived.convert, ipvsadm.convert])
@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text(convert: Convert, text: str) -> None:
    _check(convert, text)


@pytest.mark.parametrize(
    ("convert", "files"), [(keepalived.convert, KA_FILE), (ipvsadm.convert, IPV_FILE)]
)
def test_the_grammars_reach_the_converter(convert: Convert, files: Any) -> None:
    """Guards the tests above: a good share of examples must convert to services."""
    results: list[bool] = []

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(files)
    def sample(text: str) -> None:
        result = _check(convert, text)
        results.append(result is not None and bool(result.services))

    sample()
    assert sum(results) >= len(results) // 10, f"{sum(results)} of {len(results)}"
