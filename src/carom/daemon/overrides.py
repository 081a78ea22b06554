"""Manual overrides of reals at runtime: drain, undrain, weight.

An operator takes a real out (`carom real drain ADDR`) or changes its weight
(`carom real weight ADDR N`) without editing the config. An override names a
real address and optionally one service; it outlives reloads (and a daemon
restart: the store is a small JSON file next to the control socket) until
`carom real undrain` puts the real back to its configured state.

One function per action, each taking the store and the current config and
returning a JSON-able reply, so the control socket and the HTTP API call the
same code. Bad input raises ValueError with a sentence and changes nothing."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from carom.config.schema import Config, Service

log = logging.getLogger("carom.daemon")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_WEIGHT = 65535  # as a configured weight (config: reals[].weight)


@dataclass(frozen=True)
class Override:
    """What an operator asked of one real (in one service, or in all)."""

    address: str  # the real's address, as ipaddress prints it
    service: str | None  # a service's name; None: every service the real is in
    drain: bool = False  # no new flows
    weight: int | None = None  # replaces the configured weight; None: the config's
    since: float = 0.0  # wall-clock time of the last change

    def describe(self) -> str:
        what = []
        if self.drain:
            what.append("drained")
        if self.weight is not None:
            what.append(f"weight {self.weight}")
        where = f" in {self.service}" if self.service else ""
        return f"{' and '.join(what) or 'nothing'} by hand{where}"


class OverrideStore:
    """The overrides in force, persisted to `path` on every change (if given)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._items: dict[tuple[str, str | None], Override] = {}
        self.version = 0  # bumped on every change: the health task re-applies
        if path is not None:
            self._load(path)

    def _load(self, path: str) -> None:
        try:
            with open(path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("manual overrides not read; starting without", extra={"error": str(exc)})
            return
        for item in raw if isinstance(raw, list) else []:
            try:
                o = Override(**item)
                ipaddress.ip_address(o.address)
            except (TypeError, ValueError):
                continue
            self._items[(o.address, o.service)] = o
        if self._items:
            log.info("manual overrides restored", extra={"count": len(self._items)})

    def _save(self) -> None:
        self.version += 1
        if self.path is None:
            return
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump([asdict(o) for o in self._items.values()], f)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("manual overrides not saved", extra={"error": str(exc)})
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Override]:
        return iter(list(self._items.values()))

    def get(self, address: str, service: str | None) -> Override | None:
        return self._items.get((address, service))

    def put(self, o: Override) -> None:
        if not o.drain and o.weight is None:
            self._items.pop((o.address, o.service), None)
        else:
            self._items[(o.address, o.service)] = o
        self._save()

    def remove(self, address: str) -> list[Override]:
        """Remove every override of `address`; returns them."""
        gone = [o for k, o in self._items.items() if k[0] == address]
        for o in gone:
            del self._items[(o.address, o.service)]
        if gone:
            self._save()
        return gone

    def for_real(self, address: Address, service: str) -> Override | None:
        """The override that applies to a real in a service: the service's own,
        else the one for every service."""
        a = str(address)
        return self._items.get((a, service)) or self._items.get((a, None))


def _services_of(config: Config, address: str, service: str | None) -> tuple[str, list[Service]]:
    """The canonical address and the services an action reaches; ValueError if none."""
    try:
        addr = ipaddress.ip_address(address.strip())
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address; give a real's address") from None
    having = [s for s in config.services if any(r.address == addr for r in s.reals)]
    if service is not None:
        named = [s for s in config.services if s.display_name == service]
        if not named:
            known = ", ".join(s.display_name for s in config.services[:10])
            raise ValueError(f"no service named {service!r} (services: {known})")
        if named[0] not in having:
            raise ValueError(f"{addr} is not a real of service {service!r}")
        return str(addr), named
    if not having:
        raise ValueError(f"{addr} is not a real of any service in the configuration")
    return str(addr), having


def _reply(o: Override, services: list[Service], action: str) -> dict[str, Any]:
    return {
        "ok": True,
        "action": action,
        "override": asdict(o),
        "services": [s.display_name for s in services],
        "text": f"{o.address}: {o.describe()} ({', '.join(s.display_name for s in services)})",
    }


def drain(
    store: OverrideStore, config: Config, address: str, service: str | None = None
) -> dict[str, Any]:
    """No new flows to the real (in one service or all); established flows go on."""
    addr, services = _services_of(config, address, service)
    old = store.get(addr, service) or Override(address=addr, service=service)
    o = replace(old, drain=True, since=time.time())
    store.put(o)
    log.info("real drained by hand", extra={"real": addr, "service": service or "all"})
    return _reply(o, services, "drain")


def undrain(
    store: OverrideStore, config: Config, address: str, service: str | None = None
) -> dict[str, Any]:
    """Back to the configured state: the drain and any weight override go (for
    one service, or every override of the real when no service is named)."""
    try:
        addr = str(ipaddress.ip_address(address.strip()))
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address; give a real's address") from None
    if service is None:
        gone = store.remove(addr)
    else:
        o = store.get(addr, service)
        gone = [o] if o is not None else []
        if o is not None:
            store.put(replace(o, drain=False, weight=None))
    if not gone:
        raise ValueError(f"{addr} has no manual override{f' in {service}' if service else ''}")
    log.info("real undrained by hand", extra={"real": addr, "service": service or "all"})
    names = sorted({o.service or "all services" for o in gone})
    return {
        "ok": True,
        "action": "undrain",
        "removed": [asdict(o) for o in gone],
        "text": f"{addr}: back to its configured weight ({', '.join(names)})",
    }


def set_weight(
    store: OverrideStore, config: Config, address: str, weight: int, service: str | None = None
) -> dict[str, Any]:
    """Replace the real's configured weight until undrained (0 drains it)."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight {weight!r} is out of range; use 0 to {MAX_WEIGHT}")
    addr, services = _services_of(config, address, service)
    old = store.get(addr, service) or Override(address=addr, service=service)
    o = replace(old, weight=weight, since=time.time())
    store.put(o)
    log.info(
        "real weight set by hand",
        extra={"real": addr, "service": service or "all", "weight": weight},
    )
    return _reply(o, services, "weight")


def listing(store: OverrideStore, config: Config) -> list[dict[str, Any]]:
    """Every override, with whether it reaches a real of the current config."""
    out = []
    for o in store:
        try:
            _services_of(config, o.address, o.service)
            active = True
        except ValueError:
            active = False
        out.append({**asdict(o), "text": o.describe(), "in_config": active})
    return out
