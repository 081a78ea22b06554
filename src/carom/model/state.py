"""The logical state of the data plane: what the maps hold, as Python values.

The reference model decides on it directly; the packet-table harness and the
daemon write it into the real maps. Keys are the abi structs' bytes, so the
model and the kernel agree on identity down to the padding."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from carom import abi


@dataclass
class Node:
    """node_cfg[0]."""

    role: abi.Role = abi.Role.ACTIVE
    frag_pass: bool = False  # pass fragments to a VIP instead of dropping them
    maglev_size: int = 13  # slots per service row
    tcp_idle_ns: int = 900 * 10**9  # idle TCP entries are rescheduled
    udp_idle_ns: int = 300 * 10**9  # idle UDP entries are rescheduled
    # CLOCK_MONOTONIC deadline renewed by the daemon: ARP/NDP for the VIPs is
    # answered, and VIP traffic scheduled, only before it (0: never), so a wedged
    # daemon stops claiming and scheduling. In the data plane it is the `lease`
    # map, not a node_cfg field.
    lease_until_ns: int = 0
    # MACs of the peer directors (6 bytes each, at most abi.MAX_PEER_MACS): VIP
    # frames from them go to the local stack, never scheduled.
    peer_macs: tuple[bytes, ...] = ()
    # carom trace (bpf/trace.h): record one decision in trace_one_in (0: off), of
    # tuples with trace_host at either end and trace_port (host order) at either end
    trace_one_in: int = 0
    trace_host: abi.IPAddress | None = None
    trace_port: int = 0

    def to_abi(self) -> abi.NodeCfg:
        cfg = abi.NodeCfg(
            role=int(self.role),
            flags=int(abi.CfgFlags.FRAG_PASS) if self.frag_pass else 0,
            maglev_size=self.maglev_size,
            tcp_idle_ns=self.tcp_idle_ns,
            udp_idle_ns=self.udp_idle_ns,
        )
        cfg.set_peer_macs(self.peer_macs)
        cfg.trace_one_in = self.trace_one_in
        if self.trace_host is not None:
            cfg.trace_addr = abi.Addr.of(self.trace_host)
            cfg.trace_family = int(abi.family_of(self.trace_host))
        cfg.trace_port = abi.port_be(self.trace_port)
        return cfg


@dataclass
class Service:
    """One services entry and its Maglev row."""

    vip: abi.IPAddress
    proto: int  # 6 or 17
    port: int  # host order; 0 = all ports
    svc_id: int
    table: np.ndarray  # uint32 real ids, length Node.maglev_size
    persist_timeout_s: int = 0  # 0 = no persistence
    # real ids down for this service whose flows move at their next packet
    # (real_down bits; bpf/real_state.h). A down real whose service keeps its
    # flows is only out of the table, not in here.
    down: frozenset[int] = frozenset()
    # A multi-port service's other ports (config `ports:`): each has a services
    # entry of its own with this same id, so they share the Maglev row and a
    # persistence entry (keyed by id and client) covers all of them.
    more_ports: tuple[int, ...] = ()

    @property
    def family(self) -> abi.Family:
        return abi.family_of(self.vip)

    def key(self) -> abi.SvcKey:
        return abi.svc_key(self.vip, self.proto, self.port)

    def keys(self) -> list[abi.SvcKey]:
        """Every services-map key of this service: its port, then more_ports."""
        return [abi.svc_key(self.vip, self.proto, p) for p in (self.port, *self.more_ports)]

    def info(self) -> abi.SvcInfo:
        flags = int(abi.SvcFlags.PERSIST) if self.persist_timeout_s else 0
        if self.down:
            flags |= int(abi.SvcFlags.REAL_DOWN)
        return abi.SvcInfo(id=self.svc_id, flags=flags, persist_timeout_s=self.persist_timeout_s)


@dataclass
class Real:
    """One reals entry."""

    real_id: int
    address: abi.IPAddress
    mac: bytes = bytes(6)  # resolved from the neighbour table
    local: bool = False  # this node itself
    usable: bool = True  # False: no resolved MAC, never forwarded to
    method: abi.Method = abi.Method.DSR

    def info(self) -> abi.RealInfo:
        flags = (abi.RealFlags.LOCAL if self.local else 0) | (
            0 if self.usable else abi.RealFlags.UNUSABLE
        )
        info = abi.RealInfo(
            addr=abi.Addr.of(self.address),
            family=int(abi.family_of(self.address)),
            method=int(self.method),
            flags=int(flags),
        )
        info.mac[:] = list(self.mac)
        return info


@dataclass
class State:
    """Everything the forwarding decision reads or writes."""

    node: Node | None = field(default_factory=Node)
    services: list[Service] = field(default_factory=list)
    reals: dict[int, Real] = field(default_factory=dict)
    # conn_table and persist_table, keyed by the packed abi key bytes
    conns: dict[bytes, abi.ConnVal] = field(default_factory=dict)
    persist: dict[bytes, abi.PersistVal] = field(default_factory=dict)
    # pending: slot -> flow seen once (one CPU's cache: the model is one CPU)
    pending: dict[int, abi.PendingConn] = field(default_factory=dict)
    # if_macs: ifindex -> the interface's own MAC (6 bytes)
    if_macs: dict[int, bytes] = field(default_factory=dict)
    # trace_state: matching decisions still to skip before the next trace record
    trace_skip: int = 0

    def vip_keys(self) -> set[bytes]:
        return set(self.vip_infos())

    def vip_infos(self) -> dict[bytes, abi.VipInfo]:
        """vip_addrs: per VIP, its number of services and which protocols have an
        all-ports service there."""
        out: dict[bytes, abi.VipInfo] = {}
        for s in self.services:
            info = out.setdefault(abi.vip_key(s.vip).to_bytes(), abi.VipInfo())
            info.services += 1 + len(s.more_ports)
            if s.port == 0:
                info.flags |= int(abi.all_ports_flag(s.proto))
        return out

    def real_macs(self) -> dict[bytes, int]:
        """MAC of every remote real: VIP frames from one of them are a loop."""
        return {
            abi.MacKey.from_buffer_copy(r.mac + b"\0\0").to_bytes(): rid
            for rid, r in self.reals.items()
            if not r.local and r.mac != bytes(6)
        }

    def service_map(self) -> dict[bytes, Service]:
        return {k.to_bytes(): s for s in self.services for k in s.keys()}  # noqa: SIM118 (Service.keys, not a dict)
