"""The health view on the cluster channel, as a mixin of ClusterService: the
active publishes the view its tables are built from (HEALTH_VIEW datagrams,
at once on a change and every VIEW_REFRESH_S, and in every bulk resync);
the other nodes build their tables from the last complete view they
received, and run their own checks for `carom status` only. A node that
becomes active keeps the view it followed for TAKEOVER_HOLD_S, then its own
checks drive its tables (docs/cluster.md, "Health view")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from carom.cluster import health_view as hv
from carom.cluster import wire
from carom.cluster.heartbeat import HeartbeatNode, Peer
from carom.cluster.roles import State, Transition
from carom.cluster.wire import Header, MsgType, ViewEntry, ViewPart, WireError
from carom.config.schema import Config
from carom.daemon.image import EffectiveMap, Inputs

log = logging.getLogger("carom.cluster")

VIEW_REFRESH_S = 1.0  # the active re-sends its view this often (a joining or lossy peer)


class HealthViews:
    """The health-view half of ClusterService (which provides these attributes)."""

    host: Any  # service.Host
    node: HeartbeatNode
    stats: Counter[str]
    digest: bytes

    def _init_views(self) -> None:
        self.reassembly = hv.Reassembly()
        # the last complete view received: entries, from whom, when (monotonic)
        self.view: list[ViewEntry] | None = None
        self.view_from = ""
        self.view_at = 0.0
        self.view_hold_until = 0.0  # after a takeover: the received view still drives
        self.view_following = False  # the last apply used the received view
        self.view_unknown = 0  # entries of the last applied view this config lacks
        self._view_dirty = asyncio.Event()
        self._view_cache: tuple[Config | None, list[ViewEntry] | None, hv.Followed | None] = (
            None,
            None,
            None,
        )
        # what this node publishes (while active): its tables' view
        self.published: list[ViewEntry] | None = None
        self.published_parts: list[ViewPart] = []
        self.generation = 0
        self._applied: tuple[Config, Inputs] | None = None
        self._own: EffectiveMap = {}  # this node's own checks, at the last apply
        self._driving: EffectiveMap = {}  # what drove the tables at the last apply

    # --- choosing the health inputs ------------------------------------------------------
    def _follows(self, state: State | None = None) -> bool:
        st = self.node.machine.state if state is None else state
        return hv.follows(st, self.view is not None, time.monotonic(), self.view_hold_until)

    def health_inputs(self, config: Config, own: Inputs) -> Inputs:
        """The health part of the reconciler's inputs (called on the event loop
        before every apply): the received view while this node follows one,
        else its own checks."""
        self._own = dict(own.health)
        if not self._follows() or self.view is None:
            self.view_following = False
            self._driving = self._own
            return own
        cfg, entries, followed = self._view_cache
        if followed is None or cfg is not config or entries is not self.view:
            followed = hv.inputs_of_view(config, self.view, self.view_from)
            self._view_cache = (config, self.view, followed)
            if followed.unknown:
                log.warning(
                    "the active's health view names services or reals this config does not "
                    "have: the configs differ",
                    extra={"peer": self.view_from, "unknown": followed.unknown},
                )
        self.view_unknown = followed.unknown
        self.view_following = True
        self._driving = dict(followed.inputs.health)
        return followed.inputs

    def tables_applied(self, config: Config, inputs: Inputs, digest: bytes | None) -> None:
        """After every successful apply (on the event loop): the fingerprint the
        heartbeats carry, and, on the active, the view its tables now follow."""
        if digest is not None:
            self.digest = digest
            self.stats["fingerprint_updates"] += 1
        self._applied = (config, inputs)
        if self.node.machine.state is State.ACTIVE:
            self._publish()

    # --- publishing (active) ------------------------------------------------------------
    def _publish(self) -> bool:
        """Send the view of the last apply if it changed (a new generation);
        whether it did."""
        if self._applied is None:
            return False
        entries = hv.view_of(*self._applied)
        if entries == self.published:
            return False
        self.generation = (self.generation + 1) & 0xFFFFFFFF
        self.published = entries
        self.published_parts = wire.split_view(self.generation, entries)
        self.stats["view_generations"] += 1
        self._send_view()
        return True

    def _send_view(self) -> None:
        for p in self.published_parts:
            self.node.send(MsgType.HEALTH_VIEW, wire.encode_view_part(p), len(p.entries), False)
            self.stats["view_sent"] += 1

    def view_frames(self) -> list[tuple[bytes, int]]:
        """The view this node's tables follow, as bulk-resync frame payloads (a
        joining node holds it before it can be ready). Empty if this node has
        published none (it is not active)."""
        return [(wire.encode_view_part(p), len(p.entries)) for p in self.published_parts]

    async def _view_refresh(self) -> None:
        while True:
            await asyncio.sleep(VIEW_REFRESH_S)
            if self.node.machine.state is State.ACTIVE and not self._publish():
                self._send_view()  # the same generation again

    # --- following (everyone else) ------------------------------------------------------
    def _on_view(self, peer: Peer, header: Header, payload: bytes) -> None:
        """A HEALTH_VIEW datagram (authenticated, fresh) or bulk frame."""
        try:
            part = wire.decode_view_part(payload, header.count)
        except WireError as exc:
            self.node.dropped[exc.reason] += 1
            return
        self.stats["view_received"] += 1
        entries = self.reassembly.add(header.sender, header.epoch, part)
        if entries is None:
            return
        self.view_at = time.monotonic()
        if entries == self.view and peer.member.name == self.view_from:
            return  # the periodic refresh of the view we have
        changed = entries != self.view
        self.view, self.view_from = entries, peer.member.name
        self.stats["view_changes"] += 1
        if changed and self._follows():
            log.info(
                "following the active's health view",
                extra={
                    "peer": peer.member.name,
                    "generation": part.generation,
                    "entries": len(entries),
                },
            )
            self._view_dirty.set()

    def _views_on_role(self, t: Transition) -> None:
        """Role changes: a takeover keeps the followed view for a while (no table
        change at the moment flows that were not synced arrive), then converges."""
        was = self.view_following
        if t.new is State.ACTIVE and self.view is not None:
            self.view_hold_until = time.monotonic() + hv.TAKEOVER_HOLD_S
            asyncio.get_running_loop().call_later(hv.TAKEOVER_HOLD_S + 0.05, self._view_dirty.set)
            log.info(
                "took over with the health view of %s; own checks drive the tables in %.1f s",
                self.view_from,
                hv.TAKEOVER_HOLD_S,
            )
        if t.new is State.ACTIVE:
            self._publish()
        if self._follows(t.new) != was:
            self._view_dirty.set()

    async def _view_apply(self) -> None:
        """Apply when the view that drives the tables changed (one apply for
        parts and changes that arrive together)."""
        while True:
            await self._view_dirty.wait()
            self._view_dirty.clear()
            try:
                await self.host.reapply()
            except Exception as exc:  # the next view or change retries
                log.error("applying the health view failed", extra={"error": str(exc)})

    def view_status(self, config: Config | None) -> dict[str, Any]:
        age = time.monotonic() - self.view_at if self.view is not None else None
        mode = "own checks"
        if self.view_following:
            st = self.node.machine.state
            mode = "inherited at takeover" if st is State.ACTIVE else "following"
        return {
            "tables_from": mode,
            "peer": self.view_from or None,
            "entries": len(self.view) if self.view is not None else None,
            "received_ms_ago": round(age * 1000) if age is not None else None,
            "unknown": self.view_unknown,
            "published_generation": self.generation if self.published is not None else None,
            "published_entries": len(self.published) if self.published is not None else None,
            "sent": self.stats["view_sent"],
            "received": self.stats["view_received"],
            "disagree": (
                hv.disagreements(config, self._own, self._driving)
                if config is not None and self.view_following
                else []
            ),
        }
