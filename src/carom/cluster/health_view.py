"""The active director's health view, which drives the tables on every node
(issue 10, "Cluster"): pure conversions between the reconciler's inputs and
the wire's view entries, reassembly of a view sent in parts, and the rule for
whose view a node's tables follow.

Why: Maglev tables are identical on two directors only if they use the same
weights. Each node's own checks can disagree (a real reachable from one
director and not from the other, a check that flaps on one side), so a
backup's tables follow the active's view and its own checks only feed
`carom status`; a flow too new to have been synced then lands on the same
real after a takeover.

What a view holds: every (service, real) whose Maglev weight or state is not
the configured one on the active, after health checks, slow start, agent
weights, min_healthy, manual drains and weight overrides, and the reals of a
peer host the active found dead: everything that shapes its tables. What
stays node-local: neighbour state (a real whose MAC one node cannot resolve
is out of that node's table; `carom doctor` reports the mismatch), peer
director MACs, and the manual overrides *file* (an override made on a backup
waits there until that node is active).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from carom import abi
from carom.cluster.roles import State
from carom.cluster.wire import ViewEntry, ViewPart, ViewState
from carom.config.schema import Config
from carom.daemon.image import Address, Effective, EffectiveMap, Inputs, SvcIdent

# (vip, proto, port, real): one entry's identity
EntryKey = tuple[Address, int, int, Address]
ServiceKey = tuple[Address, str, int]  # Service.key
PROTO_NAMES = {n: name for name, n in abi.PROTOCOLS.items()}
# After a takeover, the new active keeps the view it followed for this long
# before its own checks drive its tables: a flow established on the old active
# in the last milliseconds (not synced yet) lands on the same real, and its
# next packets (a SYN retransmitted after 1 s included) create the entry here.
TAKEOVER_HOLD_S = 3.0


def key_of(e: ViewEntry) -> EntryKey:
    return (e.vip, e.proto, e.port, e.real)


def view_of(config: Config, inputs: Inputs) -> list[ViewEntry]:
    """The entries of the view that `inputs` (health and cluster combined, as
    the reconciler got them) make of `config`: only pairs that differ from the
    configuration, in a stable order."""
    out: dict[EntryKey, ViewEntry] = {}
    for ((vip, proto, port), real), eff in inputs.health.items():
        e = ViewEntry(vip, abi.PROTOCOLS[proto], port, real, eff.weight, ViewState.of(eff.state))
        out[key_of(e)] = e
    if inputs.down:
        for svc in config.services:
            ident: SvcIdent = (svc.vip, abi.PROTOCOLS[svc.protocol], svc.port_number)
            down = inputs.down.get(ident)
            if not down:
                continue
            move = ident not in inputs.keep_flows
            for r in svc.reals:
                if r.address in down:
                    e = ViewEntry(svc.vip, ident[1], ident[2], r.address, 0, ViewState.DOWN, move)
                    out[key_of(e)] = e
    return [out[k] for k in sorted(out, key=_order)]


def _order(k: EntryKey) -> tuple[int, bytes, int, int, int, bytes]:
    vip, proto, port, real = k
    return (vip.version, vip.packed, proto, port, real.version, real.packed)


@dataclass(frozen=True)
class Followed:
    """A received view turned into the reconciler's inputs."""

    inputs: Inputs
    unknown: int  # entries for a service or real this node's config does not have


def inputs_of_view(config: Config, entries: Iterable[ViewEntry], source: str) -> Followed:
    """The reconciler's health inputs from a peer's view: its weights and
    states in place of this node's own checks. Entries this config does not
    have are counted, not applied (the configs differ: the fingerprints say so)."""
    pairs = {(svc.key, r.address) for svc in config.services for r in svc.reals}
    health: EffectiveMap = {}
    down: dict[SvcIdent, set[Address]] = {}
    moving: set[SvcIdent] = set()
    unknown = 0
    for e in entries:
        name = PROTO_NAMES.get(e.proto)
        skey: ServiceKey | None = (e.vip, name, e.port) if name else None
        if skey is None or (skey, e.real) not in pairs:
            unknown += 1
            continue
        state = e.state.text
        health[(skey, e.real)] = Effective(
            e.weight, state, f"{state} on {source} (the active's health view drives the tables)"
        )
        if e.state is ViewState.DOWN:
            ident = (e.vip, e.proto, e.port)
            down.setdefault(ident, set()).add(e.real)
            if e.move:
                moving.add(ident)
    keep = frozenset(down) - moving
    return Followed(Inputs(health=health, down=down, keep_flows=keep), unknown)


def disagreements(
    config: Config, own: EffectiveMap, followed: EffectiveMap
) -> list[dict[str, str]]:
    """Where this node's own checks say something else than the view its tables
    follow (for `carom status`): service, real, local state, the view's state."""
    names = {svc.key: svc.display_name for svc in config.services}
    out = []
    for pair in sorted(set(own) | set(followed), key=lambda p: (repr(p[0]), p[1].packed)):
        mine, theirs = own.get(pair), followed.get(pair)
        ms = mine.state if mine else "up"
        ts = theirs.state if theirs else "up"
        if ms != ts:
            out.append(
                {
                    "service": names.get(pair[0], repr(pair[0])),
                    "real": str(pair[1]),
                    "local": ms,
                    "tables": ts,
                }
            )
    return out


def newer(a: int, b: int) -> bool:
    """Generation a is newer than b (32-bit serial numbers: they wrap)."""
    return a != b and (a - b) & 0xFFFFFFFF < 0x80000000


@dataclass
class Reassembly:
    """Collects the parts of views; a view is complete when it holds every part
    of one generation. A part older than the newest generation seen from its
    sender (reordered, or a refresh overtaken by a change) is dropped."""

    pending: dict[tuple[int, int], tuple[int, dict[int, ViewPart]]] = field(default_factory=dict)
    stale: int = 0  # parts dropped as older

    def add(self, sender: int, epoch: int, part: ViewPart) -> list[ViewEntry] | None:
        """The whole view's entries once `part` completes it, else None."""
        gen, parts = self.pending.get((sender, epoch), (part.generation, {}))
        if newer(gen, part.generation):
            self.stale += 1
            return None
        if gen != part.generation or (parts and next(iter(parts.values())).parts != part.parts):
            parts = {}  # a newer generation (a sender never resizes one)
        parts[part.part] = part
        if (sender, epoch) not in self.pending and len(self.pending) >= 16:
            del self.pending[next(iter(self.pending))]  # an old epoch or bulk session
        if len(parts) < part.parts:
            self.pending[(sender, epoch)] = (part.generation, parts)
            return None
        self.pending[(sender, epoch)] = (part.generation, {})
        return [e for i in range(part.parts) for e in parts[i].entries]


def follows(state: State, have_view: bool, now: float, hold_until: float) -> bool:
    """Whether a node in `state` builds its tables from the received view
    (else from its own checks). A node that never received one uses its own
    (a lone director, the first active). ACTIVE uses its own, except for the
    hold after a takeover; RESIGNING still forwards as the active did."""
    if not have_view:
        return False
    if state is State.ACTIVE:
        return now < hold_until
    return state is not State.RESIGNING
