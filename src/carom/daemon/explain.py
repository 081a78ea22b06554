"""`carom explain`: where a flow goes and why, read from the live maps.

tcpdump cannot see frames that XDP forwards, so an operator needs the data
plane itself to answer "which real server gets this client, and why?". The
answer is not a third copy of the scheduler: the maps that concern the flow are
read into a model State (`read_state`), and the reference model
(carom.model.forward.decide, the twin of bpf/sched.h that the packet table holds
to the kernel) decides on a frame of that flow. This module only narrates the
decision. Nothing is written (syscall lookups do not refresh LRU entries), and
tests/packets/test_explain.py runs it over the packet table, with and without
the kernel maps."""

from __future__ import annotations

import copy
import ipaddress
import re
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from carom import abi
from carom.abi import Counter
from carom.bpf.loader import Dataplane
from carom.model.forward import LOOPBACK_IFINDEX, Decision, decide
from carom.model.state import Node, Real, Service, State
from carom.sched import maglev
from carom.sched.flowhash import flow_hash

_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d+)$")
_VERDICTS = {Counter.TX_DSR: "forward", Counter.PASS_LOCAL_REAL: "local"}
_WHY = {
    Counter.PASS_NOT_VIP: "{vip} is not a VIP here: the kernel gets the packet untouched",
    Counter.PASS_BACKUP: "this node is a backup (or a cluster node still starting): VIP "
    "traffic goes to its own stack, never scheduled",
    Counter.PASS_LEASE_EXPIRED: "this node is active but its daemon's lease has run out "
    "(daemon stopped, frozen or just starting): VIP traffic goes to its own stack, never "
    "scheduled",
    Counter.PASS_NO_SERVICE: "no service for port {port}/{proto} on {vip}: passed to this "
    "node's stack",
    Counter.DROP_AWAIT_ACTIVE: "this node may not schedule (a backup, a cluster node still "
    "starting, or its daemon's lease ran out) and its own stack would reset this flow (its "
    "connection entry names another real, or no director is known to be active): dropped, "
    "the client retransmits until an active director forwards it",
}


def parse_endpoint(text: str) -> tuple[abi.IPAddress, int]:
    """'192.0.2.1:80' or '[2001:db8::1]:80'."""
    m = _ENDPOINT.match(text.strip())
    if not m:
        raise ValueError(f"{text!r}: expected ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")
    try:
        addr = ipaddress.ip_address(m.group("v6") or m.group("v4"))
    except ValueError:
        raise ValueError(f"{text!r}: not an IP address") from None
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


@dataclass(frozen=True)
class Flow:
    """The flow to explain, as the first packet the director would see of it."""

    client: abi.IPAddress
    cport: int
    vip: abi.IPAddress
    vport: int
    proto: int  # 6 or 17
    syn: bool  # a TCP SYN (new connection) rather than a packet of an established one

    @classmethod
    def parse(cls, client: str, service: str, syn: bool = False) -> Flow:
        caddr, cport = parse_endpoint(client)
        vip, vport, proto = parse_service(service)
        if caddr.version != vip.version:
            raise ValueError("client and VIP must be the same address family")
        return cls(caddr, cport, vip, vport, abi.PROTOCOLS[proto], syn)

    @property
    def family(self) -> int:
        return int(abi.family_of(self.vip))

    def key(self, ports: bool = True) -> abi.FlowKey:
        return abi.FlowKey(
            src=abi.Addr.of(self.client),
            dst=abi.Addr.of(self.vip),
            sport=abi.port_be(self.cport) if ports else 0,
            dport=abi.port_be(self.vport) if ports else 0,
            proto=self.proto,
            family=self.family,
        )

    def frame(self, src_mac: bytes) -> bytes:
        """A minimal well-formed Ethernet frame of this flow."""
        if self.proto == 6:
            l4 = struct.pack("!HHIIBBHHH", self.cport, self.vport, 0, 0, 5 << 4, 0, 65535, 0, 0)
            l4 = l4[:13] + bytes([0x02 if self.syn else 0x10]) + l4[14:]
        else:
            l4 = struct.pack("!HHHH", self.cport, self.vport, 8, 0)
        if self.vip.version == 4:
            l3 = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0, 64, self.proto, 0)
            l3 += self.client.packed + self.vip.packed
            ethertype = 0x0800
        else:
            l3 = struct.pack("!IHBB", 6 << 28, len(l4), self.proto, 64)
            l3 += self.client.packed + self.vip.packed
            ethertype = 0x86DD
        return OUR_MAC + src_mac + struct.pack("!H", ethertype) + l3 + l4


# The destination MAC of the frames explain builds: the director's own, as far as
# the model is concerned (explain asks what happens to a flow that reached us).
OUR_MAC = b"\x02" + bytes(5)


@dataclass
class Explanation:
    verdict: str  # forward | local | pass | drop
    real: str | None  # address of the chosen real
    real_id: int
    path: str  # connection | pending | persistence | maglev | none
    steps: list[str] = field(default_factory=list)
    slot: int | None = None
    fingerprint: str | None = None
    new_connection: str | None = None  # what a SYN from this tuple would get
    # the flow's connection entry: "local" (this node's data plane created it),
    # "synced" (written by connection sync from a peer director), None: no entry
    entry: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _candidates(flow: Flow) -> list[abi.SvcKey]:
    """The service keys the data plane tries for this flow, in its order."""
    return [abi.svc_key(flow.vip, flow.proto, flow.vport), abi.svc_key(flow.vip, flow.proto, 0)]


def read_state(dp: Dataplane, flow: Flow) -> State:
    """The maps, as far as they concern `flow`, as a model State: every service
    and real, the Maglev rows of the services the flow can match, and the flow's
    own connection and persistence entries."""
    cfg = dp["node_cfg"].lookup(0)
    node = None
    if cfg is not None:
        node = Node(
            role=abi.Role(cfg.role),
            frag_pass=bool(cfg.flags & abi.CfgFlags.FRAG_PASS),
            maglev_size=cfg.maglev_size,
            tcp_idle_ns=cfg.tcp_idle_ns,
            udp_idle_ns=cfg.udp_idle_ns,
            lease_until_ns=int(dp["lease"].lookup(0) or 0),
            peer_macs=tuple(cfg.peer_mac_list()),
        )
    size = node.maglev_size if node else 0
    wanted = {k.to_bytes() for k in _candidates(flow)}
    state = State(node=node)
    entries = list(dp["services"].items())
    # a multi-port service has one entry per port, all with its id: each of
    # them gets the row, whichever port the flow uses
    rows: dict[int, np.ndarray] = {}
    for key, info in entries:
        if key.to_bytes() in wanted and size and int(info.id) not in rows:
            raw = dp["maglev"].read_range(info.id * size, size)
            rows[int(info.id)] = np.frombuffer(raw, dtype=np.uint32).copy()
    for key, info in entries:
        table = rows.get(int(info.id), np.zeros(0, dtype=np.uint32))
        state.services.append(
            Service(
                vip=key.vip.to_ip(key.family),
                proto=key.proto,
                port=abi.port_host(key.port),
                svc_id=info.id,
                table=table,
                persist_timeout_s=info.persist_timeout_s
                if info.flags & abi.SvcFlags.PERSIST
                else 0,
                down=_down_reals(dp, cfg, int(info.id))
                if key.to_bytes() in wanted
                and cfg is not None
                and info.flags & abi.SvcFlags.REAL_DOWN
                else frozenset(),
            )
        )
        if key.to_bytes() in wanted and info.flags & abi.SvcFlags.PERSIST:
            pkey = abi.PersistKey(
                client=abi.Addr.of(flow.client), svc_id=info.id, family=flow.family
            )
            pv = dp["persist_table"].lookup(pkey)
            if pv is not None:
                state.persist[pkey.to_bytes()] = pv
    for rid, info in dp["reals"].items():
        if info.family:
            state.reals[int(rid)] = Real(
                real_id=int(rid),
                address=info.addr.to_ip(info.family),
                mac=bytes(info.mac),
                local=bool(info.flags & abi.RealFlags.LOCAL),
                usable=not info.flags & abi.RealFlags.UNUSABLE,
                method=abi.Method(info.method),
            )
    conn = dp["conn_table"].lookup(flow.key())
    if conn is not None:
        state.conns[flow.key().to_bytes()] = conn
    # A flow seen once lives in its slot of the per-CPU `pending` cache: which
    # CPU is unknown here, so take this flow's newest entry from any of them.
    fkey = flow.key().to_bytes()
    slot = flow_hash(fkey) & (abi.PENDING_SLOTS - 1)
    mine = [v for v in dp["pending"].lookup(slot) or [] if v.real_id and bytes(v.key) == fkey]
    if mine:
        state.pending[slot] = max(mine, key=lambda v: int(v.seen_ns))
    return state


def _down_reals(dp: Dataplane, cfg: abi.NodeCfg, svc_id: int) -> frozenset[int]:
    """Real ids whose flows move for this service (its real_down row)."""
    words = int(cfg.real_down_words)
    raw = dp["real_down"].read_range(svc_id * words, words) if words else b""
    row = np.frombuffer(raw, dtype="<u8")
    return frozenset(
        int(w) * 64 + b for w in np.flatnonzero(row) for b in range(64) if int(row[w]) >> b & 1
    )


def explain(
    dp: Dataplane,
    client: str,
    service: str,
    syn: bool = False,
    expected_fingerprints: dict[int, str] | None = None,
) -> Explanation:
    """Explain the flow from the live maps."""
    flow = Flow.parse(client, service, syn)
    return explain_state(read_state(dp, flow), flow, time.monotonic_ns(), expected_fingerprints)


def _src_mac(state: State) -> bytes:
    """A source MAC that is no real's (a real's would be a forwarding loop) and no
    peer director's (its frames are never scheduled)."""
    macs = state.real_macs()
    peers = state.node.peer_macs if state.node is not None else ()
    for last in range(256):
        mac = b"\x02\x00\x00\x00\x00" + bytes([last])
        if mac + b"\0\0" not in macs and mac not in peers:
            return mac
    raise ValueError("no free source MAC")  # 256 reals with these MACs: not a real setup


def _decide(state: State, flow: Flow, now: int) -> Decision:
    """The flow as a frame that reached the director addressed to its own MAC."""
    mine = copy.deepcopy(state)
    mine.if_macs[LOOPBACK_IFINDEX] = OUR_MAC
    return decide(flow.frame(_src_mac(state)), mine, now, LOOPBACK_IFINDEX)


def explain_state(
    state: State, flow: Flow, now: int, expected_fingerprints: dict[int, str] | None = None
) -> Explanation:
    """The model's decision for `flow` on `state`, in words. Pure: `state` is
    left as it was."""
    d = _decide(state, flow, now)
    proto = "tcp" if flow.proto == 6 else "udp"
    steps: list[str] = []
    if d.reason in _WHY:
        why = _WHY[d.reason].format(vip=flow.vip, port=flow.vport, proto=proto)
        held = abi.verdict_of(d.reason) == abi.Verdict.DROP
        return Explanation("drop" if held else "pass", None, 0, "none", [why])

    services = state.service_map()
    svc = next(s for k in _candidates(flow) if (s := services.get(k.to_bytes())) is not None)
    where = (
        f"all ports of {flow.vip}/{proto}" if svc.port == 0 else f"{flow.vip}:{svc.port}/{proto}"
    )
    steps.append(f"service: {where} (id {svc.svc_id})")

    def desc(rid: int) -> str:
        real = state.reals.get(rid)
        if real is None:
            return f"real id {rid} is unknown"
        if not real.usable:
            return f"real {real.address} has no resolved MAC (unusable)"
        if real.local:
            return f"real {real.address} (this node: local stack)"
        return f"real {real.address} (MAC {abi.mac_str(real.mac)})"

    tally = d.counters
    conn = state.conns.get(flow.key().to_bytes())
    if conn is None:
        steps.append("no connection entry for this 5-tuple")
    else:
        age = (now - conn.last_seen_ns) / 1e9
        node = state.node
        idle = (node.tcp_idle_ns if flow.proto == 6 else node.udp_idle_ns) if node else 0
        if tally[Counter.SYN_RESCHEDULE]:
            steps.append(
                f"connection entry to real id {conn.real_id} exists, but a SYN starts a new "
                "connection: rescheduled"
            )
        elif tally[Counter.CONN_EXPIRED]:
            steps.append(f"connection entry idle for {age:.0f}s (> {idle / 1e9:.0f}s): rescheduled")
        elif tally[Counter.CONN_REAL_GONE]:
            steps.append(f"connection entry points at {desc(conn.real_id)}: rescheduled")
        elif tally[Counter.CONN_REAL_DOWN]:
            steps.append(
                f"connection entry points at {desc(conn.real_id)}, which is down for this "
                "service (its flows move): rescheduled"
            )
        else:
            origin = (
                "synced from a peer director"
                if conn.flags & abi.ConnFlags.SYNCED
                else "created by this node"
            )
            steps.append(
                f"existing connection entry ({origin}; last packet {age:.1f}s ago) -> "
                f"{desc(conn.real_id)}"
            )

    if tally[Counter.CONN_CONFIRMED]:
        steps.append(
            f"the flow was seen once before (its first packet, in the pending cache of the "
            f"CPU it arrived on) -> {desc(d.real_id)}; this packet confirms it into the "
            "connection table"
        )
        e = Explanation(
            _VERDICTS.get(d.reason, "drop"), _addr(state, d.real_id), d.real_id, "pending", steps
        )
        e.new_connection = _new_connection(state, flow, now)
        return e

    if tally[Counter.CONN_HIT]:
        e = Explanation(
            _VERDICTS.get(d.reason, "drop"), _addr(state, d.real_id), d.real_id, "connection", steps
        )
        e.new_connection = _new_connection(state, flow, now)
        assert conn is not None
        e.entry = "synced" if conn.flags & abi.ConnFlags.SYNCED else "local"
        return e

    slot = fp = None
    if svc.persist_timeout_s:
        pv = state.persist.get(
            abi.PersistKey(
                client=abi.Addr.of(flow.client), svc_id=svc.svc_id, family=flow.family
            ).to_bytes()
        )
        if tally[Counter.PERSIST_HIT] and pv is not None:
            steps.append(
                f"persistence entry for client {flow.client} ({(now - pv.last_seen_ns) / 1e9:.0f}s "
                f"old, timeout {svc.persist_timeout_s}s) -> {desc(d.real_id)}"
            )
        elif pv is not None:
            steps.append("persistence entry expired or its real is unusable")
    if not tally[Counter.PERSIST_HIT] and state.node is not None and len(svc.table):
        size = state.node.maglev_size
        h = flow_hash(bytes(flow.key(ports=not svc.persist_timeout_s)))
        slot = h % size
        fp = maglev.fingerprint(svc.table)
        rid = int(svc.table[slot])
        what = "client address" if svc.persist_timeout_s else "5-tuple"
        steps.append(
            f"Maglev: hash of the {what} = {h:#010x}, slot {slot} of {size} in table {fp} -> "
            f"{desc(rid) if rid else 'empty slot (no reals)'}"
        )
        exp = (expected_fingerprints or {}).get(svc.svc_id)
        if exp and exp != fp:
            steps.append(
                f"WARNING: the table in the map ({fp}) differs from the one the config "
                f"gives ({exp})"
            )
    path = "persistence" if tally[Counter.PERSIST_HIT] else "maglev"
    if d.reason not in _VERDICTS:
        return Explanation("drop", None, 0, "none", steps, slot, fp)
    return Explanation(
        _VERDICTS[d.reason],
        _addr(state, d.real_id),
        d.real_id,
        path,
        steps,
        slot,
        fp,
        desc(d.real_id),
    )


def _addr(state: State, rid: int) -> str | None:
    real = state.reals.get(rid)
    return str(real.address) if real is not None else None


def _new_connection(state: State, flow: Flow, now: int) -> str:
    """What a new connection from the same tuple would get (the model again, on a SYN)."""
    if flow.proto == 6:
        d = _decide(state, Flow(flow.client, flow.cport, flow.vip, flow.vport, 6, True), now)
    else:  # UDP has no SYN: ask again without the entry
        fresh = copy.deepcopy(state)
        fkey = flow.key().to_bytes()
        fresh.conns.pop(fkey, None)  # the flow may be known only as pending
        fresh.pending = {i: v for i, v in fresh.pending.items() if bytes(v.key) != fkey}
        d = _decide(fresh, flow, now)
    if d.reason not in _VERDICTS:
        return "dropped: no usable real"
    real = state.reals[d.real_id]
    if real.local:
        return f"real {real.address} (this node: local stack)"
    return f"real {real.address} (MAC {abi.mac_str(real.mac)})"


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
