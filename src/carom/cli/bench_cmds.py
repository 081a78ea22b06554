"""`carom bench`: runs the benchmark harness of the source tree (benchmarks/)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


def cmd_bench(args: argparse.Namespace) -> int:
    if not (REPO / "benchmarks" / "run.py").exists():
        print("carom bench needs the source tree (benchmarks/ next to src/)", file=sys.stderr)
        return 2
    extra = [a for o in args.only or [] for a in ("--only", o)]
    return subprocess.call([sys.executable, "-m", "benchmarks.run", *extra], cwd=REPO)


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: carom against its peers, in one run")
    p.add_argument("--only", action="append", help="run only parts whose name contains this")
    p.set_defaults(handler=cmd_bench)
