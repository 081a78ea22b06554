"""How a kernel neighbour event changes what the daemon knows about a real."""

from __future__ import annotations

import ipaddress

from carom.net.neighbours import (
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_PERMANENT,
    NUD_REACHABLE,
    NUD_STALE,
    Neighbour,
    NeighbourEvent,
    updated,
)

A = ipaddress.ip_address("192.0.2.11")
MAC1, MAC2 = bytes.fromhex("020000000011"), bytes.fromhex("0200000000aa")
KNOWN = Neighbour(A, "carom0", MAC1, "reachable", ifindex=3)


def ev(
    nud: int, mac: bytes | None = MAC2, ifindex: int = 3, deleted: bool = False
) -> NeighbourEvent:
    return NeighbourEvent(A, ifindex, mac, nud, deleted)


def test_new_mac_is_taken() -> None:
    n = updated(KNOWN, ev(NUD_REACHABLE))
    assert (n.mac, n.state, n.ifname) == (MAC2, "reachable", "carom0")
    assert updated(KNOWN, ev(NUD_STALE)).mac == MAC2  # stale still forwards
    assert updated(KNOWN, ev(NUD_PERMANENT)).state == "reachable"


def test_other_interface_and_gateway_reals_ignore_events() -> None:
    assert updated(KNOWN, ev(NUD_REACHABLE, ifindex=4)) is KNOWN
    gw = Neighbour(A, "carom0", None, "via-gateway", "reached via gateway", 3)
    assert updated(gw, ev(NUD_REACHABLE)) is gw


def test_gone_or_failed_entries_lose_the_mac() -> None:
    gone = updated(KNOWN, ev(NUD_STALE, deleted=True))
    assert (gone.mac, gone.state) == (
        None,
        "incomplete",
    )  # the reconciler keeps the old MAC meanwhile
    failed = updated(KNOWN, ev(NUD_FAILED, mac=None))
    assert (failed.mac, failed.state) == (None, "failed") and "no ARP/NDP answer" in failed.detail
    assert updated(KNOWN, ev(NUD_INCOMPLETE, mac=None)).state == "incomplete"
