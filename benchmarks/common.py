"""What every benchmark part returns, and how ratios and medians are made.

A part measures carom and its peers *in the same run*, alternating them
(A B A B) so a noisy machine affects both, and reports medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One measured quantity of one contender."""

    section: str  # "1 per-packet cost", "2 forwarding rate", ...
    name: str  # contender and case, e.g. "carom DSR conn hit"
    unit: str  # "ns/pkt", "Mpps", "req/s", ...
    samples: list[float] = field(default_factory=list)  # one per repetition
    baseline: str | None = None  # name of the row this one is compared with
    higher_is_better: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median"] = self.median
        return d


def alternate(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each contender once per round, in alternating order (A B, B A, ...)."""
    out: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(contenders[name]())
    return out


class Budget:
    """A time bound for a part: every loop checks it, so a run always ends."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0
