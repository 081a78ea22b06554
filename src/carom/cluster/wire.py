"""The directors' wire format: heartbeats and connection-sync records in
authenticated, versioned UDP datagrams. Pure encode/decode; golden tables in
tests/unit/test_wire.py pair every message with its exact bytes.

Datagram (network byte order):

    magic   4  b"CRM" + version (1)
    type    1  MsgType
    flags   1  reserved, 0
    count   2  records in the payload (0 for a heartbeat)
    sender  4  the sender's node id (cluster.node_id)
    epoch   8  the sender's start time, unix ms: a restarted sender starts a
               new sequence; an older epoch is never accepted again
    seq     8  per (sender, epoch), +1 per datagram
    payload ...
    mac    16  HMAC-SHA256(key, everything before it), first 16 bytes

A connection record carries the flow as the client sent it and the real's
*address* (never its MAC: the receiver resolves its own next hop), in 24 bytes
for IPv4 and 60 for IPv6:

    op 1 (UPSERT/DELETE) | fam 1 (bit0 flow v6, bit1 real v6) | proto 1 | 0 1
    src 4|16  dst 4|16  sport 2  dport 2  real 4|16  idle_ms 4

A health view (HEALTH_VIEW) is the active director's weight and state of every
(service, real) whose values are not the configured ones, so every node builds
the same Maglev tables (cluster/health_view.py). A view may take several
datagrams (parts); the receiver applies it only once it holds every part:

    format 1 (VIEW_FORMAT) | flags 1 (0) | part 2 | parts 2 | generation 4
    entries (count in the header):
      fam 1 (bit0 VIP v6, bit1 real v6) | proto 1 | port 2 | vip 4|16 | real 4|16
      weight 4 | state 1 (ViewState) | flags 1 (bit0: the real's flows move)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAGIC = b"CRM"
VERSION = 1
HEADER = struct.Struct("!3sBBBHIQQ")  # magic, version, type, flags, count, sender, epoch, seq
MAC_LEN = 16
MAX_DATAGRAM = 1400  # fits any path MTU we expect between directors, no fragments
MAX_NAME = 63


class WireError(ValueError):
    """A datagram that must be dropped; `reason` names the counter it goes to."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class MsgType(enum.IntEnum):
    HEARTBEAT = 1
    CONN_SYNC = 2  # live stream of connection records
    BULK_REQUEST = 3  # "send me your whole table" (payload empty)
    BULK_CHUNK = 4  # part of a snapshot (connection records)
    BULK_DONE = 5  # end of a snapshot; payload: u32 records sent in it
    RESIGN = 6  # planned switchover: the sender gives up the active role now
    HEALTH_VIEW = 7  # part of the active's health view: weights and states per real


class Op(enum.IntEnum):
    UPSERT = 1  # new or re-pointed entry
    DELETE = 2  # closed / expired


class Role(enum.IntEnum):
    """A node's role as announced in its heartbeat."""

    STARTING = 0
    SYNCING = 1
    BACKUP = 2
    ACTIVE = 3
    FAULT = 4


@dataclass(frozen=True)
class Header:
    type: MsgType  # what the payload is
    sender: int  # node id of the sender
    epoch: int  # sender's start time, unix ms
    seq: int  # per (sender, epoch) sequence number
    count: int = 0  # records in the payload


@dataclass(frozen=True)
class ConnRecord:
    op: Op  # upsert or delete
    proto: int  # IP protocol (6, 17)
    src: Address  # client address
    dst: Address  # VIP
    sport: int  # host order
    dport: int  # host order
    real: Address  # the real server's address (its identity across directors)
    idle_ms: int = 0  # how long ago the flow last had a packet on the sender

    @property
    def size(self) -> int:
        return record_size(self.src.version, self.real.version)


@dataclass(frozen=True)
class Heartbeat:
    name: str  # node name, for logs and status
    priority: int  # 0..255, higher wins an election
    role: Role  # the role the sender is in now
    ready: bool  # bulk sync done and stream caught up: may become active
    preempt: bool  # the sender takes over from a lower-priority active when ready
    fingerprint: bytes  # 16 bytes: digest over every service's Maglev fingerprint
    conns: int  # entries in the sender's connection table (approximate)


HB = struct.Struct("!BBBx16sI")  # priority, role, flags, pad, fingerprint, conns
HB_READY = 1
HB_PREEMPT = 2


def record_size(flow_version: int, real_version: int) -> int:
    alen = 4 if flow_version == 4 else 16
    rlen = 4 if real_version == 4 else 16
    return 4 + 2 * alen + 4 + rlen + 4


def encode_record(r: ConnRecord) -> bytes:
    if r.src.version != r.dst.version:
        raise ValueError("a flow's source and destination are of one family")
    fam = (1 if r.src.version == 6 else 0) | (2 if r.real.version == 6 else 0)
    return (
        struct.pack("!BBBx", r.op, fam, r.proto)
        + r.src.packed
        + r.dst.packed
        + struct.pack("!HH", r.sport, r.dport)
        + r.real.packed
        + struct.pack("!I", min(r.idle_ms, 0xFFFFFFFF))
    )


def decode_records(payload: bytes, count: int) -> list[ConnRecord]:
    out: list[ConnRecord] = []
    off = 0
    for _ in range(count):
        if len(payload) - off < 4:
            raise WireError("truncated", f"record {len(out)} header")
        op, fam, proto = struct.unpack_from("!BBBx", payload, off)
        if op not in (Op.UPSERT, Op.DELETE) or fam > 3:
            raise WireError("malformed", f"record {len(out)}: op {op} family bits {fam}")
        v6, r6 = fam & 1, fam & 2
        size = record_size(6 if v6 else 4, 6 if r6 else 4)
        if len(payload) - off < size:
            raise WireError("truncated", f"record {len(out)}")
        alen, rlen = (16 if v6 else 4), (16 if r6 else 4)
        ip = ipaddress.ip_address
        p = off + 4
        src, dst = ip(payload[p : p + alen]), ip(payload[p + alen : p + 2 * alen])
        p += 2 * alen
        sport, dport = struct.unpack_from("!HH", payload, p)
        p += 4
        real = ip(payload[p : p + rlen])
        (idle,) = struct.unpack_from("!I", payload, p + rlen)
        out.append(ConnRecord(Op(op), proto, src, dst, sport, dport, real, idle))
        off += size
    if off != len(payload):
        raise WireError("malformed", f"{len(payload) - off} bytes after the last record")
    return out


def encode_heartbeat(hb: Heartbeat) -> bytes:
    name = hb.name.encode()
    if len(name) > MAX_NAME or len(hb.fingerprint) != 16 or not 0 <= hb.priority <= 255:
        raise ValueError("heartbeat: name <= 63 bytes, 16-byte fingerprint, priority 0..255")
    flags = (HB_READY if hb.ready else 0) | (HB_PREEMPT if hb.preempt else 0)
    fixed = HB.pack(hb.priority, hb.role, flags, hb.fingerprint, hb.conns)
    return fixed + bytes([len(name)]) + name


def decode_heartbeat(payload: bytes) -> Heartbeat:
    if len(payload) < HB.size + 1:
        raise WireError("truncated", "heartbeat")
    prio, role, flags, fp, conns = HB.unpack_from(payload)
    n = payload[HB.size]
    name = payload[HB.size + 1 :]
    if len(name) != n:
        raise WireError("malformed", "heartbeat name length")
    if role not in Role.__members__.values():
        raise WireError("malformed", f"heartbeat role {role}")
    try:
        text = name.decode()
    except UnicodeDecodeError as exc:
        raise WireError("malformed", "heartbeat name is not UTF-8") from exc
    return Heartbeat(
        text, prio, Role(role), bool(flags & HB_READY), bool(flags & HB_PREEMPT), fp, conns
    )


def seal(key: bytes, header: Header, payload: bytes, limit: int = MAX_DATAGRAM) -> bytes:
    """Header + payload + truncated HMAC: one datagram (or, with a larger
    `limit`, one frame of the bulk-resync TCP stream)."""
    head = HEADER.pack(
        MAGIC, VERSION, header.type, 0, header.count, header.sender, header.epoch, header.seq
    )
    body = head + payload
    if len(body) + MAC_LEN > limit:
        raise ValueError(f"message of {len(body) + MAC_LEN} bytes exceeds {limit}")
    return body + hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


def open_datagram(key: bytes, data: bytes) -> tuple[Header, bytes]:
    """Check and split a datagram; raises WireError naming the drop reason.

    Order matters: the version is looked at before the MAC (a newer peer's
    datagrams are counted as such, not as forgeries), and nothing in the
    payload is parsed before the MAC is verified."""
    if len(data) < HEADER.size + MAC_LEN:
        raise WireError("truncated", f"{len(data)} bytes")
    magic, version, mtype, _flags, count, sender, epoch, seq = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("malformed", "not a carom datagram")
    if version != VERSION:
        raise WireError("version", f"version {version}, this node speaks {VERSION}")
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN], mac):
        raise WireError("bad_mac", f"from node {sender}")
    try:
        kind = MsgType(mtype)
    except ValueError as exc:
        raise WireError("malformed", f"message type {mtype}") from exc
    return Header(kind, sender, epoch, seq, count), body[HEADER.size :]


def pack_records(records: list[ConnRecord], room: int = MAX_DATAGRAM) -> list[list[ConnRecord]]:
    """Split records into batches that each fit one datagram."""
    room -= HEADER.size + MAC_LEN
    batches: list[list[ConnRecord]] = []
    cur: list[ConnRecord] = []
    used = 0
    for r in records:
        if used + r.size > room and cur:
            batches.append(cur)
            cur, used = [], 0
        cur.append(r)
        used += r.size
    if cur:
        batches.append(cur)
    return batches


class ReplayWindow:
    """Accepts each (epoch, seq) of one sender at most once (RFC 4303-style
    sliding window, 1024 wide, so reordering within a burst is fine), and never
    an epoch older than the newest seen: a replayed datagram from before the
    sender's restart is refused."""

    WIDTH = 1024

    def __init__(self) -> None:
        self.epoch = -1
        self.top = -1  # highest seq accepted in this epoch
        self.seen = 0  # bit i: top - i was accepted

    def accept(self, epoch: int, seq: int) -> str | None:
        """None if fresh (and remembered); else the drop reason."""
        if epoch < self.epoch:
            return "replay"
        if epoch > self.epoch:
            self.epoch, self.top, self.seen = epoch, seq, 1
            return None
        if seq > self.top:
            shift = seq - self.top
            self.seen = ((self.seen << shift) | 1) & ((1 << self.WIDTH) - 1)
            self.top = seq
            return None
        back = self.top - seq
        if back >= self.WIDTH or self.seen >> back & 1:
            return "replay"
        self.seen |= 1 << back
        return None


# --- the health view ------------------------------------------------------------------

VIEW_FORMAT = 1
VIEW_HEAD = struct.Struct("!BBHHI")  # format, flags, part, parts, generation
VIEW_TAIL = struct.Struct("!IBB")  # weight, state, flags
VIEW_MOVE = 1  # entry flag: a down real's established flows move to live reals


class ViewState(enum.IntEnum):
    """A real's state in a health view (the names are those of `carom status`)."""

    UP = 0
    DOWN = 1
    DRAINED = 2
    SLOW_START = 3
    HELD = 4

    @property
    def text(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def of(cls, text: str) -> ViewState:
        return cls[text.upper().replace("-", "_")]


@dataclass(frozen=True)
class ViewEntry:
    """One (service, real) of a health view."""

    vip: Address  # the service's VIP
    proto: int  # its IP protocol (6, 17)
    port: int  # its port (the first of a multi-port service; 0: all ports)
    real: Address  # the real's address
    weight: int  # the Maglev weight the active uses (0: no new flows)
    state: ViewState  # up, down, drained, slow-start, held
    move: bool = False  # down, and its established flows move (down_flows: reschedule)

    @property
    def size(self) -> int:
        return view_entry_size(self.vip.version, self.real.version)


@dataclass(frozen=True)
class ViewPart:
    """One datagram's worth of a health view."""

    generation: int  # the sender's view number (per sender epoch); +1 per change
    part: int  # 0 .. parts-1
    parts: int  # datagrams the whole view takes (>= 1; an empty view is one empty part)
    entries: tuple[ViewEntry, ...]


def view_entry_size(vip_version: int, real_version: int) -> int:
    return 4 + (4 if vip_version == 4 else 16) + (4 if real_version == 4 else 16) + VIEW_TAIL.size


def encode_view_part(p: ViewPart) -> bytes:
    if not 0 <= p.part < p.parts <= 0xFFFF:
        raise ValueError(f"view part {p.part} of {p.parts}")
    out = [VIEW_HEAD.pack(VIEW_FORMAT, 0, p.part, p.parts, p.generation & 0xFFFFFFFF)]
    for e in p.entries:
        fam = (1 if e.vip.version == 6 else 0) | (2 if e.real.version == 6 else 0)
        out.append(struct.pack("!BBH", fam, e.proto, e.port) + e.vip.packed + e.real.packed)
        out.append(VIEW_TAIL.pack(e.weight, e.state, VIEW_MOVE if e.move else 0))
    return b"".join(out)


def decode_view_part(payload: bytes, count: int) -> ViewPart:
    """A HEALTH_VIEW payload; WireError (dropped and counted) if it is not one
    this node understands, a newer format included."""
    if len(payload) < VIEW_HEAD.size:
        raise WireError("truncated", "health view header")
    fmt, _flags, part, parts, generation = VIEW_HEAD.unpack_from(payload)
    if fmt != VIEW_FORMAT:
        raise WireError("version", f"health view format {fmt}, this node reads {VIEW_FORMAT}")
    if not part < parts:
        raise WireError("malformed", f"health view part {part} of {parts}")
    off = VIEW_HEAD.size
    entries: list[ViewEntry] = []
    ip = ipaddress.ip_address
    for i in range(count):
        if len(payload) - off < 4:
            raise WireError("truncated", f"health view entry {i}")
        fam, proto, port = struct.unpack_from("!BBH", payload, off)
        if fam > 3:
            raise WireError("malformed", f"health view entry {i}: family bits {fam}")
        alen, rlen = (16 if fam & 1 else 4), (16 if fam & 2 else 4)
        end = off + 4 + alen + rlen + VIEW_TAIL.size
        if len(payload) < end:
            raise WireError("truncated", f"health view entry {i}")
        p = off + 4
        vip, real = ip(payload[p : p + alen]), ip(payload[p + alen : p + alen + rlen])
        weight, state, flags = VIEW_TAIL.unpack_from(payload, p + alen + rlen)
        if state not in ViewState.__members__.values():
            raise WireError("malformed", f"health view entry {i}: state {state}")
        entries.append(
            ViewEntry(vip, proto, port, real, weight, ViewState(state), bool(flags & VIEW_MOVE))
        )
        off = end
    if off != len(payload):
        raise WireError("malformed", f"{len(payload) - off} bytes after the last view entry")
    return ViewPart(generation, part, parts, tuple(entries))


def split_view(
    generation: int, entries: list[ViewEntry], room: int = MAX_DATAGRAM
) -> list[ViewPart]:
    """A whole view as parts that each fit one datagram (an empty view: one part)."""
    room -= HEADER.size + MAC_LEN + VIEW_HEAD.size
    groups: list[list[ViewEntry]] = [[]]
    used = 0
    for e in entries:
        if used + e.size > room and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(e)
        used += e.size
    if len(groups) > 0xFFFF:
        raise ValueError(f"a health view of {len(entries)} entries needs {len(groups)} parts")
    return [ViewPart(generation, i, len(groups), tuple(g)) for i, g in enumerate(groups)]
