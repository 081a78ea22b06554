"""The cluster, running in the daemon: heartbeats and the role machine drive the
data plane's role and the VIP ownership task; connection events stream to the
peers; synced entries land in the local table; a joining node pulls the peer's
table before it may become active.

Role -> what this node does (docs/cluster.md):

    STARTING, SYNCING, BACKUP   node_cfg.role BACKUP, no lease, no announcements;
                                UNDECIDED instead until some director is known
                                to be active (this node, or a live peer): the
                                data plane then holds frames of flows it cannot
                                place rather than pass them to the local stack,
                                which would reset them (bpf/hold.h)
    ACTIVE                      node_cfg.role ACTIVE, lease renewed, VIPs announced
    RESIGNING                   still forwarding (role ACTIVE, lease renewed) but
                                silent (no announcements, no answer to the peer's
                                claim), until the peer has taken over
    left ACTIVE / RESIGNING     keeps forwarding quietly for GRACE_S (the router
                                may still send a few frames before the new
                                active's announcement lands), then BACKUP
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import numpy as np

from carom import abi
from carom.bpf import libbpf
from carom.cluster import bulk, codec, source, sync, wire
from carom.cluster.heartbeat import HeartbeatNode, Peer
from carom.cluster.roles import VRRP_STATES, State, Transition
from carom.cluster.views import HealthViews
from carom.cluster.watch import Watches
from carom.cluster.wire import ConnRecord, Header, MsgType, Op, WireError
from carom.config.cluster import Cluster

log = logging.getLogger("carom.cluster")

GRACE_S = 0.3  # forwarding after leaving the active role, while the router catches up
BULK_RETRY_S = 0.5


class Host(Protocol):
    """What the service needs from the daemon (carom.daemon.app.Daemon)."""

    dp: Any  # Dataplane
    rec: Any  # Reconciler
    owner: Any  # ownership.VipOwner
    config: Any  # Config

    async def reapply(self) -> None: ...  # apply the config again (inputs changed)


def maglev_digest(rec: Any) -> bytes:
    """16 bytes over every service's Maglev table, with slots mapped to real
    *addresses* (ids are local to each director): equal on two directors iff
    every service would send every flow to the same real. Reals no table uses
    (draining ones, say) do not count."""
    last = rec.last
    if last is None:
        return bytes(16)
    img = last.image
    size = max(img.reals, default=0) + 1
    addr = np.zeros((size, 17), dtype=np.uint8)  # id -> 16 address bytes + family
    for rid, info in img.reals.items():
        addr[rid, :16] = np.frombuffer(bytes(info.addr), dtype=np.uint8)
        addr[rid, 16] = info.family
    h = hashlib.blake2b(digest_size=16)
    per_row: dict[int, bytes] = {}
    for ident in sorted(img.services, key=repr):
        sid = int(img.services[ident].id)
        row = img.rows.get(sid)
        h.update(repr(ident).encode())
        if row is None:
            continue
        digest = per_row.get(id(row))
        if digest is None:
            mapped = addr[np.minimum(row, size - 1)]
            digest = hashlib.blake2b(mapped.tobytes(), digest_size=16).digest()
            per_row[id(row)] = digest
        h.update(digest)
    return h.digest()


class ClusterService(Watches, HealthViews):
    """One director's part of the cluster protocol (a daemon task)."""

    def __init__(self, host: Host, cluster: Cluster) -> None:
        self.host = host
        self.cluster = cluster
        self.stats: Counter[str] = Counter()
        self.digest = bytes(16)
        self.node = HeartbeatNode(
            cluster,
            on_role=self._on_role,
            synced=lambda: self.bulk_done,
            fingerprint=lambda: self.digest,
            conns=lambda: self.conns,
            on_message=self._on_message,
            held_by=self._held_by,
        )
        self.claims: dict[int, float] = {}  # peer id -> monotonic time of its last claim
        self.down_hosts: set[Any] = set()  # addresses of peer hosts found gone
        self.key = self.node.key
        self.bulk_done = False
        self.progress = bulk.Progress()
        self.live_keys: set[bytes] | None = None  # flows the stream touched during a pull
        self.gaps = self.node.gaps  # over every datagram: the sequence is shared
        self.batcher = sync.Batcher(self._send_batch)  # records made one by one
        self.raw_batcher = sync.RawBatcher(self._send_raw, codec.REC4_DT.itemsize)  # numpy-encoded
        self.source: source.Source | source.RawRingSource | None = None
        self.conns = 0
        self.forwarding = False  # data plane role ACTIVE (active, resigning or in grace)
        self._grace: asyncio.TimerHandle | None = None
        self._pull: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._real_map: codec.RealMap | None = None
        self._real_map_of: object = None
        self._init_views()
        # the daemon's "put the VIPs on lo", run once this node's role is decided
        self.when_decided: Callable[[], Coroutine[Any, Any, None]] | None = None
        self.decided = False
        # Some director was seen active since start-up (this one, or a live peer):
        # a non-forwarding data plane is a BACKUP from then on, UNDECIDED before.
        self.active_known = False
        self.server = bulk.BulkServer(
            self.key,
            cluster.me.id,
            {a: m.id for m in cluster.peers for a in m.addresses},
            self._snapshot,
            views=self.view_frames,
        )

    # --- the data plane follows the role ----------------------------------------------
    @classmethod
    def attach(cls, host: Host, cluster: Cluster | None) -> ClusterService | None:
        """Called before the first apply: a cluster node starts as a backup (it
        must not schedule before it holds the table), whatever node.role says."""
        if cluster is None:
            return None
        # Not BACKUP: with no active director known (both daemons restarted) the
        # router still sends to the old active, whose stack would reset flows
        # other reals serve; UNDECIDED holds them for the next active (hold.h).
        host.rec.role_override = abi.Role.UNDECIDED
        return cls(host, cluster)

    def config_changed(self) -> None:
        """After every apply: the tables may have changed."""
        self.digest = maglev_digest(self.host.rec)
        self.stats["fingerprint_updates"] += 1

    def _on_role(self, t: Transition) -> None:
        log.info(
            "cluster role %s -> %s: %s",
            t.old.value,
            t.new.value,
            t.reason,
            extra={"from": t.old.value, "to": t.new.value, "reason": t.reason},
        )
        owner, rec = self.host.owner, self.host.rec
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if t.new is State.ACTIVE:
            self.active_known = True  # this node: BACKUP, not UNDECIDED, when it stands down
            rec.set_role(abi.Role.ACTIVE)
            self.forwarding = True
            owner.announcing = True
            if owner.active:  # back within the grace period: announce again
                owner.announce_now()
            else:
                owner.set_active(True)
        elif t.new is State.RESIGNING:
            owner.announcing = False  # keep forwarding, let the peer announce
        elif t.old in (State.ACTIVE, State.RESIGNING) and t.new is not State.FAULT:
            owner.announcing = False
            self._grace = asyncio.get_running_loop().call_later(GRACE_S, self._end_grace)
        else:
            self._stand_down()
        if t.new is State.SYNCING:
            self.bulk_done = False
            self._start_pull()
        self._views_on_role(t)

    def _end_grace(self) -> None:
        self._grace = None
        if self.node.machine.state is not State.ACTIVE:
            self._stand_down()

    def _stand_down(self) -> None:
        self.host.owner.set_active(False)
        self.host.rec.set_role(self._idle_role())
        self.forwarding = False

    def _idle_role(self) -> abi.Role:
        """The data-plane role of a node that does not forward (bpf/hold.h)."""
        return abi.Role.BACKUP if self.active_known else abi.Role.UNDECIDED

    def _saw_active(self) -> None:
        """Some director is active: a node not forwarding becomes a plain BACKUP,
        whose stack gets what the active schedules to it even without an entry."""
        if self.active_known:
            return
        self.active_known = True
        if not self.forwarding:
            self.host.rec.set_role(abi.Role.BACKUP)
        log.info("an active director is known: node_cfg.role no longer UNDECIDED")

    # --- sending ------------------------------------------------------------------------
    def _send_batch(self, batch: list[ConnRecord]) -> None:
        payload = b"".join(wire.encode_record(r) for r in batch)
        self.node.send(MsgType.CONN_SYNC, payload, len(batch), all_paths=False)
        self.stats["sent_records"] += len(batch)
        self.stats["sent_datagrams"] += 1

    def _drain_events(self) -> None:
        src = self.source
        if src is None:
            return
        try:
            if isinstance(src, source.RawRingSource):
                raw = src.drain_raw()
                if raw and self.forwarding:
                    self._queue_raw(raw)
                return
            events = src.drain()
        except OSError as exc:
            self.stats["source_errors"] += 1
            log.error("reading connection events failed", extra={"error": str(exc)})
            return
        self._queue_events(events)

    def _queue_raw(self, raw: bytes) -> None:
        """A drain of ring-buffer records: one numpy pass, IPv4 into the raw
        batcher, the rest (IPv6) through the record batcher."""
        reals = self._reals()
        enc = codec.encode_events(raw, reals, time.monotonic_ns())
        self.stats["unknown_real_out"] += enc.unknown_real
        self.raw_batcher.add(enc.fast, enc.fast_count)
        for r in enc.slow:
            self.batcher.add(r)

    def _send_raw(self, payload: bytes, count: int) -> None:
        self.node.send(MsgType.CONN_SYNC, payload, count, all_paths=False)
        self.stats["sent_records"] += count
        self.stats["sent_datagrams"] += 1

    async def _events(self) -> None:
        self.source = src = source.open_source(self.host.dp)
        fd = src.fileno()
        try:
            if fd is not None:
                loop = asyncio.get_running_loop()
                loop.add_reader(fd, self._drain_events)
                try:
                    while True:  # the reader does the work; also catch stragglers
                        await asyncio.sleep(0.5)
                        self._drain_events()
                finally:
                    loop.remove_reader(fd)
            else:
                while True:
                    await asyncio.to_thread(self._scan_once)
                    await asyncio.sleep(source.SCAN_S)
        finally:
            src.close()

    def _scan_once(self) -> None:
        # the dump runs in a thread; queueing records happens on the loop
        assert self.source is not None
        events = self.source.drain()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue_events, events)

    def _queue_events(self, events: list[source.Event]) -> None:
        if not self.forwarding:
            return  # a backup's data plane creates nothing worth sending
        reals = self.host.rec.current.reals
        for ev in events:
            info = reals.get(ev.real_id)
            if info is None or not info.family:
                self.stats["unknown_real_out"] += 1
                continue
            self.batcher.add(sync.record_of(Op.UPSERT, ev.key, info.addr.to_ip(info.family), 0))

    # --- receiving ----------------------------------------------------------------------
    def _reals(self) -> codec.RealMap:
        """This node's reals both ways; rebuilt only when an apply changed them."""
        ids = self.host.rec.real_ids
        if self._real_map is None or self._real_map_of is not ids:
            self._real_map, self._real_map_of = codec.RealMap.of(ids), ids
        return self._real_map

    def _on_message(self, peer: Peer, header: Header, payload: bytes) -> None:
        if header.type is MsgType.HEALTH_VIEW:
            self._on_view(peer, header, payload)
            return
        if header.type is not MsgType.CONN_SYNC:
            self.stats["unexpected_type"] += 1
            return
        try:
            res = codec.apply_payload(
                payload,
                header.count,
                self.host.dp["conn_table"],
                self._reals(),
                time.monotonic_ns(),
                want_keys=self.live_keys is not None,
            )
        except WireError as exc:
            self.node.dropped[exc.reason] += 1
            return
        except OSError as exc:
            self.stats["apply_errors"] += 1
            log.error("writing synced entries failed", extra={"error": str(exc)})
            return
        if self.live_keys is not None and res.keys:
            self.live_keys.update(res.keys)
        self.stats["received_records"] += header.count
        self.stats["applied"] += res.applied
        self.stats["unknown_real"] += res.unknown_real

    # --- bulk resync --------------------------------------------------------------------
    def _snapshot(self) -> list[tuple[bytes, int]]:
        """The whole table as frame payloads (runs in a worker thread)."""
        dp, cfg = self.host.dp, self.host.config
        m = dp["conn_table"]
        idle = max(cfg.timeouts.tcp_idle, cfg.timeouts.udp_idle) * 10**9
        dump = libbpf.map_lookup_batch_raw(
            m.fd, m.key_size, m.value_size, m.max_entries, chunk=16384
        )
        return list(bulk.snapshot_pieces(dump, self._reals(), idle, time.monotonic_ns))

    def _pull_target(self) -> Peer | None:
        now = time.monotonic()
        live = self.node.members.live_peers(now)
        if not live:
            return None
        actives = [p for p in live if p.heartbeat and p.heartbeat.role == wire.Role.ACTIVE]
        return (actives or sorted(live, key=lambda p: (-p.member.priority, p.member.id)))[0]

    def _apply_chunk(self, conns: Any, reals: codec.RealMap, payload: bytes, count: int) -> None:
        """One snapshot chunk into the table; flows the stream updated are skipped."""
        assert self.live_keys is not None
        res = codec.apply_payload(
            payload, count, conns, reals, time.monotonic_ns(), skip=self.live_keys
        )
        self.progress.applied += res.applied
        self.progress.skipped += res.skipped
        self.progress.unknown_real += res.unknown_real

    def _local_for(self, peer: Peer) -> str | None:
        """Our member address of the peer's family (the peer checks the source)."""
        fam = peer.member.addresses[0].version
        mine = [a for a in self.cluster.me.addresses if a.version == fam]
        return str(mine[0]) if mine else None

    def _start_pull(self) -> None:
        if self._pull is None or self._pull.done():
            self._pull = asyncio.get_running_loop().create_task(self._pull_loop(), name="bulk-pull")

    async def _pull_loop(self) -> None:
        while self.node.machine.state is State.SYNCING and not self.bulk_done:
            peer = self._pull_target()
            if peer is None:
                return  # decide() moves on: nobody to pull from
            self.progress = bulk.Progress()
            self.live_keys = set()

            chunk = functools.partial(self._apply_chunk, self.host.dp["conn_table"], self._reals())
            try:
                await bulk.pull(
                    self.key,
                    self.cluster.me.id,
                    peer.member.id,
                    str(peer.member.addresses[0]),
                    self.cluster.port,
                    chunk,
                    self.progress,
                    local=self._local_for(peer),
                    on_view=functools.partial(self._on_view, peer),
                )
            except (bulk.BulkError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.progress.state, self.progress.error = "failed", str(exc)
                self.stats["bulk_failures"] += 1
                log.warning("bulk resync failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(BULK_RETRY_S)
                continue
            finally:
                self.live_keys = None
            self.bulk_done = True
            log.info(
                "bulk resync complete",
                extra={
                    "peer": peer.member.name,
                    "records": self.progress.records,
                    "skipped_newer": self.progress.skipped,
                    "seconds": self.progress.seconds,
                },
            )
            self.node.step()

    # --- commands -----------------------------------------------------------------------
    def vrrp(self, state: str) -> dict[str, Any]:
        """keepalived mode: a notify script reports the VRRP state; carom follows
        (and still goes active only once it holds the connection table)."""
        if self.cluster.election != "keepalived":
            return {
                "ok": False,
                "error": "cluster.election is builtin: carom elects the active director itself",
            }
        want = state.lower()
        if want not in VRRP_STATES:
            expected = ", ".join(VRRP_STATES)
            return {"ok": False, "error": f"VRRP state {state!r}: expected one of {expected}"}
        old, self.node.vrrp = self.node.vrrp, want
        log.info("keepalived reports VRRP state %s", want, extra={"previous": old})
        self.node.step()
        return {"ok": True, "vrrp": want, "role": self.node.machine.state.value}

    def switchover(self) -> dict[str, Any]:
        """Planned switchover: resign now; the best ready peer takes over."""
        st = self.node.machine.state
        if self.cluster.election == "keepalived":
            return {"ok": False, "error": "keepalived decides the roles: switch over with it"}
        if st is not State.ACTIVE:
            active = [
                p.member.name
                for p in self.node.members.live_peers(time.monotonic())
                if p.heartbeat and p.heartbeat.role == wire.Role.ACTIVE
            ]
            where = f" (the active director is {active[0]})" if active else ""
            return {"ok": False, "error": f"this node is {st.value}, not active{where}"}
        ready = [
            p
            for p in self.node.members.live_peers(time.monotonic())
            if p.heartbeat and p.heartbeat.ready
        ]
        if not ready:
            return {"ok": False, "error": "no peer is ready to take over; nothing changed"}
        self.node.preempt = False  # do not take the role straight back
        self.node.resign()
        return {"ok": True, "resigned": True, "to": [p.member.name for p in ready]}

    def _state(self) -> State:
        return self.node.machine.state

    async def leave(self, timeout: float = 2.0) -> None:
        """Before the daemon stops: an active director hands over first (a
        planned switchover), so stopping or restarting it moves no flow through
        a failure detection. Returns when the peer is active, or at the timeout."""
        if self.node.machine.state is not State.ACTIVE:
            return
        reply = self.switchover()
        if not reply.get("ok"):
            log.warning("stopping without a handover", extra={"why": reply.get("error")})
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._state() is State.RESIGNING:
            await asyncio.sleep(0.02)
        await asyncio.sleep(GRACE_S)  # frames the router still sends us are forwarded
        log.info("handed over before stopping", extra={"role": self.node.machine.state.value})

    # --- running ------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.config_changed()
        if self.host.owner is not None:
            self.host.owner.on_foreign_claim = self.on_claim
        servers = []
        for addr in self.cluster.me.addresses:
            servers.append(
                await asyncio.start_server(self.server.handle, str(addr), self.cluster.port)
            )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.node.run(), name="cluster-heartbeat")
                tg.create_task(self.batcher.run(), name="cluster-sync-batcher")
                tg.create_task(self.raw_batcher.run(), name="cluster-sync-raw-batcher")
                tg.create_task(self._events(), name="cluster-sync-events")
                tg.create_task(self._count_conns(), name="cluster-conns")
                tg.create_task(self._watch_links(), name="cluster-links")
                tg.create_task(self._probe_while_held(), name="cluster-vip-probe")
                tg.create_task(self._watch_peer_hosts(), name="cluster-peer-hosts")
                tg.create_task(self._view_refresh(), name="cluster-view-refresh")
                tg.create_task(self._view_apply(), name="cluster-view-apply")
                tg.create_task(self._until_decided(), name="cluster-vips-on-lo")
        finally:
            for s in servers:
                s.close()
            if self._pull is not None:
                self._pull.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pull

    async def _until_decided(self) -> None:
        """Run when_decided once some director forwards: this node is active,
        or a backup with a live active peer (which may schedule flows to it).
        Until then nobody forwards (both directors restarted) and the router
        still sends VIP traffic to the old active: with no VIP on lo its stack
        drops it (the clients retransmit) instead of resetting flows it does
        not serve."""
        while not self.decided:
            st = self.node.machine.state
            peer_active = self.node.members.peer_active(time.monotonic())
            if st is State.ACTIVE or peer_active:
                self._saw_active()
            if st is State.ACTIVE or (st is State.BACKUP and peer_active):
                self.decided = True
                log.info("role decided: putting the VIPs on lo", extra={"role": st.value})
                if self.when_decided is not None:
                    await self.when_decided()
                return
            await asyncio.sleep(0.02)

    async def _count_conns(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.conns = await asyncio.to_thread(self.host.dp["conn_table"].count)
            await asyncio.sleep(1.0)

    def status(self) -> dict[str, Any]:
        st = self.node.status()
        p = self.progress
        st.update(
            {
                "preempt": self.node.preempt,
                "election": self.cluster.election,
                "peer_hosts_down": sorted(str(a) for a in self.down_hosts),
                "vrrp": self.node.vrrp,
                "forwarding": self.forwarding,
                "fingerprint": self.digest.hex(),
                "fingerprints_agree": not self.node.mismatch,
                "health_view": self.view_status(self.host.config),
                "sync": {
                    "source": self.source.name if self.source else None,
                    "source_lost": self.source.lost if self.source else 0,
                    "sent_records": self.stats["sent_records"],
                    "sent_datagrams": self.stats["sent_datagrams"],
                    "received_records": self.stats["received_records"],
                    "applied": self.stats["applied"],
                    "gaps": self.gaps.gaps,
                    "rejected": sum(self.node.dropped.values()),
                    "unknown_real": self.stats["unknown_real"],
                    "peer_claims": self.stats["peer_claims"],
                    "batch_delay_ms": self.batcher.max_delay * 1000,
                },
                "bulk": {
                    "done": self.bulk_done,
                    "state": p.state,
                    "peer": p.peer,
                    "records": p.records,
                    "applied": p.applied,
                    "skipped_newer": p.skipped,
                    "unknown_real": p.unknown_real,
                    "seconds": p.seconds,
                    "error": p.error,
                    "served": self.server.served,
                },
            }
        )
        return st
