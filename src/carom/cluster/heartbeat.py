"""Heartbeats between directors, failure detection, and the role decision.

Pure core: `Membership` (who is alive, from heartbeats and a clock passed in)
and `decide` (the next role, from the role machine's state and the election).
Thin I/O: `HeartbeatNode`, an asyncio UDP endpoint that sends a heartbeat to
every peer address every interval, authenticates and de-duplicates what it
receives, and calls `on_role` when the role changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from carom.cluster import wire
from carom.cluster.roles import Candidate, RoleMachine, State, Transition, elect
from carom.cluster.sync import GapTracker
from carom.cluster.wire import Header, Heartbeat, MsgType, ReplayWindow, WireError
from carom.config.cluster import Cluster, Member
from carom.config.fields import IPAddress

log = logging.getLogger("carom.cluster")

WIRE_ROLE = {
    State.STARTING: wire.Role.STARTING,
    State.SYNCING: wire.Role.SYNCING,
    State.BACKUP: wire.Role.BACKUP,
    State.ACTIVE: wire.Role.ACTIVE,
    State.RESIGNING: wire.Role.BACKUP,
    State.FAULT: wire.Role.FAULT,
}
# Datagrams accepted per peer per second before the rest are dropped (a
# misbehaving or compromised peer cannot starve the daemon).
RATE_PER_PEER = 20000
READ_BATCH = 64  # datagrams read per wake-up of the socket
RECV_SIZE = 65536
REC4_SIZE = wire.record_size(4, 4)  # an IPv4 flow to an IPv4 real


@dataclass
class Peer:
    """What this node knows of one other member."""

    member: Member  # its config
    last_seen: float | None = None  # monotonic time of its last valid heartbeat
    heartbeat: Heartbeat | None = None  # the last one
    paths: dict[IPAddress, float] = field(default_factory=dict)  # source -> last seen
    window: ReplayWindow = field(default_factory=ReplayWindow)
    resigned: bool = False  # it sent RESIGN and has not been active since


class Membership:
    """Peers and their liveness. A peer is alive if its last heartbeat is newer
    than dead_after intervals."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.dead_s = cluster.dead_after * cluster.heartbeat_ms / 1000
        self.peers = {m.id: Peer(m) for m in cluster.peers}
        self.by_address = {a: m.id for m in cluster.peers for a in m.addresses}

    def alive(self, peer: Peer, now: float) -> bool:
        return peer.last_seen is not None and now - peer.last_seen <= self.dead_s

    def live_peers(self, now: float) -> list[Peer]:
        return [p for p in self.peers.values() if self.alive(p, now)]

    def peer_active(self, now: float) -> bool:
        """A live peer says it is the active director."""
        return any(
            p.heartbeat is not None and p.heartbeat.role == wire.Role.ACTIVE
            for p in self.live_peers(now)
        )

    def on_heartbeat(self, peer: Peer, source: IPAddress, hb: Heartbeat, now: float) -> None:
        peer.last_seen = now
        peer.heartbeat = hb
        peer.paths[source] = now
        if hb.role == wire.Role.ACTIVE:
            peer.resigned = False

    def candidates(self, me: Candidate, now: float) -> list[Candidate]:
        out = [me]
        for p in self.live_peers(now):
            hb = p.heartbeat
            assert hb is not None
            out.append(
                Candidate(
                    node_id=p.member.id,
                    priority=p.member.priority,
                    active=hb.role == wire.Role.ACTIVE and not p.resigned,
                    ready=hb.ready and not p.resigned,
                    preempt=hb.preempt,
                )
            )
        return out


@dataclass(frozen=True)
class Inputs:
    """Everything `decide` looks at, at one instant."""

    state: State  # current role
    now: float  # monotonic seconds
    holddown_until: float  # STARTING lasts at least until then
    peers_alive: int  # live peers
    synced: bool  # bulk resync complete and the stream caught up
    elected: bool  # the election picks this node
    peer_active: bool  # some live peer says it is active
    resign_expired: bool = False  # RESIGNING for longer than a peer needs to take over
    # A better-ranked peer whose heartbeats are lost but which claimed the VIPs
    # since (split brain: the sync path is cut, the peer is alive and active).
    held_by: str | None = None


def decide(i: Inputs) -> tuple[State, str] | None:
    """The next role and why, or None to stay. Only allowed transitions come out."""
    if i.state is State.STARTING:
        if i.now < i.holddown_until:
            return None
        if i.peers_alive:
            return State.SYNCING, "a peer is alive: pulling its connection table first"
        return State.BACKUP, "no peer heard during the start-up hold-down"
    if i.state is State.SYNCING:
        if i.synced:
            return State.BACKUP, "connection table synced from the peer"
        if not i.peers_alive:
            return State.BACKUP, "the peer died during the resync: nothing more to pull"
        return None
    if i.state is State.BACKUP:
        if i.held_by:
            return None
        if i.elected:
            why = "elected: no live active director" if not i.peer_active else "elected"
            return State.ACTIVE, why
        return None
    if i.state is State.ACTIVE:
        if i.held_by:
            return State.BACKUP, (
                f"split brain: {i.held_by} ranks better and claims the VIPs although its "
                "heartbeats are lost"
            )
        if not i.elected:
            return State.BACKUP, "another director won the election"
        return None
    if i.state is State.RESIGNING:
        if i.peer_active:
            return State.BACKUP, "the peer took over"
        if i.resign_expired or not i.peers_alive:
            return State.BACKUP, "no peer took over: standing for election again"
        return None
    return None


RCVBUF = 8 << 20  # a burst of sync datagrams must not overflow the socket


def _big_buffer(t: asyncio.DatagramTransport) -> None:
    """Room for bursts of sync datagrams (SO_RCVBUFFORCE: root may pass rmem_max)."""
    sock = t.get_extra_info("socket")
    for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
            return
        except OSError:
            continue


class HeartbeatNode:
    """The running heartbeat protocol of one director."""

    def __init__(
        self,
        cluster: Cluster,
        on_role: Callable[[Transition], None],
        synced: Callable[[], bool] = lambda: True,
        fingerprint: Callable[[], bytes] = lambda: bytes(16),
        conns: Callable[[], int] = lambda: 0,
        on_message: Callable[[Peer, Header, bytes], None] | None = None,
        held_by: Callable[[float], str | None] = lambda _now: None,
    ) -> None:
        self.cluster = cluster
        self.me = cluster.me
        self.key = cluster.key()
        self.on_role = on_role
        self.synced = synced
        self.fingerprint = fingerprint
        self.conns = conns
        # Sync and bulk messages, after authentication and the replay window.
        self.on_message = on_message
        self.held_by = held_by
        self.last_step: float | None = None  # a gap between steps is a stalled daemon
        # Whether this node takes the role back when better-ranked and ready; a
        # planned switchover turns it off (the resigning node must not preempt
        # straight back).
        self.preempt = cluster.preempt
        # keepalived mode: the VRRP state its notify scripts last reported
        # (roles.VRRP_STATES); the election is not consulted.
        self.vrrp: str | None = None
        self.machine = RoleMachine()
        self.members = Membership(cluster)
        self.epoch = time.time_ns() // 1_000_000
        self.seq = 0
        self.interval = cluster.heartbeat_ms / 1000
        self.holddown_until = float("inf")  # set when run() starts listening
        self.dropped: Counter[str] = Counter()
        self.gaps = GapTracker()  # datagrams of a peer that never arrived
        self.received = 0
        self.sent = 0
        self._rate: dict[int, tuple[float, int]] = {}
        self.transports: list[asyncio.DatagramTransport] = []
        self.mismatch: set[int] = set()
        self.resigned_at = 0.0

    # --- sending ----------------------------------------------------------------------
    def _datagram(self, mtype: MsgType, payload: bytes, count: int = 0) -> bytes:
        self.seq += 1
        header = Header(mtype, self.me.id, self.epoch, self.seq, count)
        return wire.seal(self.key, header, payload)

    def _differs(self) -> bool:
        """Our tables differ from those of a live peer."""
        now = time.monotonic()
        return any(self.members.alive(self.members.peers[i], now) for i in self.mismatch)

    def heartbeat(self) -> Heartbeat:
        st = self.machine.state
        return Heartbeat(
            name=self.me.name,
            priority=self.me.priority,
            role=WIRE_ROLE[st],
            ready=st in (State.BACKUP, State.ACTIVE) and not self._differs(),
            preempt=self.preempt,
            fingerprint=self.fingerprint(),
            conns=self.conns(),
        )

    def send(
        self, mtype: MsgType, payload: bytes = b"", count: int = 0, all_paths: bool = True
    ) -> None:
        """To every peer: over every path (heartbeats), or over the first path
        only (sync: one copy, so a receiver does not count the others as replays)."""
        data = self._datagram(mtype, payload, count)
        for peer in self.members.peers.values():
            addrs = peer.member.addresses if all_paths else peer.member.addresses[:1]
            for addr in addrs:
                for t in self.transports:
                    try:
                        t.sendto(data, (str(addr), self.cluster.port))
                        self.sent += 1
                    except OSError:
                        self.dropped["send_error"] += 1

    # --- receiving --------------------------------------------------------------------
    def datagram(self, data: bytes, source: IPAddress) -> None:
        """One received datagram: authenticate, de-duplicate, dispatch."""
        self.datagrams([(data, source)])

    def datagrams(self, batch: Iterable[tuple[bytes, IPAddress]]) -> None:
        """Datagrams read in one wake-up, each authenticated and de-duplicated in
        order. A run of consecutive CONN_SYNC datagrams of one sender whose
        payloads are all IPv4 records reaches on_message as one payload (one
        batched map write instead of one per datagram: half the receiver's CPU
        at 200k flows/s); the role decision runs once, after the batch."""
        now = time.monotonic()
        run: list[tuple[Peer, Header, bytes]] = []
        accepted = False
        for data, source in batch:
            got = self._accept(data, source, now)
            if got is None:
                continue
            accepted = True
            peer, header, payload = got
            if self._joinable(header, payload):
                if run and (run[0][0] is not peer or run[0][1].epoch != header.epoch):
                    self._deliver(run)
                    run = []
                run.append(got)
                continue
            self._deliver(run)
            run = []
            self._dispatch(peer, header, payload, source, now)
        self._deliver(run)
        if accepted:
            self.step(now)

    def _accept(
        self, data: bytes, source: IPAddress, now: float
    ) -> tuple[Peer, Header, bytes] | None:
        pid = self.members.by_address.get(source)
        if pid is None:
            self.dropped["unknown_sender"] += 1
            return None
        start, n = self._rate.get(pid, (now, 0))
        if now - start >= 1.0:
            start, n = now, 0
        self._rate[pid] = (start, n + 1)
        if n >= RATE_PER_PEER:
            self.dropped["rate_limited"] += 1
            return None
        try:
            header, payload = wire.open_datagram(self.key, data)
        except WireError as exc:
            self.dropped[exc.reason] += 1
            return None
        peer = self.members.peers.get(header.sender)
        if peer is None or header.sender != pid:
            self.dropped["unknown_sender"] += 1
            return None
        reason = peer.window.accept(header.epoch, header.seq)
        if reason:
            self.dropped[reason] += 1
            return None
        # Heartbeats and sync share the sender's sequence: tracked here, on every
        # accepted datagram, so a heartbeat between two sync datagrams is no gap.
        self.gaps.see(header.sender, header.epoch, header.seq)
        self.received += 1
        return peer, header, payload

    def _joinable(self, header: Header, payload: bytes) -> bool:
        """A CONN_SYNC payload of IPv4 records only: payloads like it can be
        concatenated (records are self-delimiting; the counts add up)."""
        return (
            header.type is MsgType.CONN_SYNC
            and self.on_message is not None
            and len(payload) == header.count * REC4_SIZE
        )

    def _deliver(self, run: list[tuple[Peer, Header, bytes]]) -> None:
        if not run or self.on_message is None:
            return
        if len(run) == 1:
            self.on_message(*run[0])
            return
        header = dataclasses.replace(run[-1][1], count=sum(h.count for _, h, _ in run))
        self.on_message(run[0][0], header, b"".join(p for _, _, p in run))

    def _dispatch(
        self, peer: Peer, header: Header, payload: bytes, source: IPAddress, now: float
    ) -> None:
        if header.type is MsgType.HEARTBEAT:
            try:
                hb = wire.decode_heartbeat(payload)
            except WireError as exc:
                self.dropped[exc.reason] += 1
                return
            self.members.on_heartbeat(peer, source, hb, now)
            self._check_fingerprint(peer, hb)
        elif header.type is MsgType.RESIGN:
            peer.resigned = True
            log.info("peer resigned the active role", extra={"peer": peer.member.name})
        elif self.on_message is not None:
            self.on_message(peer, header, payload)

    def _check_fingerprint(self, peer: Peer, hb: Heartbeat) -> None:
        mine = self.fingerprint()
        pid = peer.member.id
        if hb.fingerprint != mine and pid not in self.mismatch:
            self.mismatch.add(pid)
            log.error(
                "Maglev tables differ from the peer's: after a takeover, flows that were "
                "not synced would move to other reals. Compare the configs.",
                extra={
                    "peer": peer.member.name,
                    "theirs": hb.fingerprint.hex(),
                    "ours": mine.hex(),
                },
            )
        elif hb.fingerprint == mine and pid in self.mismatch:
            self.mismatch.discard(pid)
            log.info("Maglev tables agree with the peer again", extra={"peer": peer.member.name})

    # --- deciding ---------------------------------------------------------------------
    def step(self, now: float | None = None) -> Transition | None:
        now = time.monotonic() if now is None else now
        stalled = self.last_step is not None and now - self.last_step > self.members.dead_s
        gap = now - self.last_step if self.last_step is not None else 0.0
        self.last_step = now
        st = self.machine.state
        if stalled and st not in (State.STARTING, State.FAULT):
            # SIGSTOP, swap, a hang: our peers saw us dead and may have taken over;
            # whatever we believed is stale. FAULT now, then start over (resync).
            t = self.machine.go(
                State.FAULT, f"this daemon stalled for {gap:.2f} s: peers may have taken over", now
            )
            if t is not None:
                self.on_role(t)
            return t
        live = self.members.live_peers(now)
        # Tables that differ from a *live* peer's block readiness; a dead peer's
        # do not (refusing to take over from a dead active would be an outage).
        differ = self.mismatch & {p.member.id for p in live}
        me = Candidate(
            self.me.id,
            self.me.priority,
            active=st is State.ACTIVE,
            ready=st in (State.BACKUP, State.ACTIVE) and not differ,
            preempt=self.preempt,
        )
        winner = elect(self.members.candidates(me, now))
        inputs = Inputs(
            state=st,
            now=now,
            holddown_until=self.holddown_until,
            peers_alive=len(live),
            synced=self.synced(),
            elected=(
                self.vrrp == "master" and not differ
                if self.cluster.election == "keepalived"
                else winner == self.me.id
            ),
            peer_active=self.members.peer_active(now),
            resign_expired=now - self.resigned_at > 2 * self.members.dead_s,
            held_by=self.held_by(now),
        )
        nxt = decide(inputs)
        if nxt is None:
            return None
        t = self.machine.go(*nxt, now)
        if t is not None:  # on_role logs it, with its reason
            self.send(MsgType.HEARTBEAT, wire.encode_heartbeat(self.heartbeat()))
            self.on_role(t)
        return t

    def resign(self) -> bool:
        """Planned switchover: hand the active role to the best ready peer."""
        if self.machine.state is not State.ACTIVE:
            return False
        self.resigned_at = time.monotonic()
        t = self.machine.go(State.RESIGNING, "planned switchover", self.resigned_at)
        self.send(MsgType.RESIGN)
        if t is not None:
            self.on_role(t)
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        node = self

        def source(addr: tuple[str | int, ...]) -> IPAddress:
            return ipaddress.ip_address(str(addr[0]).split("%")[0])

        class Proto(asyncio.DatagramProtocol):
            """asyncio hands over one datagram per wake-up; the rest waiting in
            the socket (up to READ_BATCH) are read here, so that sync datagrams
            are applied together (HeartbeatNode.datagrams)."""

            def __init__(self, sock: socket.socket) -> None:
                self.sock = sock

            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                batch = [(data, source(addr))]
                while len(batch) < READ_BATCH:
                    try:
                        more, frm = self.sock.recvfrom(RECV_SIZE)
                    except OSError:  # BlockingIOError: nothing more waits
                        break
                    batch.append((more, source(frm)))
                node.datagrams(batch)

        for addr in self.me.addresses:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(
                str(addr), self.cluster.port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                sock.bind(sockaddr)
            except OSError:
                sock.close()
                raise
            t, _ = await loop.create_datagram_endpoint(functools.partial(Proto, sock), sock=sock)
            _big_buffer(t)
            self.transports.append(t)
        # Hold-down: listen for dead_after intervals plus a random part before
        # deciding anything, so two directors started together do not both find
        # "nobody" and go active.
        self.holddown_until = (
            time.monotonic() + self.members.dead_s + random.uniform(0, 2 * self.interval)
        )
        try:
            while True:
                # step first: after a stall, the role we would announce is stale
                self.step()
                self.send(MsgType.HEARTBEAT, wire.encode_heartbeat(self.heartbeat()))
                await asyncio.sleep(self.interval)
        finally:
            for t in self.transports:
                t.close()
            self.transports.clear()

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        return {
            "node": self.me.name,
            "role": self.machine.state.value,
            "epoch": self.epoch,
            "sent": self.sent,
            "received": self.received,
            "dropped": dict(self.dropped),
            "peers": [
                {
                    "name": p.member.name,
                    "alive": self.members.alive(p, now),
                    "role": p.heartbeat.role.name.lower() if p.heartbeat else None,
                    "ready": p.heartbeat.ready if p.heartbeat else None,
                    "last_seen_ms": round((now - p.last_seen) * 1000) if p.last_seen else None,
                    "paths": {str(a): round((now - t) * 1000) for a, t in sorted(p.paths.items())},
                    "fingerprint_agrees": p.member.id not in self.mismatch,
                    "fingerprint": p.heartbeat.fingerprint.hex() if p.heartbeat else None,
                }
                for p in self.members.peers.values()
            ],
            "transitions": [
                {
                    "from": t.old.value,
                    "to": t.new.value,
                    "reason": t.reason,
                    "ago_ms": round((now - t.at) * 1000) if t.at else None,
                }
                for t in self.machine.history[-10:]
            ],
        }
