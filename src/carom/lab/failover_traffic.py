"""What the failover scenarios watch (docs/cluster.md, "Proof in the lab"):
long-lived connections and their pings (carom.lab.holdclient), a stream of new
connections (carom.lab.prober), and both directors' scheduling counters, from
which ForwarderWatch tells how long two directors forwarded at once."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from carom import abi
from carom.bpf import libbpf
from carom.bpf.maps import TypedMap
from carom.lab import topology as t
from carom.lab.lab import Lab


def quit_helper(proc: subprocess.Popen[str]) -> None:
    """End a lab helper process we started: `quit` on its stdin, kill if it hangs."""
    if proc.poll() is not None:
        return
    assert proc.stdin is not None
    try:
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


class Held:
    """Long-lived connections from one client (carom.lab.holdclient)."""

    def __init__(self, lab: Lab, client: str, banner: int, http: int, vip: str = str(t.VIP4)):
        self.proc = lab.popen(
            client,
            [
                sys.executable,
                "-m",
                "carom.lab.holdclient",
                "--vip",
                vip,
                "--banner",
                str(banner),
                "--http",
                str(http),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self._line()
        self.conns: list[dict[str, Any]] = first["connected"]
        self.client = client
        self.failed: dict[int, str] = {}  # index -> first error

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"holdclient exited ({self.proc.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def ping(self) -> list[dict[str, Any]]:
        """One round trip on every connection; failures and moves are kept in
        `failed` (first error per connection), the raw results returned."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("ping\n")
        self.proc.stdin.flush()
        results: list[dict[str, Any]] = self._line()["ping"]
        for i, r in enumerate(results):
            if not r["ok"]:
                self.failed.setdefault(i, r["error"])
            elif r["server"] != self.conns[i]["server"]:
                self.failed.setdefault(i, f"moved to {r['server']}")
        return results

    def lost(self) -> list[str]:
        return [
            f"{self.client} {self.conns[i]['kind']} port {self.conns[i]['local_port']} "
            f"on {self.conns[i]['server']}: {err}"
            for i, err in sorted(self.failed.items())
        ]

    def close(self) -> None:
        quit_helper(self.proc)


class Prober:
    """New connections every 20 ms from a client (carom.lab.prober)."""

    def __init__(self, lab: Lab, client: str, every: float = 0.02) -> None:
        self.proc = lab.popen(
            client,
            [sys.executable, "-m", "carom.lab.prober", "--vip", str(t.VIP4), "--every", str(every)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())
        self.every = every

    def attempts(self) -> list[tuple[float, bool, str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        return [tuple(a) for a in json.loads(self.proc.stdout.readline())["attempts"]]

    def outage_ms(self, since: float, until: float) -> tuple[float, int]:
        """How long after `since` new connections were not served reliably: up to
        the first success after the last failure (or, with no failure, the longest
        gap between successes), and how many attempts failed."""
        att = [a for a in self.attempts() if since <= a[0] <= until]
        failed = [a[0] for a in att if not a[1]]
        ok = [a[0] for a in att if a[1]]
        if failed:
            after = [s for s in ok if s > failed[-1]]
            end = after[0] if after else until
            return round((end - since) * 1000, 1), len(failed)
        worst, last = 0.0, since
        for s in ok:
            worst, last = max(worst, s - last), s
        return round(max(0.0, worst - self.every) * 1000, 1), 0

    def close(self) -> None:
        quit_helper(self.proc)


def forwarded(node: t.Node) -> int:
    """Frames this director's data plane has scheduled (to a remote real or to its
    own stack as a real), read from its pinned `stats` map: works whether or not
    its daemon runs, or is frozen."""
    fd = libbpf.obj_get(os.path.join(t.LAB_BPFFS, "carom", node.short, "stats"))
    try:
        info = libbpf.map_info(fd)
        m = TypedMap("stats", fd, info.type, info.max_entries, ctypes.c_uint32, ctypes.c_uint64)
        return sum(
            int(m.sum(int(c)) or 0) for c in (abi.Counter.TX_DSR, abi.Counter.PASS_LOCAL_REAL)
        )
    finally:
        os.close(fd)


class ForwarderWatch:
    """Samples both directors' scheduling counters every `every` s in a thread:
    how long, at most, both scheduled traffic in the same windows."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            # a data plane being replaced or removed: no sample this time
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), forwarded(t.DIR1), forwarded(t.DIR2)))
            time.sleep(self.every)

    def stop(self) -> float:
        """The longest stretch (seconds) of consecutive windows in which both
        directors scheduled at least one frame."""
        self._stop.set()
        self._thread.join()
        longest = run = 0.0
        for (t0, a0, b0), (t1, a1, b1) in zip(self.samples, self.samples[1:], strict=False):
            if a1 > a0 and b1 > b0:
                run += t1 - t0
                longest = max(longest, run)
            else:
                run = 0.0
        return round(longest, 2)
