"""Real servers' MAC addresses, from the kernel's neighbour table only.

Field note 4: a balancer that learns next hops from the source MAC of traffic
breaks behind NIC teaming. carom asks the kernel (ARP/NDP) instead: it requests
resolution with NTF_USE, which also makes the kernel revalidate stale entries,
so a real whose MAC changes is noticed even though XDP bypasses the kernel's
own use of the entry.

The daemon follows the table through kernel events (RTM_NEWNEIGH/RTM_DELNEIGH,
NeighbourEvents) and asks again only about reals without a usable entry."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from pyroute2 import AsyncIPRoute, IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_NEIGH
from pyroute2.netlink.rtnl.ndmsg import NTF_USE

log = logging.getLogger("carom.neighbours")

NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
_VALID = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Neighbour:
    """What the kernel knows about one real server's link-layer address."""

    address: Address
    ifname: str | None  # interface the route to it uses
    mac: bytes | None  # resolved MAC, None while unknown
    state: str  # reachable | stale | probing | incomplete | failed | no-route | via-gateway
    detail: str = ""  # why it is not usable, in an operator's words
    ifindex: int | None = None  # interface the route to it uses (events on others are ignored)

    @property
    def resolved(self) -> bool:
        return self.mac is not None


def _state_name(nud: int) -> str:
    if nud & NUD_REACHABLE or nud & NUD_PERMANENT:
        return "reachable"
    if nud & NUD_STALE:
        return "stale"
    if nud & (NUD_DELAY | NUD_PROBE):
        return "probing"
    if nud & NUD_FAILED:
        return "failed"
    return "incomplete"


class NeighbourTable:
    """Synchronous netlink access; the daemon calls it from a worker thread."""

    def __init__(self) -> None:
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def ifname(self, ifindex: int) -> str | None:
        links = self.ipr.get_links(ifindex)
        return links[0].get_attr("IFLA_IFNAME") if links else None

    def _route(self, address: Address) -> tuple[int | None, str | None]:
        try:
            routes: list[Any] = self.ipr.route("get", dst=str(address))
        except NetlinkError:
            return None, None
        if not routes:
            return None, None
        return routes[0].get_attr("RTA_OIF"), routes[0].get_attr("RTA_GATEWAY")

    def lookup(self, address: Address, request: bool = True) -> Neighbour:
        """Current neighbour state of `address`; asks the kernel to (re)resolve it."""
        return self.lookup_many([address], request)[address]

    def lookup_many(
        self, addresses: list[Address], request: bool = True
    ) -> dict[Address, Neighbour]:
        """Like lookup() for many addresses with one neighbour dump per family."""
        entries: dict[str, Any] = {}
        for family in {2 if a.version == 4 else 10 for a in addresses}:
            for n in self.ipr.get_neighbours(family=family):
                entries[f"{n['ifindex']}/{n.get_attr('NDA_DST')}"] = n
        names: dict[int, str | None] = {}
        out: dict[Address, Neighbour] = {}
        for address in addresses:
            oif, gateway = self._route(address)
            if oif is None:
                out[address] = Neighbour(
                    address, None, None, "no-route", "no route to this address"
                )
                continue
            if oif not in names:
                names[oif] = self.ifname(oif)
            out[address] = self._classify(
                address, oif, names[oif], gateway, entries.get(f"{oif}/{address}"), request
            )
        return out

    def _classify(
        self,
        address: Address,
        oif: int,
        ifname: str | None,
        gateway: str | None,
        entry: Any,
        request: bool,
    ) -> Neighbour:
        if gateway:
            return Neighbour(
                address,
                ifname,
                None,
                "via-gateway",
                f"reached via gateway {gateway}: DSR needs the real server on a directly "
                "connected layer-2 segment",
            )
        # Never "use" a static entry: NTF_USE turns a permanent entry into an
        # incomplete one, wiping an operator's fixed ARP/NDP entry.
        if request and (
            entry is None or not entry["state"] & (NUD_REACHABLE | NUD_PERMANENT | NUD_NOARP)
        ):
            self.request(address, oif)
        if entry is None:
            return Neighbour(address, ifname, None, "incomplete", "resolution in progress", oif)
        state = entry["state"]
        lladdr = entry.get_attr("NDA_LLADDR")
        if state & _VALID and lladdr:
            return Neighbour(
                address,
                ifname,
                bytes.fromhex(lladdr.replace(":", "")),
                _state_name(state),
                ifindex=oif,
            )
        if state & NUD_FAILED:
            return Neighbour(
                address,
                ifname,
                None,
                "failed",
                "no ARP/NDP answer: the host is down or not on this segment",
                oif,
            )
        return Neighbour(address, ifname, None, _state_name(state), "resolution in progress", oif)

    def request(self, address: Address, ifindex: int) -> None:
        """NTF_USE: the kernel starts (or refreshes) resolution, sending nothing else."""
        try:
            self.ipr.neigh("replace", dst=str(address), ifindex=ifindex, flags=NTF_USE)
        except NetlinkError as exc:
            log.debug("neighbour request for %s failed: %s", address, exc)


@dataclass(frozen=True)
class NeighbourEvent:
    """One kernel notification about a neighbour entry."""

    address: Address
    ifindex: int
    mac: bytes | None  # link-layer address in the entry, if any
    nud: int  # NUD_* state bits
    deleted: bool  # RTM_DELNEIGH: the entry is gone


def parse_event(msg: Any) -> NeighbourEvent | None:
    """A netlink neighbour message as an event; None for what is not an IP neighbour."""
    event = msg.get("event")
    if event not in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
        return None
    dst = msg.get_attr("NDA_DST")
    if not dst:
        return None
    try:
        address = ipaddress.ip_address(dst)
    except ValueError:
        return None
    lladdr = msg.get_attr("NDA_LLADDR")
    mac = bytes.fromhex(lladdr.replace(":", "")) if lladdr else None
    if mac is not None and len(mac) != 6:
        mac = None
    return NeighbourEvent(
        address, int(msg["ifindex"]), mac, int(msg["state"]), event == "RTM_DELNEIGH"
    )


def updated(known: Neighbour, ev: NeighbourEvent) -> Neighbour:
    """What an event means for a real we know: events on another interface than
    the one its route uses, and for reals behind a gateway, change nothing."""
    if known.ifindex is None or ev.ifindex != known.ifindex or known.state == "via-gateway":
        return known
    if ev.deleted or ev.nud & (NUD_FAILED | NUD_INCOMPLETE) or not ev.mac:
        if ev.nud & NUD_FAILED and not ev.deleted:
            return replace(
                known,
                mac=None,
                state="failed",
                detail="no ARP/NDP answer: the host is down or not on this segment",
            )
        return replace(known, mac=None, state="incomplete", detail="resolution in progress")
    if ev.nud & _VALID:
        return replace(known, mac=ev.mac, state=_state_name(ev.nud), detail="")
    return replace(known, mac=None, state=_state_name(ev.nud), detail="resolution in progress")


class NeighbourEvents:
    """Kernel neighbour notifications (RTM_NEWNEIGH/RTM_DELNEIGH, IPv4 and IPv6),
    read on the event loop: one socket, no polling."""

    def __init__(self) -> None:
        self.ipr = AsyncIPRoute()

    async def open(self) -> None:
        await self.ipr.bind(groups=RTMGRP_NEIGH)

    async def events(self) -> AsyncIterator[NeighbourEvent]:
        while True:
            async for msg in self.ipr.get():
                ev = parse_event(msg)
                if ev is not None:
                    yield ev

    async def close(self) -> None:
        result = self.ipr.close()
        if hasattr(result, "__await__"):
            await result
