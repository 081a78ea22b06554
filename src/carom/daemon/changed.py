"""What a reload works out again only for the services that changed: a
reload parses only those (config/incremental.py), the others are the same
objects, so per-service results are kept by object and a 4096-service reload
does not walk 32k reals for the addresses to resolve, the VIPs or the config's
warnings. Each is a pure function of the config it is given (a result for
another config is never returned)."""

from __future__ import annotations

from carom import abi
from carom.config.schema import Config, Service, service_warnings
from carom.daemon.image import Address, peer_addresses


class RealAddresses:
    """The remote reals and the other directors of the cluster (whose MACs the
    daemon must resolve) of one config after another, counting per address the
    (service, real) pairs that have it and following only the services that
    changed (a reload parses only those: config/incremental.py), so that a
    reload does not walk 32k reals. One caller at a time (the daemon's start
    and reloads, under its lock)."""

    def __init__(self) -> None:
        self._services: dict[int, Service] = {}  # by id(): the last config's
        self._pairs: dict[Address, int] = {}  # remote real -> (service, real) pairs

    def of(self, config: Config) -> list[Address]:
        now = {id(s): s for s in config.services}
        pairs = self._pairs
        for k, svc in self._services.items():
            if k not in now:
                for r in svc.reals:
                    if not r.local:
                        n = pairs[r.address] - 1
                        if n:
                            pairs[r.address] = n
                        else:
                            del pairs[r.address]
        for k, svc in now.items():
            if k not in self._services:
                for r in svc.reals:
                    if not r.local:
                        pairs[r.address] = pairs.get(r.address, 0) + 1
        self._services = now
        peers = [a for a in dict.fromkeys(peer_addresses(config)) if a not in pairs]
        return [*pairs, *peers]


def vips_of(config: Config) -> list[abi.IPAddress]:
    """Every VIP of the config, once each, in config order. Kept for the last
    two configs (the daemon asks for the current and the new one's several
    times per reload, 4096 address hashes each)."""
    for known, vips in _VIPS:
        if known is config:
            return list(vips)
    vips = list(dict.fromkeys(svc.vip for svc in config.services))
    _VIPS[:] = [(config, vips), *_VIPS[:1]]
    return list(vips)


_VIPS: list[tuple[Config, list[abi.IPAddress]]] = []


class ConfigWarnings:
    """Config.warnings(), per service object (service_warnings() depends on the
    service and the Maglev size alone). One caller at a time."""

    def __init__(self) -> None:
        self._by_service: dict[int, tuple[Service, int, list[str]]] = {}

    def of(self, config: Config) -> list[str]:
        slots = config.limits.maglev_table_size
        before, self._by_service = self._by_service, {}
        out = [] if config.services else config.warnings()  # ("no services")
        for svc in config.services:
            hit = before.get(id(svc))
            if hit is None or hit[0] is not svc or hit[1] != slots:
                hit = (svc, slots, service_warnings(svc, slots))
            self._by_service[id(svc)] = hit
            out += hit[2]
        return out
