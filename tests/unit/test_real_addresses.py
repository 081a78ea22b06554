"""RealAddresses (daemon/image.py) follows the services that changed and gives
the addresses a full walk of the config gives: each remote real once, then the
cluster peers that are not reals."""

from __future__ import annotations

import random

from carom.config.schema import Config, Service
from carom.daemon.image import RealAddresses

POOL = [f"10.0.0.{i}" for i in range(1, 12)]
LOCAL = {"10.0.0.5"}


def _service(rng: random.Random, port: int) -> Service:
    reals = [{"address": a, "local": a in LOCAL} for a in rng.sample(POOL, rng.randint(0, 6))]
    return Service.model_validate({"vip": "192.0.2.1", "port": port, "reals": reals})


def _walk(services: list[Service]) -> list[str]:
    return list(dict.fromkeys(str(r.address) for s in services for r in s.reals if not r.local))


def test_the_addresses_of_each_config_after_random_changes() -> None:
    rng = random.Random(5)
    top = Config.model_validate({"interfaces": ["lo"]})
    index = RealAddresses()
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
