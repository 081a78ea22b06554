"""Integration fixtures: the network-namespace lab (carom.lab), up once per session."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from typing import IO

import pytest

from carom.lab import Lab

# Integration tests create fixed-name namespaces (the lab is one per machine), so
# two test runs on one machine (two checkouts, CI next to a developer) must not
# overlap: each run holds this lock while any integration test runs.
NAMESPACE_LOCK = "/run/carom-tests.lock"


_held_lock: list[IO[str]] = []


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Wait for any other test run on this machine to finish with its namespaces,
    before the first integration test starts, and hold the lock to the end of
    the session. A hook wrapper outside pytest-timeout's: the wait is not
    counted in the test's timeout (another run may hold the lock for minutes)."""
    if not _held_lock and os.geteuid() == 0:
        lock = open(NAMESPACE_LOCK, "w")  # noqa: SIM115 - held for the session
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held_lock.append(lock)
    yield


def pytest_sessionfinish(session: pytest.Session) -> None:
    for lock in _held_lock:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    _held_lock.clear()


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab, built once for the session and always torn down, even when a
    test or the build fails (a failed Lab.up() removes what it built)."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for tool in ("ip", "ethtool", "sysctl", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the lab needs {tool}")
    the_lab = Lab()
    the_lab.up()
    try:
        yield the_lab
    finally:
        the_lab.down()
