"""The counts of the rules across services (config/crossindex.py) against
Config.whole_config_problems: after random changes to a clean list of
services, the index proves the new list clean exactly when the full check
finds no problem (and the incremental loader then returns the same config as
the full loader)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from carom.config.checks import HealthSettings
from carom.config.crossindex import CrossIndex
from carom.config.limits import Limits
from carom.config.schema import Config, Service

# few of everything, so that duplicates, limits and conflicts come up often
LIMITS = Limits(max_services=9, max_vips=3, max_reals=9, maglev_table_size=13)
VIPS = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "10.0.0.1", "2001:db8::1"]
REALS4 = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "192.0.2.4"]
REALS6 = ["2001:db8::10", "2001:db8::11", "2001:db8::1"]


def service(rng: random.Random) -> Service:
    vip = rng.choice(VIPS)
    pool = REALS6 if ":" in vip else REALS4
    data: dict[str, Any] = {
        "vip": vip,
        "protocol": rng.choice(["tcp", "tcp", "udp"]),
        "reals": [
            {"address": a, "weight": rng.choice([0, 1, 2]), "local": rng.random() < 0.1}
            for a in rng.sample(pool, rng.randint(0, len(pool)))
        ],
    }
    if rng.random() < 0.2:
        first = rng.randint(1, 6)
        data["ports"] = [first, f"{first + 1}-{first + 1 + rng.randint(1, 3)}"]
    else:
        data["port"] = rng.choice(["all", 1, 2, 3, 4, 5, 6, 7])
    if rng.random() < 0.5:
        data["name"] = rng.choice(["a", "b", "c", "d", "e", "f", "g", "h"])
    if rng.random() < 0.15:
        data["check"] = {"kind": "tcp", "port": 80, "via": rng.choice(["real", "vip"])}
    return Service.model_validate(data)


def full_check_clean(health: HealthSettings, services: list[Service]) -> bool:
    top = Config.model_validate({"interfaces": ["lo"], "limits": LIMITS, "health": health})
    return not top.whole_config_problems(services)


@pytest.mark.parametrize("seed", range(20))
def test_the_index_proves_clean_exactly_what_the_full_check_finds_clean(seed: int) -> None:
    rng = random.Random(seed)
    health = HealthSettings.model_validate(
        {"probe_source": "192.0.2.250/24"} if seed % 2 else {"probe_source6": "2001:db8::fa/64"}
    )
    services: list[Service] = []
    index = CrossIndex.of(LIMITS, health, services)
    proven = refused = 0
    for _ in range(300):
        new = list(services)
        what = rng.random()
        if what < 0.35 or not new:
            new.insert(rng.randint(0, len(new)), service(rng))
        elif what < 0.55:
            new.remove(rng.choice(new))
        elif what < 0.9:
            new[rng.randrange(len(new))] = service(rng)
        else:
            rng.shuffle(new)
        take = index.update(LIMITS, health, new)
        clean = full_check_clean(health, new)
        assert (take is not None) == clean, [s.model_dump() for s in new]
        if take is None:
            refused += 1
            continue
        proven += 1
        take()
        services = new
        assert index == CrossIndex.of(LIMITS, health, services)  # the counts stay exact
    assert proven > 20 and refused > 20  # both ways came up


def test_other_limits_or_health_settings_go_to_the_full_check() -> None:
    rng = random.Random(1)
    health = HealthSettings()
    services = [service(rng)]
    while not full_check_clean(health, services):
        services = [service(rng)]
    index = CrossIndex.of(LIMITS, health, services)
    assert index.update(LIMITS, health, services) is not None
    assert index.update(LIMITS.model_copy(update={"max_vips": 4}), health, services) is None
    other = HealthSettings.model_validate({"probe_source": "192.0.2.250/24"})
    assert index.update(LIMITS, other, services) is None
    assert index.update(LIMITS, health, services + services) is None  # one object twice
