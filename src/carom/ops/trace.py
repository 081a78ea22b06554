"""`carom trace`: sampled forwarding decisions of the data plane, as lines and
as pcap. tcpdump cannot see the frames XDP forwards (XDP_TX never reaches the
stack), so the program writes them itself (bpf/trace.h) while a trace runs.

This module is the pure part, shared by the daemon and the CLI: the filter
(`host`/`port` go into the kernel, the rest is applied to records), the record
in words (`TraceRecord`, built by the daemon from a ring-buffer record, sent to
the CLI as JSON), the printed line, and a pcap writer."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from carom import abi

VERDICTS = ("tx", "pass", "drop")
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
PROTO_NAMES = {n: p for p, n in PROTOCOLS.items()}
REASONS = {c.name.lower() for c in abi.VERDICT_REASONS}
PCAP_MAGIC_US = 0xA1B2C3D4  # classic pcap, microsecond timestamps
PCAP_LINKTYPE_ETHERNET = 1
FILTER_HELP = (
    "terms, all of which must hold (`and` between them is allowed): host ADDR, port N "
    "(both checked in the kernel, before sampling), real ADDR, verdict tx|pass|drop, "
    "reason NAME (a counter name such as tx_dsr), proto tcp|udp|icmp|icmpv6"
)


@dataclass(frozen=True)
class Filter:
    """What `carom trace` shows. host and port are the kernel's prefilter (a
    tuple with the address, or the port, at either end); the rest is checked
    on the records the kernel sampled."""

    host: abi.IPAddress | None = None
    port: int = 0  # 0: any
    real: abi.IPAddress | None = None
    verdict: str | None = None
    reason: str | None = None
    proto: str | None = None

    def kernel_args(self) -> dict[str, Any]:
        """The control-socket arguments of the prefilter."""
        out: dict[str, Any] = {}
        if self.host is not None:
            out["host"] = str(self.host)
        if self.port:
            out["port"] = self.port
        return out

    def matches(self, rec: TraceRecord) -> bool:
        if self.real is not None and rec.real != str(self.real):
            return False
        if self.verdict is not None and rec.verdict != self.verdict:
            return False
        if self.reason is not None and rec.reason != self.reason:
            return False
        return self.proto is None or rec.proto_name == self.proto


def _address(term: str, value: str) -> abi.IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"filter: {term} {value!r} is not an IPv4 or IPv6 address") from None


def parse_filter(words: list[str]) -> Filter:
    """`host 198.51.100.10 and port 80` -> Filter. ValueError says what is wrong."""
    terms = [w for w in words if w != "and"]
    if len(terms) % 2:
        raise ValueError(f"filter: {terms[-1]!r} needs a value; {FILTER_HELP}")
    seen: dict[str, str] = {}
    for term, value in zip(terms[::2], terms[1::2], strict=True):
        if term in seen:
            raise ValueError(f"filter: {term} given twice ({seen[term]}, {value}); give it once")
        seen[term] = value
    kw: dict[str, Any] = {}
    for term, value in seen.items():
        if term in ("host", "real"):
            kw[term] = _address(term, value)
        elif term == "port":
            if not value.isdigit() or not 1 <= int(value) <= 65535:
                raise ValueError(f"filter: port {value!r} is not a port number (1-65535)")
            kw["port"] = int(value)
        elif term == "verdict":
            if value not in VERDICTS:
                raise ValueError(f"filter: verdict {value!r}; use one of {', '.join(VERDICTS)}")
            kw["verdict"] = value
        elif term == "reason":
            if value not in REASONS:
                raise ValueError(
                    f"filter: reason {value!r} is no verdict reason; use a counter name of "
                    "`carom status` such as tx_dsr, pass_backup, drop_no_real"
                )
            kw["reason"] = value
        elif term == "proto":
            if value not in PROTOCOLS:
                raise ValueError(f"filter: proto {value!r}; use one of {', '.join(PROTOCOLS)}")
            kw["proto"] = value
        else:
            raise ValueError(f"filter: unknown term {term!r}; {FILTER_HELP}")
    return Filter(**kw)


@dataclass(frozen=True)
class TraceRecord:
    """One sampled decision, in words."""

    time_ns: int  # wall clock (ns since the epoch)
    ifindex: int  # the receiving interface
    reason: str  # the verdict's reason: a counter name (docs/datapath.md)
    verdict: str  # tx, pass or drop
    family: int  # 4 or 6
    proto: int  # IP protocol number
    src: str
    sport: int  # 0: no ports (ICMP, a fragment)
    dst: str
    dport: int
    svc_id: int | None  # None: decided before the service was known
    service: str | None  # its name, as in `carom status`
    real_id: int  # 0: none chosen
    real: str | None  # its address
    length: int  # the frame's length
    frame: bytes  # its first bytes as it left the program (after a DSR rewrite)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["frame"] = self.frame.hex()
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TraceRecord:
        fields = dict(d)
        fields["frame"] = bytes.fromhex(str(d["frame"]))
        return cls(**fields)


def from_event(
    ev: abi.TraceEvent,
    wall_offset_ns: int,
    services: Mapping[int, str],
    reals: Mapping[int, str],
) -> TraceRecord:
    """A trace_events record in words: `wall_offset_ns` turns its CLOCK_MONOTONIC
    time into wall-clock time; the maps name service and real ids."""
    key = ev.key
    family = int(key.family)
    reason = abi.Counter(int(ev.reason))
    svc = None if ev.svc_id == abi.TRACE_NO_SVC else int(ev.svc_id)
    return TraceRecord(
        time_ns=int(ev.ts_ns) + wall_offset_ns,
        ifindex=int(ev.ifindex),
        reason=reason.name.lower(),
        verdict=abi.verdict_of(reason).name.lower(),
        family=family,
        proto=int(key.proto),
        src=str(key.src.to_ip(family)),
        sport=abi.port_host(key.sport),
        dst=str(key.dst.to_ip(family)),
        dport=abi.port_host(key.dport),
        svc_id=svc,
        service=services.get(svc) if svc is not None else None,
        real_id=int(ev.real_id),
        real=reals.get(int(ev.real_id)) if ev.real_id else None,
        length=int(ev.len),
        frame=bytes(ev.data)[: min(int(ev.caplen), abi.TRACE_SNAP)],
    )


def _endpoint(addr: str, port: int, family: int) -> str:
    host = f"[{addr}]" if family == 6 and port else addr
    return f"{host}:{port}" if port else host


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"if{ifindex}"


def render(rec: TraceRecord) -> str:
    """One line: time, interface, protocol, tuple, verdict, reason, service, real."""
    t = time.localtime(rec.time_ns // 10**9)
    stamp = time.strftime("%H:%M:%S", t) + f".{rec.time_ns // 10**6 % 1000:03d}"
    tuple_ = (
        f"{_endpoint(rec.src, rec.sport, rec.family)} > {_endpoint(rec.dst, rec.dport, rec.family)}"
    )
    out = f"{stamp} {_ifname(rec.ifindex)} {rec.proto_name} {tuple_} {rec.verdict} {rec.reason}"
    if rec.svc_id is not None:
        out += f" service {rec.service or f'id {rec.svc_id}'}"
    if rec.real_id:
        out += f" real {rec.real or '?'} (id {rec.real_id})"
    return out


class PcapWriter:
    """Classic pcap (tcpdump -r, Wireshark): Ethernet frames, each cut to what the
    record carries, with its original length."""

    def __init__(self, out: BinaryIO, snaplen: int = abi.TRACE_SNAP) -> None:
        self.out = out
        out.write(struct.pack("=IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, 1))
        out.flush()

    def write(self, rec: TraceRecord) -> None:
        sec, ns = divmod(rec.time_ns, 10**9)
        self.out.write(struct.pack("=IIII", sec, ns // 1000, len(rec.frame), rec.length))
        self.out.write(rec.frame)
        self.out.flush()
