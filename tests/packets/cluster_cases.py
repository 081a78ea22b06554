"""Packet cases of the cluster's data-plane side: the lease gates scheduling
(not only ARP/NDP), frames from a peer director are never scheduled, and the
connection events a flow's packets produce (docs/datapath.md, bpf/lease.h,
bpf/conn_events.h). Appended to the shared table in cases.py."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from carom import abi
from carom.abi import Counter as C
from carom.model.state import State
from tests.packets.cases import (
    ACK,
    CLIENT,
    DIRECTOR_MAC,
    REALS,
    ROUTER_MAC,
    SYN,
    UDP4,
    VIP,
    PacketCase,
    Setup,
    _conn,
    _drop_real_from_table,
    _pending,
    _seq,
    _set_node,
    tcp4,
)

PEER_MAC = "02:ca:00:00:00:02"
# Other directors; the matching one last, so every slot of the check is used.
PEERS = tuple(
    abi.mac_bytes(m)
    for m in ("02:ca:00:00:00:07", "02:ca:00:00:00:08", "02:ca:00:00:00:09", PEER_MAC)
)


def _lease(seconds: float) -> Setup:
    """A lease that ends `seconds` after the case's 'now' (negative: already over)."""

    def setup(state: State, now: int) -> None:
        assert state.node is not None
        state.node.lease_until_ns = now + int(seconds * 1e9)

    return setup


def _synced(frame: bytes, real_id: int, age_s: float) -> Setup:
    """An entry learned from a peer (SYNCED, no TTL)."""
    from tests.packets.cases import flow_key

    def setup(state: State, now: int) -> None:
        state.conns[flow_key(frame)] = abi.ConnVal(
            real_id=real_id,
            flags=int(abi.ConnFlags.SYNCED),
            ttl=0,
            last_seen_ns=now - int(age_s * 1e9),
        )

    return setup


def _from(mac: str, frame: bytes) -> bytes:
    """`frame` with another source MAC."""
    return frame[:6] + abi.mac_bytes(mac) + frame[12:]


PEER_SYN = _from(PEER_MAC, SYN)
PEER_ACK = _from(PEER_MAC, ACK)
ACK_LEASE = tcp4(flags="A", sport=40020, payload=b"data")
ACK_SYNCED = tcp4(flags="A", sport=40021, payload=b"data")
ACK_SYNCED_IDLE = tcp4(flags="A", sport=40022, payload=b"data")
ACK_CONFIRM = tcp4(flags="A", sport=40023, payload=b"data")
ICMP_ERR = bytes(
    Ether(src=ROUTER_MAC, dst=DIRECTOR_MAC)
    / IP(src="203.0.113.1", dst=VIP)
    / ICMP(type=3, code=4)
    / IP(src=VIP, dst=CLIENT)
    / TCP(sport=80, dport=40000, flags="A")
)

CLUSTER_CASES: list[PacketCase] = [
    # --- the lease gates scheduling ---
    PacketCase(
        "expired-lease-passes-a-new-flow",
        SYN,
        C.PASS_LEASE_EXPIRED,
        setup=_lease(-1),
        note="a frozen daemon: its node stops scheduling within the lease",
    ),
    PacketCase(
        "expired-lease-passes-an-established-flow",
        ACK_LEASE,
        C.PASS_LEASE_EXPIRED,
        setup=_seq(_lease(-0.05), _conn(ACK_LEASE, 3)),
        note="conn-table hits too: the new active serves the flow from its synced entry",
    ),
    PacketCase(
        "no-lease-never-schedules",
        UDP4,
        C.PASS_LEASE_EXPIRED,
        setup=_set_node(lease_until_ns=0),
        note="a daemon that never wrote a lease never schedules",
    ),
    PacketCase(
        "fresh-lease-schedules",
        ACK_LEASE,
        C.TX_DSR,
        setup=_seq(_lease(5), _conn(ACK_LEASE, 3)),
        real=3,
        svc_id=0,
        extra={C.CONN_HIT: 1},
        conn_created=True,
    ),
    PacketCase(
        "expired-lease-passes-an-icmp-error",
        ICMP_ERR,
        C.PASS_LEASE_EXPIRED,
        setup=_seq(_lease(-1), _conn(tcp4(flags="A"), 3)),
    ),
    PacketCase(
        "backup-with-an-entry-never-forwards",
        ACK_LEASE,
        C.PASS_BACKUP,
        setup=_seq(_set_node(role=abi.Role.BACKUP), _conn(ACK_LEASE, 3)),
        note="field note 3: a backup's tables never decide, whatever they hold",
    ),
    # --- frames from a peer director are never scheduled ---
    PacketCase(
        "new-flow-from-a-peer-director-goes-to-the-stack",
        PEER_SYN,
        C.PASS_PEER_DIRECTOR,
        setup=_set_node(peer_macs=PEERS),
        note="in a role race the peer scheduled it to us as a real: no double scheduling",
    ),
    PacketCase(
        "known-flow-from-a-peer-director-goes-to-the-stack",
        PEER_ACK,
        C.PASS_PEER_DIRECTOR,
        setup=_seq(_set_node(peer_macs=PEERS), _conn(PEER_ACK, 3)),
    ),
    PacketCase(
        "peer-macs-leave-other-senders-alone",
        SYN,
        C.TX_DSR,
        setup=_set_node(peer_macs=PEERS),
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "only-the-peer-macs-in-use-count",
        PEER_SYN,
        C.TX_DSR,
        setup=_set_node(peer_macs=PEERS[:3]),
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    # --- connection events (a NEW or REPOINT record; the table checks each) ---
    PacketCase(
        "confirmation-emits-new",
        ACK_CONFIRM,
        C.TX_DSR,
        setup=_pending(ACK_CONFIRM, 2, ttl=64),
        real=2,
        svc_id=0,
        extra={C.CONN_CONFIRMED: 1},
        conn_created=True,
    ),
    PacketCase(
        "udp-confirmation-emits-new",
        UDP4,
        C.TX_DSR,
        setup=_pending(UDP4, 1, ttl=64),
        real=1,
        svc_id=1,
        extra={C.CONN_CONFIRMED: 1},
        conn_created=True,
    ),
    PacketCase(
        "synced-entry-is-honoured-as-is",
        ACK_SYNCED,
        C.TX_DSR,
        setup=_seq(_synced(ACK_SYNCED, 3, 0.1), _drop_real_from_table(3)),
        real=3,
        svc_id=0,
        extra={C.CONN_HIT: 1},
        conn_created=True,
    ),
    PacketCase(
        "idle-synced-entry-repointed-becomes-local",
        ACK_SYNCED_IDLE,
        C.TX_DSR,
        setup=_seq(_synced(ACK_SYNCED_IDLE, 3, 3600), _drop_real_from_table(3)),
        real="maglev",
        svc_id=0,
        extra={C.CONN_EXPIRED: 1, C.NEW_FLOW: 1},
        conn_created=True,
        note="the REPOINT record and the entry carry flags 0: this node decided",
    ),
    PacketCase(
        "frame-from-a-real-with-peer-macs-set-is-still-a-loop",
        _from(REALS[1][1], ACK),
        C.DROP_LOOP,
        setup=_set_node(peer_macs=PEERS),
    ),
]
