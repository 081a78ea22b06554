"""ICMP errors for VIP flows (bpf/icmp.h), field note 7.

An error about a reply a real sent from the VIP (fragmentation needed, packet
too big, ...) reaches the VIP's owner. The quoted header, swapped, is the
client's flow; the error goes by DSR to the real that owns it, so that real's
stack lowers its path MTU. Nothing here creates or refreshes state."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from carom import abi
from carom.abi import Counter
from carom.model.state import Real, Service, State
from carom.sched.flowhash import flow_hash

ICMP_HDR_LEN = 8
IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPV6_EXT_OFF_LIMIT = 14 + 40 + 512
U32 = (1 << 32) - 1
# unreachable, time exceeded, parameter problem | unreachable, too big, time exceeded, parameter
ERROR_TYPES = {abi.Family.IPV4: {3, 11, 12}, abi.Family.IPV6: {1, 2, 3, 4}}


@dataclass(frozen=True)
class Target:
    """Where an ICMP error goes: the flow's service and real."""

    svc: Service
    real_id: int
    real: Real


def quoted_flow(
    frame: bytes, family: abi.Family, vip: bytes, l4_off: int, l4_end: int
) -> Counter | bytes:
    """The conn_table key of the client's flow (client -> VIP) from the quote, or
    the pass reason. `vip` is the outer destination (16 bytes)."""
    if l4_off > IPV6_EXT_OFF_LIMIT:
        return Counter.PASS_OTHER_PROTO
    if l4_off + ICMP_HDR_LEN > l4_end or frame[l4_off] not in ERROR_TYPES[family]:
        return Counter.PASS_OTHER_PROTO
    off = l4_off + ICMP_HDR_LEN
    if off > IPV6_EXT_OFF_LIMIT:
        return Counter.PASS_ICMP_UNMATCHED
    if family == abi.Family.IPV4:
        if off + 20 > l4_end:
            return Counter.PASS_ICMP_UNMATCHED
        ver_ihl = frame[off]
        frag = int.from_bytes(frame[off + 6 : off + 8], "big")
        src, dst = frame[off + 12 : off + 16], frame[off + 16 : off + 20]
        if ver_ihl >> 4 != 4 or ver_ihl & 0xF < 5 or src + bytes(12) != vip or frag & 0x1FFF:
            return Counter.PASS_ICMP_UNMATCHED
        proto = frame[off + 9]
        client, server = dst + bytes(12), src + bytes(12)
        off += (ver_ihl & 0xF) * 4
    else:
        if off + 40 > l4_end:
            return Counter.PASS_ICMP_UNMATCHED
        src, dst = frame[off + 8 : off + 24], frame[off + 24 : off + 40]
        if frame[off] >> 4 != 6 or src != vip:
            return Counter.PASS_ICMP_UNMATCHED
        proto = frame[off + 6]  # extension headers in a quote: not matched
        client, server = dst, src
        off += 40
    if proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return Counter.PASS_ICMP_UNMATCHED
    if off > IPV6_EXT_OFF_LIMIT or off + 4 > l4_end:
        return Counter.PASS_ICMP_UNMATCHED
    reply_sport, reply_dport = frame[off : off + 2], frame[off + 2 : off + 4]
    # the client's flow: sport = the reply's destination port, dport = its source port
    return client + server + reply_dport + reply_sport + bytes([proto, int(family), 0, 0])


def service_of(state: State, fkey: bytes) -> Service | None:
    """(VIP, port, protocol), then the VIP's all-ports service."""
    services = state.service_map()
    vip, dport, proto, fam = fkey[16:32], fkey[34:36], fkey[36], fkey[37]
    svc = services.get(vip + dport + bytes([proto, fam]))
    return svc or services.get(vip + bytes(2) + bytes([proto, fam]))


def _usable(state: State, real_id: int) -> Real | None:
    real = state.reals.get(real_id) if real_id else None
    return real if real is not None and real.usable else None


def quoted_real(state: State, fkey: bytes, svc: Service) -> tuple[int, Real] | None:
    """The flow's connection entry, else the client's persistence entry, else
    Maglev: what the flow's next packet would get."""
    assert state.node is not None
    conn = state.conns.get(fkey)
    if conn is not None:
        real = _usable(state, conn.real_id)
        if real is not None and conn.real_id not in svc.down:  # real_state.h
            return conn.real_id, real
    hkey = fkey
    if svc.persist_timeout_s:
        pk = fkey[0:16] + struct.pack("<IBxxx", svc.svc_id, fkey[37])
        pv = state.persist.get(pk)
        if pv is not None:
            real = _usable(state, pv.real_id)
            if real is not None and pv.real_id not in svc.down:
                return pv.real_id, real
        hkey = fkey[:32] + bytes(4) + fkey[36:]
    size = state.node.maglev_size
    if not size:
        return None
    idx = (svc.svc_id * size + flow_hash(hkey) % size) & U32
    row, slot = divmod(idx, size)
    table = next((s.table for s in state.services if s.svc_id == row), None)
    rid = int(table[slot]) if table is not None and slot < len(table) else 0
    real = _usable(state, rid)
    return (rid, real) if real is not None else None
