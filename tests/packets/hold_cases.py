"""Packet cases of a node that may not schedule (bpf/hold.h): a backup, a cluster
node still starting (role UNDECIDED), an active node whose lease ran out. Such
a frame goes to the local stack unless the stack would reset a flow another
real serves: then it is held (DROP_AWAIT_ACTIVE) and the client retransmits
until an active director forwards it. Appended to the shared table in cases.py."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from carom import abi
from carom.abi import Counter as C
from tests.packets.cases import (
    CLIENT,
    CLIENT6,
    VIP,
    VIP6,
    PacketCase,
    Setup,
    _conn,
    _raw,
    _seq,
    _set_node,
    eth,
    tcp4,
)
from tests.packets.cluster_cases import PEERS, _from, _lease
from tests.packets.neighbour_cases import ARP_REQ, NS_MCAST

PEER_MAC = "02:ca:00:00:00:02"  # the last of PEERS: every slot of the check is used
BACKUP = _set_node(role=abi.Role.BACKUP)
UNDECIDED = _set_node(role=abi.Role.UNDECIDED)
EXPIRED = _lease(-1)
LOCAL_REAL = 6  # cases.REALS: this director itself

H_ACK = tcp4(flags="A", sport=40040, payload=b"data")
H_ACK_LOCAL = tcp4(flags="A", sport=40041, payload=b"data")
H_ACK_NONE = tcp4(flags="A", sport=40042, payload=b"data")
H_SYN = tcp4(sport=40043)
H_SYN_KNOWN = tcp4(sport=40044)
H_UDP = bytes(eth() / IP(src=CLIENT, dst=VIP) / UDP(sport=5354, dport=53) / b"query")
H_ACK6 = bytes(
    eth(type=0x86DD) / IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40045, dport=80, flags="A") / b"x"
)
H_ACK_GONE = tcp4(flags="A", sport=40046, payload=b"data")
H_FRAG = bytes(
    eth() / IP(src=CLIENT, dst=VIP, flags="MF") / TCP(sport=40047, dport=80, flags="A") / b"x"
)
# a TCP header cut short: malformed, the stack's as before (no tuple to hold)
H_TRUNC = _raw(bytes(IP(src=CLIENT, dst=VIP, proto=6) / b"\x9c\x40\x00\x50"))
PEER_ACK = _from(PEER_MAC, H_ACK)
PEER_SYN = _from(PEER_MAC, H_SYN)


def _peers() -> Setup:
    return _set_node(peer_macs=PEERS)


HOLD_CASES: list[PacketCase] = [
    # --- lease run out (the daemon stopped, died or froze) ---
    PacketCase(
        "expired-lease-flow-of-this-node-goes-to-its-stack",
        H_ACK_LOCAL,
        C.PASS_LEASE_EXPIRED,
        setup=_seq(EXPIRED, _conn(H_ACK_LOCAL, LOCAL_REAL)),
        note="its entry names this node (CAROM_REAL_LOCAL): the stack holds its socket",
    ),
    PacketCase(
        "expired-lease-non-syn-without-entry-goes-to-the-stack",
        H_ACK_NONE,
        C.PASS_LEASE_EXPIRED,
        setup=EXPIRED,
        note="the daemon is frozen or dead: a connection its stack accepted meanwhile has no "
        "entry either, and a lone director has no other forwarder to wait for",
    ),
    PacketCase(
        "expired-lease-syn-with-an-entry-to-another-real-is-held",
        H_SYN_KNOWN,
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(EXPIRED, _conn(H_SYN_KNOWN, 2)),
    ),
    PacketCase(
        "expired-lease-udp-flow-of-another-real-is-held",
        H_UDP,
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(EXPIRED, _conn(H_UDP, 1)),
    ),
    PacketCase(
        "expired-lease-ipv6-flow-of-another-real-is-held",
        H_ACK6,
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(EXPIRED, _conn(H_ACK6, 4)),
    ),
    PacketCase(
        "expired-lease-entry-to-an-unknown-real-is-held",
        H_ACK_GONE,
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(EXPIRED, _conn(H_ACK_GONE, 99)),
        note="not this node's flow: the stack has no socket for it",
    ),
    PacketCase(
        "expired-lease-frame-from-a-peer-director-goes-to-the-stack",
        PEER_ACK,
        C.PASS_LEASE_EXPIRED,
        setup=_seq(EXPIRED, _peers(), _conn(PEER_ACK, 3)),
        note="the active scheduled it to us as a real (our entry may be stale): served here",
    ),
    PacketCase(
        "expired-lease-fragment-goes-to-the-stack",
        H_FRAG,
        C.PASS_LEASE_EXPIRED,
        setup=EXPIRED,
        note="no ports, no tuple to look up: passed as before",
    ),
    PacketCase(
        "expired-lease-malformed-tcp-goes-to-the-stack",
        H_TRUNC,
        C.PASS_LEASE_EXPIRED,
        setup=EXPIRED,
    ),
    # --- a backup: an active director is known ---
    PacketCase(
        "backup-non-syn-without-entry-goes-to-the-stack",
        H_ACK_NONE,
        C.PASS_BACKUP,
        setup=BACKUP,
        note="the active schedules to us before our entry exists (made at the second "
        "packet, then synced): were its MAC not recognised, holding would black-hole it",
    ),
    PacketCase(
        "backup-flow-of-this-node-goes-to-its-stack",
        H_ACK_LOCAL,
        C.PASS_BACKUP,
        setup=_seq(BACKUP, _conn(H_ACK_LOCAL, LOCAL_REAL)),
    ),
    PacketCase(
        "backup-frame-from-the-active-goes-to-the-stack-whatever-its-entry",
        PEER_ACK,
        C.PASS_BACKUP,
        setup=_seq(BACKUP, _peers(), _conn(PEER_ACK, 3)),
        note="no double scheduling, and no hold: the active decided",
    ),
    PacketCase(
        "backup-ipv6-flow-of-another-real-from-the-router-is-held",
        H_ACK6,
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(BACKUP, _conn(H_ACK6, 5)),
    ),
    # --- a cluster node starting, no active director known (both daemons restarted) ---
    PacketCase(
        "undecided-syn-without-entry-is-held",
        H_SYN,
        C.DROP_AWAIT_ACTIVE,
        setup=UNDECIDED,
        note="accepted by the stack now, the connection would be one nobody scheduled",
    ),
    PacketCase(
        "undecided-non-syn-without-entry-is-held",
        H_ACK_NONE,
        C.DROP_AWAIT_ACTIVE,
        setup=UNDECIDED,
    ),
    PacketCase(
        "undecided-flow-of-another-real-is-held",
        H_ACK,
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(UNDECIDED, _conn(H_ACK, 1)),
    ),
    PacketCase(
        "undecided-flow-of-this-node-goes-to-its-stack",
        H_ACK_LOCAL,
        C.PASS_BACKUP,
        setup=_seq(UNDECIDED, _conn(H_ACK_LOCAL, LOCAL_REAL)),
    ),
    PacketCase(
        "undecided-syn-from-a-peer-director-goes-to-the-stack",
        PEER_SYN,
        C.PASS_BACKUP,
        setup=_seq(UNDECIDED, _peers()),
        note="a peer already active scheduled it to us as a real: never held",
    ),
    PacketCase(
        "undecided-node-never-answers-arp",
        ARP_REQ,
        C.PASS_NEIGH_INACTIVE,
        setup=_seq(UNDECIDED, _lease(30)),
        note="only the active answers for the VIPs, even with a lease left in the map",
    ),
    PacketCase(
        "undecided-node-never-answers-ns",
        NS_MCAST,
        C.PASS_NEIGH_INACTIVE,
        setup=_seq(UNDECIDED, _lease(30)),
    ),
    PacketCase(
        "undecided-node-never-schedules-even-with-a-lease",
        H_SYN,
        C.DROP_AWAIT_ACTIVE,
        setup=_seq(UNDECIDED, _lease(30)),
        note="the role decides; a lease alone never makes a node schedule",
    ),
    PacketCase(
        "undecided-icmp-goes-to-the-stack",
        bytes(Ether(src="02:ca:00:00:00:fe", dst="02:ca:00:00:00:01") / IP(src=CLIENT, dst=VIP)),
        C.PASS_BACKUP,
        setup=UNDECIDED,
        note="not TCP or UDP (here: no transport at all): no tuple to hold",
    ),
]
