"""The reference model: the forwarding decision of bpf/carom.bpf.c in Python.

It is the spec and the test oracle. Every branch here has its twin in the C
headers named in the comments; the shared packet table and the property tests
run both and require the same verdict, output frame, counters and table
changes. Keep the two in the same order: reviewers read them side by side."""

from __future__ import annotations

import struct
from collections import Counter as Tally
from dataclasses import dataclass, field

from carom import abi
from carom.abi import Counter
from carom.model import icmp, neighbour
from carom.model.state import Node, Real, Service, State
from carom.sched.flowhash import flow_hash

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options
IPPROTO_FRAGMENT = 44
MAX_IPV6_EXT_HDRS = 4
IPV6_EXT_OFF_LIMIT = 14 + 40 + 512
NSEC_PER_SEC = 10**9
LAST_SEEN_GRANULARITY_NS = NSEC_PER_SEC
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
TCP_SYN, TCP_ACK = 0x02, 0x10
ETH_P_ARP = 0x0806
# BPF_PROG_TEST_RUN runs the program on the loopback device's receive queue.
LOOPBACK_IFINDEX = 1
# How the real was chosen (bpf/stats.h CAROM_VIA_*): the per-service and per-real
# new_flows / conn_hits counters
VIA_OTHER, VIA_CONN_HIT, VIA_NEW = 0, 1, 2


@dataclass
class Decision:
    """What the program did with one frame."""

    verdict: abi.Verdict
    reason: Counter  # the verdict's reason counter
    frame: bytes  # the frame as it leaves (unchanged unless TX)
    counters: Tally[Counter] = field(default_factory=Tally)  # stats increments
    svc_traffic: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (pkts, bytes)
    real_traffic: dict[int, tuple[int, int]] = field(default_factory=dict)
    real_id: int = 0  # chosen real, 0 if none
    # conn_events records written, in order (conn_events.h)
    events: list[abi.ConnEventRecord] = field(default_factory=list)
    # (new_flows, conn_hits) increments of svc_stats / real_stats, when not (0, 0)
    svc_flows: dict[int, tuple[int, int]] = field(default_factory=dict)
    real_flows: dict[int, tuple[int, int]] = field(default_factory=dict)
    # the trace_events record written (trace.h), if tracing is on and sampled it
    trace: abi.TraceEvent | None = None
    # what trace.h sees: the packet once node_cfg was read, its service and real
    traced: _Packet | None = None
    trace_svc: int = abi.TRACE_NO_SVC
    trace_real: int = 0


class _Verdict(Exception):
    def __init__(self, reason: Counter) -> None:
        self.reason = reason


@dataclass
class _Packet:
    family: abi.Family
    src: bytes  # 16 bytes, IPv4 left-aligned
    dst: bytes
    l4_proto: int
    l4_off: int
    l4_end: int
    fragment: bool = False
    ttl: int = 0  # IPv4 TTL / IPv6 hop limit
    sport: int = 0  # network order as a little-endian u16 (the key's raw bytes)
    dport: int = 0
    tcp_flags: int = 0

    def flow_key(self, sport: int | None = None, dport: int | None = None) -> bytes:
        return (
            self.src
            + self.dst
            + struct.pack(
                "<HHBBxx",
                self.sport if sport is None else sport,
                self.dport if dport is None else dport,
                self.l4_proto,
                int(self.family),
            )
        )


def _u16(frame: bytes, off: int) -> int:
    return int.from_bytes(frame[off : off + 2], "big")


def _parse_ipv4(frame: bytes) -> _Packet:  # parse.h parse_ipv4
    n = len(frame)
    if n < ETH_HLEN + 20:
        raise _Verdict(Counter.DROP_TRUNC_L3)
    if frame[ETH_HLEN] >> 4 != 4:
        raise _Verdict(Counter.DROP_BAD_L3)
    ihl = frame[ETH_HLEN] & 0xF
    if ihl < 5:
        raise _Verdict(Counter.DROP_BAD_IHL)
    hlen = ihl * 4
    if ETH_HLEN + hlen > n:
        raise _Verdict(Counter.DROP_TRUNC_L3)
    tot = _u16(frame, ETH_HLEN + 2)
    if tot < hlen:
        raise _Verdict(Counter.DROP_BAD_L3)
    if ETH_HLEN + tot > n:
        raise _Verdict(Counter.DROP_TRUNC_L3)
    return _Packet(
        family=abi.Family.IPV4,
        src=frame[26:30] + bytes(12),
        dst=frame[30:34] + bytes(12),
        l4_proto=frame[ETH_HLEN + 9],
        l4_off=ETH_HLEN + hlen,
        l4_end=ETH_HLEN + tot,
        fragment=(_u16(frame, ETH_HLEN + 6) & 0x3FFF) != 0,
        ttl=frame[ETH_HLEN + 8],
    )


def _parse_ipv6(frame: bytes) -> _Packet:  # parse.h parse_ipv6
    n = len(frame)
    if n < ETH_HLEN + 40:
        raise _Verdict(Counter.DROP_TRUNC_L3)
    if frame[ETH_HLEN] >> 4 != 6:
        raise _Verdict(Counter.DROP_BAD_L3)
    plen = _u16(frame, ETH_HLEN + 4)
    if ETH_HLEN + 40 + plen > n:
        raise _Verdict(Counter.DROP_TRUNC_L3)
    return _Packet(
        family=abi.Family.IPV6,
        src=frame[22:38],
        dst=frame[38:54],
        l4_proto=frame[ETH_HLEN + 6],
        l4_off=ETH_HLEN + 40,
        l4_end=ETH_HLEN + 40 + plen,
        ttl=frame[ETH_HLEN + 7],
    )


def _skip_ipv6_ext(frame: bytes, p: _Packet) -> None:  # parse.h skip_ipv6_ext
    off, nxt, n = p.l4_off, p.l4_proto, len(frame)
    for _ in range(MAX_IPV6_EXT_HDRS):
        if off > IPV6_EXT_OFF_LIMIT:
            raise _Verdict(Counter.DROP_IPV6_EXT)
        if nxt in IPV6_EXT:
            if off + 4 > n or off + 4 > p.l4_end:
                raise _Verdict(Counter.DROP_TRUNC_L3)
            nxt, off = frame[off], off + (frame[off + 1] + 1) * 8
        elif nxt == IPPROTO_FRAGMENT:
            if off + 8 > n or off + 8 > p.l4_end:
                raise _Verdict(Counter.DROP_TRUNC_L3)
            frag_off = _u16(frame, off + 2)
            if frag_off & (0xFFF8 | 0x0001):
                p.fragment = True
            nxt, off = frame[off], off + 8
            if frag_off & 0xFFF8:  # non-first fragment: payload follows, not headers
                p.l4_off, p.l4_proto = off, nxt
                return
        else:
            break
    if nxt in IPV6_EXT or nxt == IPPROTO_FRAGMENT:
        raise _Verdict(Counter.DROP_IPV6_EXT)
    if off > IPV6_EXT_OFF_LIMIT:
        raise _Verdict(Counter.DROP_IPV6_EXT)
    if off > p.l4_end:
        raise _Verdict(Counter.DROP_TRUNC_L3)
    p.l4_off, p.l4_proto = off, nxt


def _parse_l4(frame: bytes, p: _Packet) -> None:  # parse.h parse_l4
    off, n = p.l4_off, len(frame)
    if off > IPV6_EXT_OFF_LIMIT:
        raise _Verdict(Counter.DROP_IPV6_EXT)
    if p.l4_proto == IPPROTO_TCP:
        if off + 20 > n or off + 20 > p.l4_end:
            raise _Verdict(Counter.DROP_TRUNC_L4)
        doff = (frame[off + 12] >> 4) * 4
        if doff < 20:
            raise _Verdict(Counter.DROP_BAD_L4)
        if off + doff > p.l4_end:
            raise _Verdict(Counter.DROP_TRUNC_L4)
        p.tcp_flags = frame[off + 13]
    else:
        if off + 8 > n or off + 8 > p.l4_end:
            raise _Verdict(Counter.DROP_TRUNC_L4)
        ulen = _u16(frame, off + 4)
        if ulen < 8:
            raise _Verdict(Counter.DROP_BAD_L4)
        if off + ulen > p.l4_end:
            raise _Verdict(Counter.DROP_TRUNC_L4)
    # ports stay in network order, as the C key holds them
    p.sport = int.from_bytes(frame[off : off + 2], "little")
    p.dport = int.from_bytes(frame[off + 2 : off + 4], "little")


def _usable(state: State, real_id: int) -> Real | None:  # sched.h usable_real
    if not real_id:
        return None
    real = state.reals.get(real_id)
    if real is None or not real.usable:
        return None
    return real


def _persist_key(p: _Packet, svc: Service) -> bytes:
    return p.src + struct.pack("<IBxxx", svc.svc_id, int(p.family))


def _age(now: int, then: int) -> int:  # sched.h age_of: a newer reading is age 0
    return now - then if now > then else 0


def _looped(p: _Packet, first_ttl: int) -> bool:  # sched.h looped
    return first_ttl != 0 and p.ttl < first_ttl


def _choose(  # sched.h choose
    state: State, p: _Packet, svc: Service, fhash: int, now: int, tally: Tally[Counter]
) -> tuple[int, Real]:
    assert state.node is not None
    if svc.persist_timeout_s > 0:
        pv = state.persist.get(_persist_key(p, svc))
        if pv is not None and _age(now, pv.last_seen_ns) <= svc.persist_timeout_s * NSEC_PER_SEC:
            real = _usable(state, pv.real_id)
            if real is not None and pv.real_id not in svc.down:
                pv.last_seen_ns = now
                tally[Counter.PERSIST_HIT] += 1
                return pv.real_id, real
        fhash = flow_hash(p.flow_key(sport=0, dport=0))
    size = state.node.maglev_size
    if not size:
        raise _Verdict(Counter.DROP_NO_REAL)
    idx = (svc.svc_id * size + fhash % size) & U32
    row, slot = divmod(idx, size)
    table = next((s.table for s in state.services if s.svc_id == row), None)
    rid = int(table[slot]) if table is not None and slot < len(table) else 0
    real = _usable(state, rid)
    if real is None:
        raise _Verdict(Counter.DROP_NO_REAL)
    tally[Counter.NEW_FLOW] += 1
    return rid, real


def _event(  # conn_events.h conn_event
    events: list[abi.ConnEventRecord], key: bytes, cv: abi.ConnVal, kind: abi.ConnEventKind
) -> None:
    events.append(
        abi.ConnEventRecord(
            key=abi.FlowKey.from_buffer_copy(key),
            real_id=cv.real_id,
            flags=cv.flags,
            kind=int(kind),
            ttl=cv.ttl,
        )
    )


def _confirm(  # sched.h confirm
    state: State,
    p: _Packet,
    svc: Service,
    pend: abi.PendingConn,
    now: int,
    tally: Tally[Counter],
    events: list[abi.ConnEventRecord],
) -> None:
    cv = abi.ConnVal(real_id=pend.real_id, flags=0, ttl=pend.ttl, last_seen_ns=now)
    state.conns[p.flow_key()] = cv
    _event(events, p.flow_key(), cv, abi.ConnEventKind.NEW)
    if svc.persist_timeout_s > 0:
        pk = _persist_key(p, svc)
        pv = state.persist.get(pk)
        if pv is not None and pv.real_id == pend.real_id:
            pv.last_seen_ns = now
        else:
            state.persist[pk] = abi.PersistVal(real_id=pend.real_id, last_seen_ns=now)
    tally[Counter.CONN_CONFIRMED] += 1


def _schedule(  # sched.h schedule
    state: State,
    p: _Packet,
    svc: Service,
    src_mac: bytes,
    now: int,
    tally: Tally[Counter],
    events: list[abi.ConnEventRecord],
) -> tuple[int, Real, int]:
    assert state.node is not None
    node = state.node
    syn = p.l4_proto == IPPROTO_TCP and (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN
    idle = node.tcp_idle_ns if p.l4_proto == IPPROTO_TCP else node.udp_idle_ns
    fkey = p.flow_key()
    from_real = src_mac + b"\0\0" in state.real_macs()  # sched.h from_real

    conn = state.conns.get(fkey)
    if conn is not None:
        if _looped(p, conn.ttl):
            raise _Verdict(Counter.DROP_LOOP)
        if syn:
            tally[Counter.SYN_RESCHEDULE] += 1
        elif idle and _age(now, conn.last_seen_ns) > idle:
            tally[Counter.CONN_EXPIRED] += 1
        else:
            real = _usable(state, conn.real_id)
            if real is not None and conn.real_id in svc.down:  # real_state.h
                tally[Counter.CONN_REAL_DOWN] += 1
            elif real is not None:
                tally[Counter.CONN_HIT] += 1
                if _age(now, conn.last_seen_ns) > LAST_SEEN_GRANULARITY_NS:
                    conn.last_seen_ns = now
                    if svc.persist_timeout_s > 0:
                        pv = state.persist.get(_persist_key(p, svc))
                        if pv is not None and pv.real_id == conn.real_id:
                            pv.last_seen_ns = now
                return conn.real_id, real, VIA_CONN_HIT
            else:
                tally[Counter.CONN_REAL_GONE] += 1
        # rescheduled in place: this node's decision now, no longer a synced one
        if from_real:
            raise _Verdict(Counter.DROP_LOOP)
        rid, real = _choose(state, p, svc, flow_hash(fkey), now, tally)
        conn.real_id, conn.flags, conn.ttl, conn.last_seen_ns = rid, 0, p.ttl, now
        _event(events, fkey, conn, abi.ConnEventKind.REPOINT)
        return rid, real, VIA_NEW

    fhash = flow_hash(fkey)
    pslot = fhash & (abi.PENDING_SLOTS - 1)
    pend = state.pending.get(pslot)
    if (
        pend is not None
        and pend.real_id
        and bytes(pend.key) == fkey
        and (not idle or _age(now, pend.seen_ns) <= idle)
    ):
        if _looped(p, pend.ttl):
            raise _Verdict(Counter.DROP_LOOP)
        real = _usable(state, pend.real_id)
        if not syn and real is not None and pend.real_id not in svc.down:
            _confirm(state, p, svc, pend, now, tally, events)
            return pend.real_id, real, VIA_OTHER

    if from_real:
        raise _Verdict(Counter.DROP_LOOP)
    rid, real = _choose(state, p, svc, fhash, now, tally)
    state.pending[pslot] = abi.PendingConn(
        key=abi.FlowKey.from_buffer_copy(fkey), real_id=rid, ttl=p.ttl, seen_ns=now
    )
    return rid, real, VIA_NEW


class _Answer(_Verdict):
    """A verdict that sends a rewritten frame back out (ARP/NDP answers)."""

    def __init__(self, reason: Counter, frame: bytes) -> None:
        super().__init__(reason)
        self.frame = frame


def _answer(result: tuple[Counter, bytes]) -> _Verdict:
    reason, frame = result
    return _Answer(reason, frame) if abi.verdict_of(reason) == abi.Verdict.TX else _Verdict(reason)


def _frame_checks(frame: bytes, state: State, ifindex: int) -> None:
    """Ethernet checks before forwarding a VIP frame (carom.bpf.c, ifmac.h). The
    loop check by source MAC is the scheduler's, for new flows (sched.h)."""
    if frame[0] & 1:
        raise _Verdict(Counter.DROP_GROUP_MAC)
    own = state.if_macs.get(ifindex)  # ifmac.h addressed_to_us
    if own is None:
        raise _Verdict(Counter.PASS_NO_IF_MAC)
    if frame[0:6] != own:
        raise _Verdict(Counter.PASS_NOT_OUR_MAC)


def _icmp_error_forward(  # icmp.h icmp_error_forward
    frame: bytes, state: State, p: _Packet, ifindex: int, result: Decision
) -> None:
    fkey = icmp.quoted_flow(frame, p.family, p.dst, p.l4_off, p.l4_end)
    if isinstance(fkey, Counter):
        raise _Verdict(fkey)
    svc = icmp.service_of(state, fkey)
    if svc is None:
        raise _Verdict(Counter.PASS_ICMP_UNMATCHED)
    _frame_checks(frame, state, ifindex)
    if frame[6:12] + b"\0\0" in state.real_macs():  # icmp.h: from a real is a loop
        raise _Verdict(Counter.DROP_LOOP)
    found = icmp.quoted_real(state, fkey, svc)
    if found is None:
        raise _Verdict(Counter.PASS_ICMP_UNMATCHED)
    rid, real = found
    result.real_id = rid
    result.svc_traffic[svc.svc_id] = (1, len(frame))
    result.real_traffic[rid] = (1, len(frame))
    if real.local:
        raise _Verdict(Counter.PASS_LOCAL_REAL)
    if real.method != abi.Method.DSR:
        raise _Verdict(Counter.DROP_UNSUPPORTED)
    raise _Answer(Counter.TX_ICMP_ERROR, real.mac + frame[0:6] + frame[12:])


def decide(frame: bytes, state: State, now_ns: int, ifindex: int = LOOPBACK_IFINDEX) -> Decision:
    """Run one frame, received on `ifindex`, through the model.

    Mutates state.conns and state.persist."""
    tally: Tally[Counter] = Tally()
    tally[Counter.RX] += 1
    result = Decision(verdict=abi.Verdict.PASS, reason=Counter.RX, frame=frame, counters=tally)
    try:
        _decide(frame, state, now_ns, ifindex, result)
    except _Answer as a:
        result.reason = a.reason
        result.frame = a.frame
    except _Verdict as v:
        result.reason = v.reason
    result.verdict = abi.verdict_of(result.reason)
    tally[result.reason] += 1
    if result.traced is not None and state.node is not None and state.node.trace_one_in:
        _trace(frame, state, ifindex, result)
    return result


def _trace_key(frame: bytes, p: _Packet) -> bytes:  # trace.h trace_key
    key = p.flow_key()
    if (
        p.sport
        or p.dport
        or p.fragment
        or p.l4_proto not in (IPPROTO_TCP, IPPROTO_UDP)
        or p.l4_off > IPV6_EXT_OFF_LIMIT
        or p.l4_off + 4 > min(p.l4_end, len(frame))
    ):
        return key
    ports = frame[p.l4_off : p.l4_off + 4]
    return key[:32] + ports + key[36:]


def _trace(frame: bytes, state: State, ifindex: int, result: Decision) -> None:
    """trace.h trace_decision: filter, sample, record."""
    node, p = state.node, result.traced
    assert node is not None and p is not None
    key = _trace_key(frame, p)
    fk = abi.FlowKey.from_buffer_copy(key)
    if node.trace_host is not None:
        want = abi.Addr.of(node.trace_host)
        if int(abi.family_of(node.trace_host)) != fk.family or want not in (fk.src, fk.dst):
            return
    port = abi.port_be(node.trace_port)
    if port and port not in (fk.sport, fk.dport):
        return
    if state.trace_skip and state.trace_skip < node.trace_one_in:
        state.trace_skip -= 1
        return
    state.trace_skip = node.trace_one_in - 1
    out = result.frame[: abi.TRACE_SNAP]
    ev = abi.TraceEvent(
        key=fk,
        svc_id=result.trace_svc,
        real_id=result.trace_real,
        ifindex=ifindex,
        reason=int(result.reason),
        len=len(result.frame),
        caplen=len(out),
    )
    ev.data[: len(out)] = list(out)
    result.trace = ev
    result.counters[Counter.TRACE_SAMPLED] += 1


def from_peer_director(node: Node, frame: bytes) -> bool:  # lease.h from_peer_director
    """Sent by another director: it scheduled the frame (to us, as a real)."""
    return frame[6:12] in node.peer_macs[: abi.MAX_PEER_MACS]


def _hold_or_pass(  # hold.h hold_or_pass
    frame: bytes, state: State, p: _Packet, pass_reason: Counter
) -> Counter:
    """A frame this node may not schedule: the stack's, unless the stack would
    reset a flow another real serves (or, on a cluster node that knows no
    active director yet, a flow without entry): then held for the next active."""
    node = state.node
    assert node is not None
    if from_peer_director(node, frame):
        return pass_reason
    try:
        if p.family == abi.Family.IPV6:
            _skip_ipv6_ext(frame, p)
        if p.fragment or p.l4_proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return pass_reason
        _parse_l4(frame, p)
    except _Verdict:  # malformed: the stack's, as before
        return pass_reason
    conn = state.conns.get(p.flow_key())
    if conn is None:
        return Counter.DROP_AWAIT_ACTIVE if node.role == abi.Role.UNDECIDED else pass_reason
    real = state.reals.get(conn.real_id)
    if real is not None and real.local:
        return pass_reason
    return Counter.DROP_AWAIT_ACTIVE


def _decide(  # carom.bpf.c
    frame: bytes, state: State, now: int, ifindex: int, result: Decision
) -> None:
    tally = result.counters
    if len(frame) < ETH_HLEN:
        raise _Verdict(Counter.DROP_SHORT_ETH)
    eth_proto = _u16(frame, 12)
    if eth_proto == ETH_P_IP:
        p = _parse_ipv4(frame)
    elif eth_proto == ETH_P_IPV6:
        p = _parse_ipv6(frame)
        if p.l4_proto == neighbour.IPPROTO_ICMPV6:
            nd = neighbour.ndp_respond(frame, state, now, ifindex, p.l4_end)
            if nd is not None:
                raise _answer(nd)
    elif eth_proto == ETH_P_ARP:
        raise _answer(neighbour.arp_respond(frame, state, now, ifindex))
    else:
        raise _Verdict(Counter.PASS_NOT_IP)

    # carom.bpf.c reaches the same verdicts through vip_filter and a first service
    # lookup (service.h); those are shortcuts, the decision is this one.
    vip_key = abi.VipKey.from_buffer_copy(p.dst + bytes([int(p.family)]) + bytes(3)).to_bytes()
    vip = state.vip_infos().get(vip_key)
    if vip is None:
        raise _Verdict(Counter.PASS_NOT_VIP)
    # lease.h: only an active node with a running lease schedules, and never a
    # frame from a peer director (the map holds a u64: a negative deadline wraps);
    # what it may not schedule is the stack's unless held (hold.h)
    if state.node is None:
        raise _Verdict(Counter.PASS_BACKUP)
    result.traced = p  # node_cfg was read: trace.h may record the decision
    if state.node.role != abi.Role.ACTIVE:
        raise _Verdict(_hold_or_pass(frame, state, p, Counter.PASS_BACKUP))
    if not now < state.node.lease_until_ns & U64:
        raise _Verdict(_hold_or_pass(frame, state, p, Counter.PASS_LEASE_EXPIRED))
    if from_peer_director(state.node, frame):
        raise _Verdict(Counter.PASS_PEER_DIRECTOR)
    if p.family == abi.Family.IPV6:
        _skip_ipv6_ext(frame, p)
    if p.fragment:
        raise _Verdict(Counter.PASS_FRAGMENT if state.node.frag_pass else Counter.DROP_FRAGMENT)
    if p.l4_proto == (1 if p.family == abi.Family.IPV4 else neighbour.IPPROTO_ICMPV6):
        _icmp_error_forward(frame, state, p, ifindex, result)
    if p.l4_proto not in (IPPROTO_TCP, IPPROTO_UDP):
        raise _Verdict(Counter.PASS_OTHER_PROTO)
    _parse_l4(frame, p)

    services = state.service_map()  # service.h find_service
    svc = services.get(p.dst + struct.pack("<HBB", p.dport, p.l4_proto, int(p.family)))
    if svc is None and vip.flags & abi.all_ports_flag(p.l4_proto):
        svc = services.get(p.dst + struct.pack("<HBB", 0, p.l4_proto, int(p.family)))
    if svc is None:
        raise _Verdict(Counter.PASS_NO_SERVICE)
    result.trace_svc = svc.svc_id

    _frame_checks(frame, state, ifindex)

    rid, real, via = _schedule(state, p, svc, frame[6:12], now, tally, result.events)
    result.real_id = result.trace_real = rid
    n = len(frame)
    result.svc_traffic[svc.svc_id] = (1, n)
    result.real_traffic[rid] = (1, n)
    flows = (int(via == VIA_NEW), int(via == VIA_CONN_HIT))
    if any(flows):
        result.svc_flows[svc.svc_id] = flows
        result.real_flows[rid] = flows
    if real.local:
        raise _Verdict(Counter.PASS_LOCAL_REAL)
    if real.method != abi.Method.DSR:
        raise _Verdict(Counter.DROP_UNSUPPORTED)
    result.frame = real.mac + frame[0:6] + frame[12:]  # forward_dsr.h
    raise _Verdict(Counter.TX_DSR)
