"""daemon/changed.py follows the services that changed and gives what a full
walk of each config gives: the remote reals' addresses (each once), the
config's warnings, its VIPs."""

from __future__ import annotations

import random

from carom.config.schema import Config, Service
from carom.daemon.changed import ConfigWarnings, RealAddresses, vips_of

POOL = [f"10.0.0.{i}" for i in range(1, 12)]
LOCAL = {"10.0.0.5"}


def _service(rng: random.Random, port: int) -> Service:
    reals = [
        {"address": a, "local": a in LOCAL, "weight": rng.choice([0, 1, 1])}
        for a in rng.sample(POOL, rng.randint(0, 6))
    ]
    vip = rng.choice(["192.0.2.1", "192.0.2.2", "192.0.2.3"])
    return Service.model_validate({"vip": vip, "port": port, "reals": reals})


def _walk(services: list[Service]) -> list[str]:
    return list(dict.fromkeys(str(r.address) for s in services for r in s.reals if not r.local))


def test_the_addresses_of_each_config_after_random_changes() -> None:
    rng = random.Random(5)
    top = Config.model_validate({"interfaces": ["lo"], "limits": {"maglev_table_size": 13}})
    index, warnings = RealAddresses(), ConfigWarnings()
    services: list[Service] = []
    for step in range(400):
        services = list(services)
        roll = rng.random()
        if roll < 0.4 or not services:
            services.append(_service(rng, 1000 + step))
        elif roll < 0.6:
            services.remove(rng.choice(services))
        else:
            services[rng.randrange(len(services))] = _service(rng, 5000 + step)
        config = top.model_copy(update={"services": tuple(services)})
        got = [str(a) for a in index.of(config)]
        assert sorted(got) == sorted(_walk(services)), step
        assert len(got) == len(set(got))
        assert warnings.of(config) == config.warnings(), step
        assert vips_of(config) == list(dict.fromkeys(s.vip for s in services))
