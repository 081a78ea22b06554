"""The rules across services, kept up to date per service: a reload that
changes a few services of 4,096 need not walk 32k reals again to know that the
rules still hold.

`Config.whole_config_problems` (cross_service_problems, limit_problems,
vip_path_problems) finds a problem exactly when one of these holds:

- two services claim one (vip, protocol, port), or share a display name;
- a real's address is some service's VIP;
- an address is a local real in one place and a remote one in another;
- more services, services-map entries (one per port), distinct VIPs or
  distinct real addresses than the limits allow;
- a service has more weighted reals than Maglev slots, or a via: vip check
  without the probe source of its VIP's family.

`CrossIndex` keeps the counts behind these (per key: how many services claim
it, per address: how many (service, real) pairs have it, local or not) for the
services of a config that passed. For the next config it takes the services
that left out of the counts and puts the new ones in; with the old config
clean, a new problem can only involve a new service, so only its keys are
looked at, plus the totals. It only ever proves "no problem": anything else
(or other limits or health settings) goes to whole_config_problems, which
words the errors. tests/unit/test_config_crossindex.py checks both agree."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from carom.config.checks import HealthSettings
from carom.config.limits import Limits
from carom.config.schema import Service, addr_key

Owner = tuple[int, str, int]  # (vip key, protocol, port)
K = TypeVar("K")


@dataclass(frozen=True)
class _Share:
    """What one service adds to the counts."""

    owners: frozenset[Owner]
    name: str
    vip: int  # addr_key of the vip
    reals: tuple[tuple[int, bool], ...]  # (address key, local) per real
    entries: int  # services-map entries: one per port
    weighted: int  # reals with weight > 0
    via_vip: bool  # some check of it probes through the VIP

    @staticmethod
    def of(svc: Service) -> _Share:
        vkey = addr_key(svc.vip)
        ports = svc.port_numbers
        owners = frozenset((vkey, svc.protocol, p) for p in ports)
        entries = len(ports)
        checks = [svc.check, *(r.check for r in svc.reals)]
        return _Share(
            owners,
            svc.display_name,
            vkey,
            tuple((addr_key(r.address), r.local) for r in svc.reals),
            entries,
            sum(1 for r in svc.reals if r.weight > 0),
            any(c is not None and c.via == "vip" for c in checks),
        )


def _bump(counts: Counter[K], key: K, by: int) -> None:
    n = counts.get(key, 0) + by
    if n:
        counts[key] = n
    else:
        del counts[key]


@dataclass
class CrossIndex:
    """The counts of a config's services that break no rule across services."""

    limits: Limits
    health: HealthSettings
    shares: dict[int, tuple[Service, _Share]] = field(default_factory=dict)  # by id()
    owners: Counter[Owner] = field(default_factory=Counter)
    names: Counter[str] = field(default_factory=Counter)
    vips: Counter[int] = field(default_factory=Counter)  # vip key -> services
    pairs: Counter[tuple[int, bool]] = field(default_factory=Counter)  # (address, local)
    reals: Counter[int] = field(default_factory=Counter)  # address -> (service, real) pairs
    entries: int = 0

    @classmethod
    def of(cls, limits: Limits, health: HealthSettings, services: Sequence[Service]) -> CrossIndex:
        """The index of services that whole_config_problems found clean."""
        index = cls(limits, health)
        index._count(services, 1)
        return index

    def _count(self, services: Sequence[Service], sign: int) -> None:
        for svc in services:
            self._take(svc, self.shares[id(svc)][1] if sign < 0 else _Share.of(svc), sign)

    def _take(self, svc: Service, share: _Share, sign: int) -> None:
        """Put one service's share in the counts (sign 1) or take it out (-1)."""
        if sign > 0:
            self.shares[id(svc)] = (svc, share)
        else:
            del self.shares[id(svc)]
        self.entries += _add(
            share, sign, self.owners, self.names, self.vips, self.pairs, self.reals
        )

    def update(
        self, limits: Limits, health: HealthSettings, services: Sequence[Service]
    ) -> Callable[[], None] | None:
        """If `services` (under these limits and health settings) provably
        break no rule across services: how to make the index theirs (call it
        once the config is taken). None: not proven, ask whole_config_problems."""
        if limits != self.limits or health != self.health:
            return None
        now = {id(s): s for s in services}
        if len(now) != len(services):
            return None  # one object twice: a duplicate service
        gone = [svc for k, (svc, _) in self.shares.items() if k not in now]
        added = [s for s in services if id(s) not in self.shares]
        shares = [_Share.of(s) for s in added]
        # the changes to the counts
        owners: Counter[Owner] = Counter()
        names: Counter[str] = Counter()
        vips: Counter[int] = Counter()
        pairs: Counter[tuple[int, bool]] = Counter()
        reals: Counter[int] = Counter()
        entries = self.entries
        for sign, each in ((-1, [self.shares[id(s)][1] for s in gone]), (1, shares)):
            for share in each:
                entries += _add(share, sign, owners, names, vips, pairs, reals)
        if entries > limits.max_services:
            return None
        if _distinct(self.vips, vips) > limits.max_vips:
            return None
        if _distinct(self.reals, reals) > limits.max_reals - 1:
            return None
        for share in shares:
            if share.weighted > limits.maglev_table_size:
                return None
            if share.via_vip and self._no_probe_source(share):
                return None
            if any(self.owners[o] + owners[o] > 1 for o in share.owners):
                return None
            if self.names[share.name] + names[share.name] > 1:
                return None
            if self.reals[share.vip] + reals[share.vip] > 0:
                return None  # one of its VIPs is some service's real
            for key, local in share.reals:
                if self.pairs[(key, not local)] + pairs[(key, not local)] > 0:
                    return None  # local here, not local elsewhere (or the reverse)
                if self.vips[key] + vips[key] > 0:
                    return None  # a real that is a VIP

        def take() -> None:
            self._count(gone, -1)
            for svc, share in zip(added, shares, strict=True):
                self._take(svc, share, 1)

        return take

    def _no_probe_source(self, share: _Share) -> bool:
        """A via: vip check without the probe source of its VIP's family."""
        six = share.vip < 0  # addr_key: IPv6 keys are negative
        return (self.health.probe_source6 if six else self.health.probe_source) is None


def _add(
    share: _Share,
    sign: int,
    owners: Counter[Owner],
    names: Counter[str],
    vips: Counter[int],
    pairs: Counter[tuple[int, bool]],
    reals: Counter[int],
) -> int:
    """Count one service's share in (sign 1) or out (-1); returns its
    services-map entries, signed."""
    for o in share.owners:
        _bump(owners, o, sign)
    _bump(names, share.name, sign)
    _bump(vips, share.vip, sign)
    for pair in share.reals:
        _bump(pairs, pair, sign)
        _bump(reals, pair[0], sign)
    return sign * share.entries


def _distinct(counts: Counter[int], delta: Counter[int]) -> int:
    """How many keys have a non-zero count once `delta` is added."""
    n = len(counts)
    for key, by in delta.items():
        was = counts.get(key, 0)
        if was and not was + by:
            n -= 1
        elif not was and was + by:
            n += 1
    return n
