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
    VIP_PERSIST,
    PacketCase,
    Setup,
    _conn,
    _drop_real_from_table,
    _pending,
    _persist,
    _seq,
    _set_node,
    table_of,
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
        note="a frozen daemon: its node stops scheduling within the lease; a flow without "
        "entry is its stack's (hold.h)",
    ),
    PacketCase(
        "expired-lease-holds-an-established-flow-of-another-real",
        ACK_LEASE,
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(_lease(-0.05), _conn(ACK_LEASE, 3)),
        note="conn-table hits too: not scheduled, and not reset by the local stack either; "
        "the new active serves the flow from its synced entry",
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
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(_set_node(role=abi.Role.BACKUP), _conn(ACK_LEASE, 3)),
        note="field note 3: a backup's tables never decide, whatever they hold; from the "
        "router (stale ARP) it is held, not reset by the stack (hold.h)",
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


# --- reals down for a service (bpf/real_state.h): their flows move ---
def _down(svc_id: int, *real_ids: int, keep_flows: bool = False) -> Setup:
    """Reals `real_ids` went down for service `svc_id`: out of its Maglev row, and
    (unless the service keeps the flows of down reals) flagged in real_down."""

    def setup(state: State, now: int) -> None:
        svc = next(s for s in state.services if s.svc_id == svc_id)
        members = {0: [1, 2, 3], 1: [1, 2], 4: [1, 2, 3]}[svc_id]
        svc.table = table_of([r for r in members if r not in real_ids])
        if not keep_flows:
            svc.down = frozenset(real_ids)

    return setup


ACK_DOWN = tcp4(flags="A", sport=40030, payload=b"data")
ACK_KEEP = tcp4(flags="A", sport=40031, payload=b"data")
ACK_PENDING_DOWN = tcp4(flags="A", sport=40032, payload=b"data")
PERSIST_ACK = tcp4(dst=VIP_PERSIST, dport=443, flags="A", sport=40033, payload=b"x")

CLUSTER_CASES += [
    PacketCase(
        "conn-to-a-down-real-is-rescheduled",
        ACK_DOWN,
        C.TX_DSR,
        setup=_seq(_conn(ACK_DOWN, 3), _down(0, 3)),
        real="maglev",
        svc_id=0,
        extra={C.CONN_REAL_DOWN: 1, C.NEW_FLOW: 1},
        conn_created=True,
        note="the client gets a quick reset from a live real, not a black hole; REPOINT",
    ),
    PacketCase(
        "service-that-keeps-flows-of-down-reals",
        ACK_KEEP,
        C.TX_DSR,
        setup=_seq(_conn(ACK_KEEP, 3), _down(0, 3, keep_flows=True)),
        real=3,
        svc_id=0,
        extra={C.CONN_HIT: 1},
        conn_created=True,
    ),
    PacketCase(
        "real-down-for-another-service-keeps-this-ones-flows",
        UDP4,
        C.TX_DSR,
        setup=_seq(_conn(UDP4, 1), _down(0, 1)),
        real=1,
        svc_id=1,
        extra={C.CONN_HIT: 1},
        conn_created=True,
        note="down is per (service, real): real 1 failed service 0's check, not service 1's",
    ),
    PacketCase(
        "pending-entry-of-a-down-real-is-scheduled-again",
        ACK_PENDING_DOWN,
        C.TX_DSR,
        setup=_seq(_pending(ACK_PENDING_DOWN, 3), _down(0, 3)),
        real="maglev",
        svc_id=0,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
    PacketCase(
        "persistence-entry-of-a-down-real-is-not-used",
        PERSIST_ACK,
        C.TX_DSR,
        setup=_seq(_persist(CLIENT, 4, 2, 10), _down(4, 2)),
        real="maglev-client",
        svc_id=4,
        extra={C.NEW_FLOW: 1},
        pending_created=True,
    ),
]
