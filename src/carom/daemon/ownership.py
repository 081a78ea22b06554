"""VIP ownership: the active director answers ARP/NDP for its VIPs (in XDP,
bpf/arp_responder.h) only while this task keeps the data-plane lease fresh,
announces every VIP when it takes ownership, and re-announces when another
MAC claims one of them.

Field note 6: a wedged daemon must not leave its data plane answering for a VIP;
announcements must cover all VIPs, be repeated, refreshed, and re-sent when a
split brain shows. The lease is a deadline in the `lease` map (CLOCK_MONOTONIC
ns, the clock of bpf_ktime_get_ns); the XDP program answers ARP/NDP only before
it. A SIGSTOPped or hung daemon stops refreshing it and the node falls silent
within LEASE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from carom.net.announce import ETH_P_ARP, Announcer, Claim, Link, link_local_of, parse_claim

log = logging.getLogger("carom.ownership")

# The XDP program answers for the VIPs until now + LEASE_S; refreshed every
# LEASE_REFRESH_S, so a daemon that stops refreshing falls silent within LEASE_S.
LEASE_S = 1.0
LEASE_REFRESH_S = 0.2
# A lone director's daemon that stops without --detach leaves a lease this long,
# so a new daemon (a restart, an upgrade) adopts a data plane that still
# schedules: the lease gates scheduling too (bpf/lease.h), and a new daemon
# takes longer than LEASE_S to start. A cluster member leaves none: its peer
# takes over within a lease.
RESTART_GRACE_S = 30.0
# Announcement schedule on taking ownership (field note 6): a burst, then
# again after 1 s and 5 s, then a refresh every ANNOUNCE_REFRESH_S.
BURST = 3
BURST_GAP_S = 0.02
REPEATS_S = (1.0, 5.0)
ANNOUNCE_REFRESH_S = 30.0
# A claim by another MAC triggers a re-announcement at most this often.
REANNOUNCE_MIN_GAP_S = 1.0

SOL_PACKET = 263
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
ETH_P_IPV6 = 0x86DD


def lease_deadline_ns(now_ns: int | None = None) -> int:
    """The lease value to write now: CLOCK_MONOTONIC, as bpf_ktime_get_ns reads it."""
    now = time.monotonic_ns() if now_ns is None else now_ns
    return now + int(LEASE_S * 1e9)


@dataclass(frozen=True)
class ClaimEvent:
    """Another MAC claimed one of our VIPs on `link`."""

    link: str  # interface it was seen on
    claim: Claim  # the VIP and the other MAC


def _na_filter() -> bytes:
    """Classic BPF: accept IPv6 ICMPv6 Neighbour Advertisements only (no
    extension headers: NDP never carries them), so the watcher never sees data
    traffic. Offsets: ethertype 12, IPv6 next header 20, ICMPv6 type 54."""
    ops = [
        (0x28, 0, 0, 12),  # ldh [12]
        (0x15, 0, 5, ETH_P_IPV6),  # jeq 0x86dd, else drop
        (0x30, 0, 0, 20),  # ldb [20]
        (0x15, 0, 3, 58),  # jeq ICMPv6, else drop
        (0x30, 0, 0, 54),  # ldb [54]
        (0x15, 0, 1, 136),  # jeq NA, else drop
        (0x06, 0, 0, 0xFFFF),  # accept
        (0x06, 0, 0, 0),  # drop
    ]
    return b"".join(struct.pack("HBBI", *op) for op in ops)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it
    del buf


class ClaimWatcher:
    """Listens for ARP packets and Neighbour Advertisements on the served links
    and reports any that bind one of our VIPs to a MAC that is not ours."""

    def __init__(self, links: Sequence[Link], on_claim: Callable[[ClaimEvent], None]) -> None:
        self.links = list(links)
        self.on_claim = on_claim
        self.vips: set[object] = set()
        # Our own MACs: a claim from any of them is ours (one NIC team, several links).
        self.own_macs = {link.mac for link in self.links}
        self._socks: list[tuple[socket.socket, Link]] = []

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        for link in self.links:
            arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            arp.bind((link.name, ETH_P_ARP))
            na = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
            _attach_filter(na, _na_filter())
            na.bind((link.name, ETH_P_IPV6))
            for s in (arp, na):
                s.setblocking(False)
                self._socks.append((s, link))
                loop.add_reader(s.fileno(), self._readable, s, link)

    def _readable(self, sock: socket.socket, link: Link) -> None:
        for _ in range(64):  # bounded per wake-up: a flood cannot starve the loop
            try:
                frame, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning(
                    "claim watcher read failed", extra={"link": link.name, "error": str(exc)}
                )
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            claim = parse_claim(frame)
            if claim and claim.vip in self.vips and claim.mac not in self.own_macs:
                self.on_claim(ClaimEvent(link.name, claim))

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        for s, _ in self._socks:
            loop.remove_reader(s.fileno())
            s.close()
        self._socks.clear()


class VipOwner:
    """Keeps the lease, announces, and reacts to foreign claims while active.

    `write_lease(deadline_ns)` is given by the daemon (it owns the maps; 0 ends
    the lease); `vips()` returns the VIPs of the current config, read at every
    announcement (the daemon calls `refresh_vips()` after a reload)."""

    def __init__(
        self,
        links: Sequence[Link],
        vips: Callable[[], Sequence[object]],
        write_lease: Callable[[int], None],
        active: bool = True,
    ) -> None:
        self.links = list(links)
        self.vips = vips
        self.write_lease = write_lease
        self.announcer = Announcer(self.links)
        self.watcher = ClaimWatcher(self.links, self._on_claim)
        self.announcements = 0  # rounds sent (all VIPs on all links)
        self.claims_seen = 0  # foreign claims for our VIPs
        self.last_claim: ClaimEvent | None = None
        self._wake = asyncio.Event()
        self._last_reannounce = 0.0
        self.active = active
        self._role_changed = asyncio.Event()

    def _on_claim(self, ev: ClaimEvent) -> None:
        self.claims_seen += 1
        self.last_claim = ev
        now = time.monotonic()
        if now - self._last_reannounce >= REANNOUNCE_MIN_GAP_S:
            self._last_reannounce = now
            log.warning(
                "another MAC claims one of our VIPs while we are active (split brain, a "
                "misconfigured host, or a real server answering ARP for the VIP): "
                "re-announcing",
                extra={
                    "vip": str(ev.claim.vip),
                    "mac": ":".join(f"{b:02x}" for b in ev.claim.mac),
                    "interface": ev.link,
                },
            )
            self._wake.set()

    def announce_now(self) -> None:
        self._wake.set()

    def _announce(self, reason: str) -> None:
        """Runs in an executor thread; cancelling the awaiting task does not stop
        it, so it checks the role before every frame burst: a node that has just
        left the active role must not announce (it would pull traffic back)."""
        vips = list(self.vips())
        if not vips:
            return
        try:
            for i in range(BURST if reason != "refresh" else 1):
                if i:
                    time.sleep(BURST_GAP_S)
                if not self.active:
                    return
                self.announcer.send(vips)  # type: ignore[arg-type]
        except OSError as exc:
            log.error("announcing the VIPs failed", extra={"error": str(exc), "reason": reason})
            return
        self.announcements += 1
        log.info(
            "announced VIPs",
            extra={"vips": len(vips), "links": len(self.links), "reason": reason},
        )

    async def _keep_lease(self) -> None:
        while True:
            self.write_lease(lease_deadline_ns())
            await asyncio.sleep(LEASE_REFRESH_S)

    async def _announce_loop(self) -> None:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        schedule = [start + d for d in REPEATS_S]
        await loop.run_in_executor(None, self._announce, "takeover")
        next_refresh = start + ANNOUNCE_REFRESH_S
        while True:
            due = schedule[0] if schedule else next_refresh
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, due - time.monotonic()))
                self._wake.clear()
                await loop.run_in_executor(None, self._announce, "claim or change")
                continue
            except TimeoutError:
                pass
            if schedule:
                schedule.pop(0)
                await loop.run_in_executor(None, self._announce, "repeat")
            else:
                next_refresh = time.monotonic() + ANNOUNCE_REFRESH_S
                await loop.run_in_executor(None, self._announce, "refresh")

    def set_active(self, active: bool) -> None:
        """Role changes come from the daemon (config today, the cluster later)."""
        if active != self.active:
            self.active = active
            self._role_changed.set()

    async def _own(self) -> None:
        """Lease and announcements, for as long as this task lives."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_lease(), name="lease")
            tg.create_task(self._announce_loop(), name="announce")

    async def run(self) -> None:
        """Own the VIPs while active, until cancelled. Leaving the active role
        ends the lease at once: the XDP responder falls silent immediately."""
        loop = asyncio.get_running_loop()
        self.watcher.vips = set(self.vips())
        try:
            self.watcher.open(loop)
        except OSError as exc:
            log.warning("cannot watch for foreign VIP claims", extra={"error": str(exc)})
        try:
            while True:
                if not self.active:
                    self.write_lease(0)
                    self._role_changed.clear()
                    await self._role_changed.wait()
                    continue
                owning = asyncio.create_task(self._own(), name="vip-ownership")
                self._role_changed.clear()
                await self._role_changed.wait()
                owning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await owning
        finally:
            self.watcher.close(loop)
            self.announcer.close()

    def refresh_vips(self) -> None:
        """After a reload: watch the new VIP set and announce it."""
        self.watcher.vips = set(self.vips())
        self.announce_now()

    def status(self) -> dict[str, object]:
        last = self.last_claim
        return {
            "active": self.active,
            "announcements": self.announcements,
            "foreign_claims": self.claims_seen,
            "last_foreign_claim": (
                {
                    "vip": str(last.claim.vip),
                    "mac": ":".join(f"{b:02x}" for b in last.claim.mac),
                    "interface": last.link,
                }
                if last
                else None
            ),
        }


def link_of(ipr: object, ifname: str) -> Link:
    """An interface's MAC and link-local address, from netlink (pyroute2 IPRoute)."""
    index = ipr.link_lookup(ifname=ifname)  # type: ignore[attr-defined]
    if not index:
        raise OSError(f"no interface {ifname}")
    msg = ipr.get_links(index[0])[0]  # type: ignore[attr-defined]
    mac = bytes.fromhex(str(msg.get_attr("IFLA_ADDRESS")).replace(":", ""))
    ll = None
    for a in ipr.get_addr(index=index[0], family=socket.AF_INET6):  # type: ignore[attr-defined]
        addr = a.get_attr("IFA_ADDRESS")
        if addr and addr.startswith("fe80:"):
            ll = ipaddress.IPv6Address(addr)
            break
    return Link(name=ifname, mac=mac, link_local=ll or link_local_of(mac))


def links_of(names: Sequence[str]) -> list[Link]:
    """The served interfaces as announcement links (one netlink socket)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [link_of(ipr, name) for name in names]
