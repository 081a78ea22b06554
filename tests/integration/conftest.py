"""Integration fixtures: the network-namespace lab (carom.lab), up once per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from carom.lab import Lab


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
