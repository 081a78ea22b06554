"""Shared fixtures: root detection and the BPF test runner."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (BPF, network namespaces)")
    for item in items:
        if "root" in item.keywords or "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bpf_runner() -> Iterator[object]:
    if not IS_ROOT:
        pytest.skip("needs root to load BPF programs")
    from tests.harness.testrun import TestRunner

    runner = TestRunner()
    try:
        yield runner
    finally:
        runner.close()
