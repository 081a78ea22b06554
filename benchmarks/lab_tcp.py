"""Part 3: real TCP through the balancer, in the full lab (carom.lab.Lab).

wrk in carom-client1 (behind the router) loads HTTP/1.1 keep-alive servers
(benchmarks/lab/httpd.py, the same on every real, 4 KiB bodies), alternated in
the same run:

  direct    to carom-real1's own address: one server, no balancer;
  carom     to the VIP, carom's daemon on carom-dir1 with DSR: requests go
            client -> router -> dir1 (XDP_TX) -> real, replies go
            real -> router -> client, never through the director;
  haproxy   HAProxy in TCP mode in carom-dir2 (192.0.2.3), roundrobin: both
            directions go through the proxy;

carom and HAProxy each twice: over real1 alone (port 8082: the same single
server as `direct`, so the difference is the balancer's path alone) and over
real1-3 (port 8081). On two CPUs shared by wrk, the router, the bridges and
the servers, three server processes are not faster than one, so `direct` is
the reference for the one-real rows, and a rough one for the three-real rows.

carom's daemon and HAProxy run for the whole part (each only sees its own
traffic), started and stopped by PID. Before measuring, a few single requests
per contender show who answers (X-Served-By / the body).

The director's share of the bytes: the byte counters of the director's
interface (/sys/class/net/carom0/statistics in its namespace) around each wrk
run, against the bytes wrk read. Under DSR the director transmits only what
clients send (requests and ACKs); a proxy transmits every response byte too.

The whole lab shares two CPUs with wrk, the router and the servers, so the
absolute rates say little; the ratios between the contenders, alternated in
the same run, are the result."""

from __future__ import annotations

import contextlib
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Budget, Row
from carom.lab import Lab
from carom.lab import topology as t
from carom.lab.director import Director, lab_config
from carom.lab.nodes import existing_namespaces

PORT, PORT1 = 8081, 8082  # services over the three reals, and over real1 alone
SIZE = 4096
CONNS, THREADS = 16, 1
SECTION = f"3 real TCP (lab; wrk -t{THREADS} -c{CONNS}, HTTP keep-alive, {SIZE // 1024} KiB bodies)"
HTTPD = Path(__file__).parent / "lab" / "httpd.py"
HAPROXY_ADDR = str(t.DIR2.main.addr4)

DIRECT = "direct to real1, no balancer"
CAROM1 = "carom DSR, real1 only"
HAPROXY1 = "HAProxy TCP mode, real1 only"
CAROM = "carom DSR, 3 reals"
HAPROXY = "HAProxy TCP mode, 3 reals"
CONTENDERS = (DIRECT, CAROM1, HAPROXY1, CAROM, HAPROXY)
URLS = {
    DIRECT: f"http://{t.REAL1.main.addr4}:{PORT}/",
    CAROM1: f"http://{t.VIP4}:{PORT1}/",
    HAPROXY1: f"http://{HAPROXY_ADDR}:{PORT1}/",
    CAROM: f"http://{t.VIP4}:{PORT}/",
    HAPROXY: f"http://{HAPROXY_ADDR}:{PORT}/",
}
DIRECTOR_OF = {CAROM1: t.DIR1.name, CAROM: t.DIR1.name, HAPROXY1: t.DIR2.name, HAPROXY: t.DIR2.name}
# what the harness prints each row's ratio against
BASELINE = {DIRECT: None, CAROM1: DIRECT, HAPROXY1: CAROM1, CAROM: DIRECT, HAPROXY: CAROM}


def haproxy_config() -> str:
    servers = "\n".join(f"    server {n.short} {n.main.addr4}:{PORT}" for n in t.REALS)
    return f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend carom_bench
    bind {HAPROXY_ADDR}:{PORT}
    default_backend reals

backend reals
    balance roundrobin
{servers}

frontend carom_bench_one
    bind {HAPROXY_ADDR}:{PORT1}
    default_backend real1

backend real1
    server {t.REAL1.short} {t.REAL1.main.addr4}:{PORT1}
"""


# --- processes in lab nodes, started and stopped by PID ---------------------------


class Proc:
    """One long-running process in a lab node (`ip netns exec` execs in place, so
    the Popen PID is the process's own)."""

    def __init__(self, lab: Lab, node: str, argv: list[str], ready: str | None) -> None:
        self.node = node
        self.proc: subprocess.Popen[bytes] = lab.popen(
            node, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        if ready is not None:
            self.wait_line(ready, 15.0)

    def wait_line(self, ready: str, timeout: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                seen += line
                if line.decode(errors="replace").startswith(ready):
                    return
                if not line:  # exited
                    break
        self.stop()
        raise RuntimeError(f"{self.node}: did not start: {seen.decode(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_http(lab: Lab, url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = lab.exec(t.CLIENT1.name, ["curl", "-s", "-m", "2", url], timeout=10)
        if r.returncode == 0 and r.stdout.startswith("served-by"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} does not answer from {t.CLIENT1.name}")


def served_by(lab: Lab, url: str, n: int = 9) -> list[str]:
    """Who answers n requests, each on a new connection."""
    script = f"for i in $(seq {n}); do curl -s -m 3 '{url}' | head -1; done"
    out = lab.exec(t.CLIENT1.name, ["sh", "-c", script], timeout=60).stdout
    return [line.split()[-1] for line in out.splitlines() if line.startswith("served-by")]


# --- wrk -------------------------------------------------------------------------

_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?B)", text)
    if not m:
        raise ValueError(f"not a wrk byte count: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m.group(1)) * _TIME[m.group(2)]


@dataclass
class WrkResult:
    requests_s: float
    bytes_s: float
    bytes_read: float
    p50_ms: float
    p99_ms: float
    errors: str


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    tps = re.search(r"Transfer/sec:\s+(\S+)", out)
    read = re.search(r"requests in [\d.]+\w+, (\S+) read", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and tps and read and p50 and p99):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errors = "; ".join(
        line.strip() for line in out.splitlines() if "errors" in line or "Non-2xx" in line
    )
    return WrkResult(
        requests_s=float(rps.group(1)),
        bytes_s=_bytes(tps.group(1)),
        bytes_read=_bytes(read.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        errors=errors,
    )


def if_bytes(lab: Lab, node: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of a node's main interface, from inside its namespace."""
    base = f"/sys/class/net/{t.node(node).main.ifname}/statistics"
    out = lab.exec(node, ["cat", f"{base}/rx_bytes", f"{base}/tx_bytes"], timeout=10).stdout
    rx, tx = (int(x) for x in out.split())
    return rx, tx


@dataclass
class Sample:
    wrk: WrkResult
    dir_rx: float  # bytes the director received during the run
    dir_tx: float  # bytes it transmitted


def measure(lab: Lab, name: str, duration: float) -> Sample:
    director = DIRECTOR_OF.get(name)
    before = if_bytes(lab, director) if director else (0, 0)
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNS}", f"-d{duration:.0f}s", "--latency", URLS[name]]
    r = lab.exec(t.CLIENT1.name, argv, timeout=duration + 30)
    after = if_bytes(lab, director) if director else (0, 0)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed for {name}: {r.stderr or r.stdout}")
    return Sample(parse_wrk(r.stdout), after[0] - before[0], after[1] - before[1])


# --- the part --------------------------------------------------------------------


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _rows(results: dict[str, list[Sample]], who: dict[str, list[str]]) -> list[Row]:
    rows: list[Row] = []
    for name in CONTENDERS:
        samples = results.get(name, [])
        if not samples:
            continue
        errors = sorted({s.wrk.errors for s in samples if s.wrk.errors})
        answered = ", ".join(
            f"{n.removeprefix('carom-')}x{who[name].count(n)}"
            for n in sorted(set(who.get(name, [])))
        )
        note = (
            f"latency p50 {_med([s.wrk.p50_ms for s in samples]):.2f} ms, p99 "
            f"{_med([s.wrk.p99_ms for s in samples]):.2f} ms; single requests answered by "
            f"{answered}" + (f"; wrk: {' | '.join(errors)}" if errors else "")
        )
        b = BASELINE[name]
        rows.append(
            Row(
                SECTION,
                f"{name}: requests",
                "req/s",
                [s.wrk.requests_s for s in samples],
                baseline=f"{b}: requests" if b else None,
                higher_is_better=True,
                note=note,
            )
        )
        rows.append(
            Row(
                SECTION,
                f"{name}: response bytes",
                "MiB/s",
                [s.wrk.bytes_s / 2**20 for s in samples],
                baseline=f"{b}: response bytes" if b else None,
                higher_is_better=True,
            )
        )
    for name in (CAROM, HAPROXY):
        samples = results.get(name, [])
        if not samples:
            continue
        director = DIRECTOR_OF[name].removeprefix("carom-")
        rx = _med([s.dir_rx / s.wrk.bytes_read for s in samples])
        tx_abs = _med([s.dir_tx / 2**20 for s in samples])
        read_abs = _med([s.wrk.bytes_read / 2**20 for s in samples])
        rows.append(
            Row(
                SECTION,
                f"{name}: bytes the director sent per response byte",
                "B/B",
                [s.dir_tx / s.wrk.bytes_read for s in samples],
                baseline=None
                if name == CAROM
                else f"{CAROM}: bytes the director sent per response byte",
                note=(
                    f"{director} carom0 TX {tx_abs:.1f} MiB vs {read_abs:.1f} MiB read by wrk "
                    f"per run; it received {rx:.2f} B per response byte (veth counts "
                    "received frames without their Ethernet header)"
                ),
            )
        )
    return rows


def run(budget_s: float = 240.0, duration: float = 4.0, rounds: int = 4) -> list[Row]:
    budget = Budget(budget_s)
    if existing_namespaces():
        raise RuntimeError(
            "a lab is already up (another run, or tests?); this part builds its own: "
            "`carom lab down` first"
        )
    tmp = Path(tempfile.mkdtemp(prefix="carom-btcp-"))
    results: dict[str, list[Sample]] = {}
    who: dict[str, list[str]] = {}
    procs: list[Proc] = []
    director: Director | None = None
    lab = Lab()
    try:
        lab.up()
        for node in t.REALS:
            argv = [sys.executable, str(HTTPD), "--name", node.name, "--size", str(SIZE)]
            argv += ["--port", str(PORT)] + (["--port", str(PORT1)] if node == t.REAL1 else [])
            procs.append(Proc(lab, node.name, argv, ready="ready"))
        cfg_path = tmp / "haproxy.cfg"
        cfg_path.write_text(haproxy_config())
        procs.append(Proc(lab, t.DIR2.name, ["haproxy", "-db", "-f", str(cfg_path)], None))
        reals = [{"address": str(n.main.addr4)} for n in t.REALS]
        real1 = [{"address": str(t.REAL1.main.addr4)}]
        services: list[dict[str, Any]] = [
            {"name": "bench", "vip": str(t.VIP4), "port": PORT, "reals": reals},
            {"name": "bench-one", "vip": str(t.VIP4), "port": PORT1, "reals": real1},
        ]
        director = Director(lab, t.DIR1.name)
        director.start(lab_config(t.DIR1.name, services=services))
        for name in CONTENDERS:
            wait_http(lab, URLS[name])
            who[name] = served_by(lab, URLS[name])
        ones = (DIRECT, CAROM1, HAPROXY1)
        if any(set(who[n]) != {t.REAL1.name} for n in ones) or len(set(who[CAROM])) < 2:
            raise RuntimeError(f"unexpected answers: {who}")
        per_round = len(CONTENDERS) * (duration + 3.0)
        for r in range(rounds):
            if r > 0 and budget.left() < per_round + 20:
                break
            for name in CONTENDERS if r % 2 == 0 else tuple(reversed(CONTENDERS)):
                if budget.left() < duration + 20:
                    break
                results.setdefault(name, []).append(measure(lab, name, duration))
        return _rows(results, who)
    finally:
        if director is not None:
            with contextlib.suppress(Exception):
                director.stop(detach=True)
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from benchmarks.run import table

    print(table(run()))
