"""carom trace's pure part (carom.ops.trace): the filter, a ring record in words,
the printed line, the pcap file (read back by scapy)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from carom import abi
from carom.ops import trace

CLIENT, VIP, REAL = "198.51.100.10", "192.0.2.100", "192.0.2.12"


def test_filter_terms() -> None:
    f = trace.parse_filter(["host", CLIENT, "and", "port", "80", "verdict", "tx"])
    assert f.kernel_args() == {"host": CLIENT, "port": 80}
    assert f.verdict == "tx" and f.real is None
    assert trace.parse_filter([]) == trace.Filter()
    assert trace.parse_filter(["real", "2001:db8::1"]).real == ipaddress.ip_address("2001:db8::1")


@pytest.mark.parametrize(
    ("words", "error"),
    [
        (["hots", "x"], "unknown term 'hots'"),
        (["port"], "'port' needs a value"),
        (["port", "http"], "not a port number"),
        (["port", "0"], "not a port number"),
        (["host", "example.com"], "not an IPv4 or IPv6 address"),
        (["verdict", "forward"], "verdict 'forward'"),
        (["reason", "tx"], "no verdict reason"),
        (["port", "80", "port", "81"], "given twice"),
    ],
)
def test_filter_errors_say_what_is_wrong(words: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        trace.parse_filter(words)


def _event(frame: bytes, reason: abi.Counter, svc: int, real: int, ipv6: bool = False) -> bytes:
    src = ipaddress.ip_address("2001:db8:1::10" if ipv6 else CLIENT)
    dst = ipaddress.ip_address("2001:db8:2::100" if ipv6 else VIP)
    ev = abi.TraceEvent(
        ts_ns=5_000_000_000,
        key=abi.FlowKey(
            src=abi.Addr.of(src),
            dst=abi.Addr.of(dst),
            sport=abi.port_be(40000),
            dport=abi.port_be(80),
            proto=6,
            family=6 if ipv6 else 4,
        ),
        svc_id=svc,
        real_id=real,
        ifindex=1,
        reason=int(reason),
        len=len(frame),
        caplen=min(len(frame), abi.TRACE_SNAP),
    )
    ev.data[: ev.caplen] = list(frame[: ev.caplen])
    return bytes(ev)


def test_a_record_in_words_and_back() -> None:
    frame = bytes(range(200))
    raw = _event(frame, abi.Counter.TX_DSR, 3, 7)
    rec = trace.from_event(abi.TraceEvent.from_buffer_copy(raw), 10, {3: "web"}, {7: REAL})
    assert (rec.time_ns, rec.verdict, rec.reason) == (5_000_000_010, "tx", "tx_dsr")
    assert (rec.src, rec.sport, rec.dst, rec.dport, rec.proto_name) == (
        CLIENT,
        40000,
        VIP,
        80,
        "tcp",
    )
    assert (rec.service, rec.real, rec.length, rec.frame) == ("web", REAL, 200, frame[:128])
    assert trace.TraceRecord.from_json(rec.to_json()) == rec
    line = trace.render(rec)
    assert f" tcp {CLIENT}:40000 > {VIP}:80 tx tx_dsr service web real {REAL} (id 7)" in line
    nosvc = trace.from_event(
        abi.TraceEvent.from_buffer_copy(
            _event(frame, abi.Counter.PASS_BACKUP, 0xFFFFFFFF, 0, True)
        ),
        0,
        {},
        {},
    )
    assert nosvc.svc_id is None and nosvc.verdict == "pass"
    assert "[2001:db8:1::10]:40000 > [2001:db8:2::100]:80 pass pass_backup" in trace.render(nosvc)
    assert "service" not in trace.render(nosvc) and "real" not in trace.render(nosvc)
    assert trace.Filter(verdict="pass").matches(nosvc) and not trace.Filter(verdict="tx").matches(
        nosvc
    )
    assert trace.Filter(real=ipaddress.ip_address(REAL)).matches(rec)
    assert not trace.Filter(proto="udp").matches(rec)


def test_pcap_reads_back(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap

    pkt = Ether(dst="02:00:00:00:00:12", src="02:00:00:00:00:01") / IP(src=CLIENT, dst=VIP)
    frame = bytes(pkt / TCP(sport=40000, dport=80, flags="A") / (b"x" * 200))
    rec = trace.from_event(
        abi.TraceEvent.from_buffer_copy(_event(frame, abi.Counter.TX_DSR, 0, 1)), 0, {}, {}
    )
    path = tmp_path / "t.pcap"
    with path.open("wb") as f:
        w = trace.PcapWriter(f)
        w.write(rec)
        w.write(rec)
    frames = rdpcap(str(path))
    assert len(frames) == 2
    assert bytes(frames[0]) == frame[:128] and frames[0].wirelen == len(frame)
    assert frames[0][TCP].dport == 80 and frames[0][Ether].dst == "02:00:00:00:00:12"
    assert float(frames[0].time) == 5.0


def test_trace_request_checked_before_anything_is_switched_on() -> None:
    from carom.daemon.trace_task import MAX_ONE_IN, setting_of

    s = setting_of({"command": "trace", "sample": 100, "host": CLIENT, "port": 80})
    assert (s.one_in, str(s.host), s.port) == (100, CLIENT, 80)
    assert setting_of({"command": "trace"}).one_in == 1
    for bad, error in (
        ({"sample": 0}, "sample 0"),
        ({"sample": MAX_ONE_IN + 1}, "one decision in N"),
        ({"port": 70000}, "not a port number"),
        ({"host": "web"}, "not an IP address"),
    ):
        with pytest.raises(ValueError, match=error):
            setting_of({"command": "trace", **bad})
