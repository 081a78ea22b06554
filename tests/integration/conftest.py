"""Integration fixtures: the network-namespace lab (carom.lab), up once per session."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator

import pytest

from carom.lab import Lab

# Integration tests create fixed-name namespaces (the lab is one per machine), so
# two test runs on one machine (two checkouts, CI next to a developer) must not
# overlap: each run holds this lock while any integration test runs.
NAMESPACE_LOCK = "/run/carom-tests.lock"


@pytest.fixture(scope="session", autouse=True)
def exclusive_namespaces() -> Iterator[None]:
    """Wait for any other test run on this machine to finish with its namespaces."""
    if os.geteuid() != 0:
        yield
        return
    with open(NAMESPACE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
