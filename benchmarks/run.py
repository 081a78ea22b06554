"""`make bench` / `carom bench`: every part, one table, one JSON file.

Parts run in sequence, each bounded in time; a part that fails is reported and
the others still run. Ratios are against the peer measured in the same run."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import Row

PARTS = [
    ("benchmarks.kernel_cost", 150.0),
    ("benchmarks.lab_forwarding", 240.0),
    ("benchmarks.lab_tcp", 240.0),
    ("benchmarks.control_plane", 120.0),
    ("benchmarks.health_checks", 90.0),
    ("benchmarks.cluster_sync", 240.0),
]
RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "memory_gib": f"{mem:.0f}",
        "python": platform.python_version(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip(),
    }


def fmt(v: float) -> str:
    if math.isnan(v):
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f}k"
    return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"


def table(rows: list[Row]) -> str:
    by_name = {r.name: r for r in rows}
    out = []
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            out.append("")
            out.append(section)
            out.append(f"  {'':<74} {'median':>9}  {'unit':<8} {'n':>4}  vs peer")
        ratio = ""
        base = by_name.get(r.baseline) if r.baseline else None
        if base is not None and base.median and not math.isnan(base.median):
            ratio = f"x{r.median / base.median:.2f} of {base.name}"
        out.append(f"  {r.name:<74} {fmt(r.median):>9}  {r.unit:<8} {len(r.samples):>4}  {ratio}")
        if r.note:
            out.append(f"  {'':<4}({r.note})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carom bench")
    ap.add_argument("--only", action="append", help="run only parts whose module contains this")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("carom bench needs root (BPF and network namespaces)", file=sys.stderr)
        return 2
    started = time.time()
    rows: list[Row] = []
    failures = []
    for module, budget in PARTS:
        if args.only and not any(o in module for o in args.only):
            continue
        print(f"==> {module} (at most ~{budget:.0f}s)", flush=True)
        t0 = time.monotonic()
        try:
            part = importlib.import_module(module)
            rows += part.run(budget)
        except Exception as exc:  # one broken part must not hide the others
            traceback.print_exc()
            failures.append(f"{module}: {exc}")
        print(f"    done in {time.monotonic() - t0:.0f}s", flush=True)
    print(table(rows))
    if failures:
        print("\nparts that failed:\n  " + "\n  ".join(failures))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    path = RESULTS / f"bench-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "started": stamp,
                "seconds": round(time.time() - started),
                "machine": machine(),
                "rows": [r.to_dict() for r in rows],
                "failures": failures,
            },
            indent=1,
        )
    )
    print(f"\nresults: {path}  (total {time.time() - started:.0f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
