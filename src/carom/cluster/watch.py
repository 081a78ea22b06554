"""What the cluster learns besides heartbeats, as a mixin of ClusterService:
the served interfaces' state (FAULT while one is down), a silent peer's claims
of the VIPs (split brain: it is alive and active although its heartbeats are
lost) and whether a silent peer's host still answers (if not, its reals are
down and their flows move). See docs/cluster.md."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from carom.cluster import probe
from carom.cluster.heartbeat import HeartbeatNode
from carom.cluster.roles import State, Transition
from carom.config.cluster import Cluster

log = logging.getLogger("carom.cluster")

LINK_POLL_S = 0.1  # how often the served interfaces' state is read
# Split brain: a better-ranked peer whose heartbeats are lost but which claimed
# the VIPs after its last heartbeat holds this node back for HOLD_S after that
# claim; while held, the node asks who answers for the VIPs every PROBE_S.
HOLD_S = 1.5
PROBE_S = 0.5
# A peer silent on heartbeats while we are active: is its host gone too (its
# reals' flows must move), or only its daemon (they must stay)? A TCP connect
# to one of its service ports answers (accepted or refused: the host lives).
HOST_PROBE_S = 0.5
HOST_PROBE_TIMEOUT_S = 0.3


class Watches:
    """The watching half of ClusterService (which provides these attributes)."""

    host: Any  # service.Host
    cluster: Cluster
    node: HeartbeatNode
    stats: Counter[str]
    claims: dict[int, float]  # peer id -> monotonic time of its last claim
    down_hosts: set[Any]  # addresses of peer hosts found gone
    bulk_done: bool

    def _on_role(self, t: Transition) -> None:
        raise NotImplementedError

    # --- split brain: a peer's claims as a sign of life ----------------------------------
    def _member_of_mac(self, mac: bytes) -> int | None:
        """The member whose address has this MAC (directors that are also reals:
        the reconciler knows their MACs from the neighbour table). One MAC may
        carry several reals (IPv4 and IPv6 of one host): any of them counts."""
        by_address = self.node.members.by_address
        for info in self.host.rec.current.reals.values():
            if info.family and bytes(info.mac) == bytes(mac):
                pid = by_address.get(info.addr.to_ip(info.family))
                if pid is not None:
                    return pid
        return None

    def on_claim(self, ev: Any) -> None:
        """The ownership task saw another MAC claim one of our VIPs."""
        pid = self._member_of_mac(ev.claim.mac)
        if pid is not None:
            self.claims[pid] = time.monotonic()
            self.stats["peer_claims"] += 1
            self.node.step()

    def _held_by(self, now: float) -> str | None:
        me = self.cluster.me
        for p in self.node.members.peers.values():
            seen = self.claims.get(p.member.id)
            if (
                seen is not None
                and now - seen <= HOLD_S
                and not self.node.members.alive(p, now)
                and (p.last_seen is None or seen > p.last_seen)
                and (-p.member.priority, p.member.id) < (-me.priority, me.id)
            ):
                return p.member.name
        return None

    async def _probe_while_held(self) -> None:
        """Keep asking who answers for the VIPs while a silent peer holds us back:
        its data plane answers only while its daemon lives, so the hold ends
        HOLD_S after it really dies."""
        while True:
            await asyncio.sleep(PROBE_S)
            if self._held_by(time.monotonic()) is None:
                continue
            owner = self.host.owner
            me4 = [a for a in self.cluster.me.addresses if a.version == 4]
            if not me4 or owner is None:
                continue
            try:
                await asyncio.to_thread(probe.ask, owner.links, me4[0], owner.vips())
                self.stats["vip_probes"] += 1
            except OSError as exc:
                log.warning("cannot ask who answers for the VIPs", extra={"error": str(exc)})

    # --- a dead peer's host: its reals' flows move ---------------------------------------
    def _tcp_port_of(self, address: Any) -> int | None:
        for svc in self.host.config.services:
            if (
                svc.protocol == "tcp"
                and svc.port_number
                and any(r.address == address for r in svc.reals)
            ):
                return int(svc.port_number)
        return None

    def _same_host(self, addresses: set[Any]) -> set[Any]:
        """Reals that share a MAC with one of `addresses` (a host's IPv6 next to
        its IPv4)."""
        reals = self.host.rec.current.reals.values()
        macs = {bytes(i.mac) for i in reals if i.family and i.addr.to_ip(i.family) in addresses} - {
            bytes(6)
        }
        return {i.addr.to_ip(i.family) for i in reals if i.family and bytes(i.mac) in macs}

    @staticmethod
    async def _host_alive(address: Any, port: int) -> bool:
        try:
            _, w = await asyncio.wait_for(
                asyncio.open_connection(str(address), port), HOST_PROBE_TIMEOUT_S
            )
        except ConnectionRefusedError:
            return True  # a stack answered: the host lives
        except (OSError, TimeoutError):
            return False
        w.close()
        return True

    async def _watch_peer_hosts(self) -> None:
        """While active: the hosts of heartbeat-dead peers that do not answer are
        down, so their reals get no new flows and their flows move (the data
        plane resets them quickly from a live real instead of a black hole)."""
        while True:
            await asyncio.sleep(HOST_PROBE_S)
            now = time.monotonic()
            down: set[Any] = set()
            if self.node.machine.state is State.ACTIVE:
                for p in self.node.members.peers.values():
                    if self.node.members.alive(p, now):
                        continue
                    for a in p.member.addresses:
                        port = self._tcp_port_of(a)
                        if port is not None and not await self._host_alive(a, port):
                            down |= set(p.member.addresses)
                down |= self._same_host(down)
            if down != self.down_hosts:
                log.warning(
                    "peer director hosts unreachable: their reals are down, their flows move"
                    if down
                    else "peer director hosts reachable again",
                    extra={"down": sorted(str(a) for a in down)},
                )
                self.down_hosts = down
                try:
                    await self.host.reapply()
                except Exception as exc:  # the next round tries again
                    log.error("applying the peers' host state failed", extra={"error": str(exc)})
                    self.down_hosts = set()

    # --- interfaces: FAULT while one is down ---------------------------------------------
    def link_down(self) -> list[str]:
        """Served interfaces whose operational state is down (carrier lost, or
        set down): this node cannot serve, and a peer must not count on it."""
        down = []
        for name in self.host.config.interfaces:
            try:
                state = Path(f"/sys/class/net/{name}/operstate").read_text().strip()
            except OSError:
                state = "missing"
            if state not in ("up", "unknown"):
                down.append(f"{name} {state}")
        return down

    def _fault_step(self, down: list[str]) -> None:
        st = self.node.machine.state
        if down and st is not State.FAULT:
            t = self.node.machine.go(State.FAULT, f"interface {', '.join(down)}", time.monotonic())
            if t is not None:
                self._on_role(t)
        elif not down and st is State.FAULT:
            t = self.node.machine.go(
                State.STARTING, "interfaces up again: starting over", time.monotonic()
            )
            self.node.holddown_until = (
                time.monotonic()
                + self.node.members.dead_s
                + random.uniform(0, 2 * self.node.interval)
            )
            self.bulk_done = False
            if t is not None:
                self._on_role(t)

    async def _watch_links(self) -> None:
        while True:
            self._fault_step(await asyncio.to_thread(self.link_down))
            await asyncio.sleep(LINK_POLL_S)
