"""`carom explain`: where a flow goes and why, read from the live maps.

tcpdump cannot see frames that XDP forwards, so an operator needs the data
plane itself to answer "which real server gets this client, and why?". This
reads the same maps in the same order as bpf/sched.h, and changes nothing
(syscall lookups do not refresh LRU entries)."""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from carom import abi
from carom.bpf.loader import Dataplane
from carom.sched import maglev
from carom.sched.flowhash import flow_hash

_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d+)$")


def parse_endpoint(text: str) -> tuple[abi.IPAddress, int]:
    """'192.0.2.1:80' or '[2001:db8::1]:80'."""
    m = _ENDPOINT.match(text.strip())
    if not m:
        raise ValueError(f"{text!r}: expected ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")
    addr = ipaddress.ip_address(m.group("v6") or m.group("v4"))
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port must be 1..65535")
    return addr, port


def parse_service(text: str) -> tuple[abi.IPAddress, int, str]:
    """'VIP:PORT/PROTO' (PROTO defaults to tcp)."""
    endpoint, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in abi.PROTOCOLS:
        raise ValueError(f"{text!r}: protocol must be tcp or udp")
    addr, port = parse_endpoint(endpoint)
    return addr, port, proto


@dataclass
class Explanation:
    verdict: str  # forward | local | pass | drop
    real: str | None  # address of the chosen real
    real_id: int
    path: str  # connection | persistence | maglev | none
    steps: list[str] = field(default_factory=list)
    slot: int | None = None
    fingerprint: str | None = None
    new_connection: str | None = None  # what a SYN from this tuple would get

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain(
    dp: Dataplane,
    client: str,
    service: str,
    syn: bool = False,
    expected_fingerprints: dict[int, str] | None = None,
) -> Explanation:
    caddr, cport = parse_endpoint(client)
    vip, vport, proto_name = parse_service(service)
    if caddr.version != vip.version:
        raise ValueError("client and VIP must be the same address family")
    proto = abi.PROTOCOLS[proto_name]
    fam = int(abi.family_of(vip))
    steps: list[str] = []
    cfg = dp["node_cfg"].lookup(0)
    if dp["vip_addrs"].lookup(abi.vip_key(vip)) is None:
        return Explanation(
            "pass",
            None,
            0,
            "none",
            [f"{vip} is not a VIP here: the kernel gets the packet untouched"],
        )
    if cfg is None or cfg.role != abi.Role.ACTIVE:
        return Explanation(
            "pass",
            None,
            0,
            "none",
            ["this node is a backup: VIP traffic goes to its own stack, never scheduled"],
        )
    key = abi.svc_key(vip, proto, vport)
    svc = dp["services"].lookup(key)
    if svc is None:
        key.port = 0
        svc = dp["services"].lookup(key)
        if svc is not None:
            steps.append(f"service: all ports of {vip}/{proto_name} (id {svc.id})")
    else:
        steps.append(f"service: {vip}:{vport}/{proto_name} (id {svc.id})")
    if svc is None:
        return Explanation(
            "pass",
            None,
            0,
            "none",
            [f"no service for port {vport}/{proto_name} on {vip}: passed to this node's stack"],
        )

    flow = abi.FlowKey(
        src=abi.Addr.of(caddr),
        dst=abi.Addr.of(vip),
        sport=abi.port_be(cport),
        dport=abi.port_be(vport),
        proto=proto,
        family=fam,
    )
    now = time.monotonic_ns()
    idle = cfg.tcp_idle_ns if proto == 6 else cfg.udp_idle_ns

    def real_desc(rid: int) -> tuple[str | None, str]:
        info = dp["reals"].lookup(rid) if rid else None
        if info is None or not info.family:
            return None, f"real id {rid} is unknown"
        addr = str(info.addr.to_ip(info.family))
        if info.flags & abi.RealFlags.UNUSABLE:
            return None, f"real {addr} has no resolved MAC (unusable)"
        if info.flags & abi.RealFlags.LOCAL:
            return addr, f"real {addr} (this node: local stack)"
        return addr, f"real {addr} (MAC {abi.mac_str(bytes(info.mac))})"

    def verdict_for(rid: int) -> str:
        info = dp["reals"].lookup(rid)
        return "local" if info is not None and info.flags & abi.RealFlags.LOCAL else "forward"

    persistent = bool(svc.flags & abi.SvcFlags.PERSIST)
    pkey = abi.PersistKey(client=abi.Addr.of(caddr), svc_id=svc.id, family=fam)
    result: Explanation | None = None

    conn = dp["conn_table"].lookup(flow)
    if conn is not None:
        age = (now - conn.last_seen_ns) / 1e9
        addr, desc = real_desc(conn.real_id)
        if syn:
            steps.append(
                f"connection entry to real id {conn.real_id} exists, but a SYN "
                "starts a new connection: rescheduled"
            )
        elif idle and now - conn.last_seen_ns > idle:
            steps.append(f"connection entry idle for {age:.0f}s (> {idle / 1e9:.0f}s): rescheduled")
        elif addr is None:
            steps.append(f"connection entry points at {desc}: rescheduled")
        else:
            steps.append(f"existing connection entry (last packet {age:.1f}s ago) -> {desc}")
            result = Explanation(verdict_for(conn.real_id), addr, conn.real_id, "connection", steps)
    else:
        steps.append("no connection entry for this 5-tuple")

    # What a new connection gets (also the answer when there is no usable entry).
    new_steps: list[str] = []
    rid = 0
    path = "maglev"
    slot = None
    fp = None
    if persistent:
        pv = dp["persist_table"].lookup(pkey)
        if pv is not None and now - pv.last_seen_ns <= svc.persist_timeout_s * 10**9:
            addr, desc = real_desc(pv.real_id)
            if addr is not None:
                rid, path = pv.real_id, "persistence"
                new_steps.append(
                    f"persistence entry for client {caddr} "
                    f"({(now - pv.last_seen_ns) / 1e9:.0f}s old, timeout "
                    f"{svc.persist_timeout_s}s) -> {desc}"
                )
        elif pv is not None:
            new_steps.append("persistence entry expired")
    if not rid:
        hkey = abi.FlowKey.from_buffer_copy(bytes(flow))
        if persistent:
            hkey.sport = 0
            hkey.dport = 0
        size = cfg.maglev_size
        h = flow_hash(bytes(hkey))
        slot = h % size
        row = np.frombuffer(dp["maglev"].read_range(svc.id * size, size), dtype=np.uint32)
        fp = maglev.fingerprint(row)
        rid = int(row[slot])
        addr, desc = real_desc(rid)
        what = "client address" if persistent else "5-tuple"
        new_steps.append(
            f"Maglev: hash of the {what} = {h:#010x}, slot {slot} of {size} in "
            f"table {fp} -> {desc if rid else 'empty slot (no reals)'}"
        )
        exp = (expected_fingerprints or {}).get(int(svc.id))
        if exp and exp != fp:
            new_steps.append(
                f"WARNING: the table in the map ({fp}) differs from the one "
                f"the config gives ({exp})"
            )
        if addr is None:
            rid = 0
    new_addr, new_desc = real_desc(rid) if rid else (None, "dropped: no usable real")

    if result is not None:
        result.new_connection = new_desc
        return result
    steps.extend(new_steps)
    if not rid:
        return Explanation("drop", None, 0, "none", steps, slot, fp)
    return Explanation(verdict_for(rid), new_addr, rid, path, steps, slot, fp, new_desc)


def render(e: Explanation, client: str, service: str) -> str:
    lines = [f"flow {client} -> {service}"]
    lines += [f"  {s}" for s in e.steps]
    if e.verdict == "forward":
        lines.append(f"=> forwarded (DSR) to {e.real} via {e.path}")
    elif e.verdict == "local":
        lines.append(f"=> delivered to this node's own stack ({e.real}) via {e.path}")
    elif e.verdict == "pass":
        lines.append("=> passed to the kernel")
    else:
        lines.append("=> dropped")
    if e.path == "connection" and e.new_connection:
        lines.append(f"   (a new connection from this tuple would go to {e.new_connection})")
    return "\n".join(lines)
