"""Daemon tasks that must survive failures: a counter read that fails is logged
and retried, never the end of the daemon."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from carom.bpf.loader import Dataplane, Limits
from carom.daemon import app

pytestmark = [pytest.mark.root]


def test_failed_counter_read_logs_and_retries(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app, "COUNTER_INTERVAL_S", 0.01)
    d = app.Daemon("unused.yaml")
    dp = Dataplane.load(Limits(max_services=2, max_reals=4, maglev_table_size=13))
    d.dp = dp
    stats = dp["stats"]
    good_fd = stats.fd
    bad_fd = os.open("/dev/null", os.O_RDONLY)
    stats.fd = bad_fd  # not a map: every read fails

    async def run() -> None:
        task = asyncio.create_task(d._watch_counters())
        await asyncio.sleep(0.1)
        assert not task.done()  # still running after failed reads
        stats.fd = good_fd  # the map is readable again: reads go on
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()

    try:
        with caplog.at_level(logging.ERROR, logger="carom.daemon"):
            asyncio.run(run())
    finally:
        stats.fd = good_fd
        os.close(bad_fd)
        dp.close()
        d.worker.shutdown()
        d.parser.shutdown()
    failures = [r for r in caplog.records if "counters failed" in r.getMessage()]
    assert len(failures) >= 2  # logged, then retried
