"""The one Limits model sizes the real maps, and its memory estimate is the
kernel's: `carom check` prints it, and the config refuses absurd totals by it."""

from __future__ import annotations

import pytest

from carom.bpf.loader import Dataplane
from carom.config.limits import Limits

pytestmark = pytest.mark.root


def _memlock(fd: int) -> int:
    """The kernel's accounting of one map (map_mem_usage, Linux 6.4+)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    raise AssertionError("no memlock line in fdinfo")


@pytest.mark.parametrize(
    "limits",
    [
        Limits(
            max_services=16,
            max_reals=2048,
            max_vips=300,
            maglev_table_size=65537,
            conn_table_size=100000,
            persist_table_size=5000,
        ),
        Limits(
            max_services=3,
            max_reals=100,
            max_vips=7,
            maglev_table_size=1021,
            conn_table_size=1024,
            persist_table_size=70000,
            conn_events_bytes=1 << 16,
        ),
    ],
    ids=["mid", "small"],
)
def test_loader_sizes_maps_from_limits_and_estimate_matches_kernel(limits: Limits) -> None:
    dp = Dataplane.load(limits)
    try:
        wanted = limits.map_entries()
        assert {n: dp.map_size(n) for n in wanted} == wanted
        for m in limits.memory():
            kernel = _memlock(dp.map_fd(m.name))
            # the kernel adds a fixed header per map (struct bpf_array / bpf_htab)
            assert abs(kernel - m.bytes) <= max(0.02 * kernel, 2048), (m.name, kernel, m.bytes)
    finally:
        dp.close()
