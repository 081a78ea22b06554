"""Part 4: the control plane. Maglev build time; the time and number of map
writes from a config change (one real added to a 100-real service) to the new
state in the maps, through the real daemon and its `carom reload`; and the
daemon's memory. The daemon runs in a namespace of its own (carom-bcp) with a
veth whose peer carries the real addresses, so ARP resolves them for real.

At scale: 4,096 services x 8 reals over 400 addresses (the schema's maximum of
services): start to forwarding, a reload that changes one real of one service,
`carom status` while a reload runs, and the event loop's largest stall (the
daemon's own loop-lag probe) while reloads and neighbour MAC changes happen."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import Budget, Row, alternate
from carom.bpf.loader import ensure_bpffs
from carom.config.limits import Limits
from carom.daemon import control
from carom.sched import maglev_native
from carom.sched.maglev import Impl, TableCache, build_ids

SECTION = "4 control plane"
NS_D, NS_R = "carom-bcp", "carom-bcpr"


def maglev_rows(rounds: int = 7) -> list[Row]:
    """Both Maglev fills on the same inputs, alternated (A B, B A, ...), and a
    TableCache hit (what the daemon pays for a service whose member set another
    service already has)."""
    rows = []
    rng = np.random.default_rng(3)
    native_note = "" if maglev_native.available() else "helper not built: numpy path"
    for n in (10, 100, 1000):
        reals = {bytes([4]) + rng.bytes(16): (i + 1, int(rng.integers(1, 5))) for i in range(n)}

        def timed(impl: Impl, reals: dict[bytes, tuple[int, int]] = reals) -> float:
            t0 = time.perf_counter()
            build_ids(reals, 65537, impl=impl)
            return (time.perf_counter() - t0) * 1000

        samples = alternate(
            {"native": lambda: timed("auto"), "numpy": lambda: timed("numpy")}, rounds
        )
        base = f"Maglev table build, {n} weighted reals, 65537 slots"
        numpy_name = f"{base} (numpy path)"
        rows.append(Row(SECTION, numpy_name, "ms", samples["numpy"]))
        rows.append(
            Row(SECTION, base, "ms", samples["native"], baseline=numpy_name, note=native_note)
        )
        cache = TableCache()
        cache.row(reals, 65537)
        hits = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            cache.row(reals, 65537)
            hits.append((time.perf_counter() - t0) * 1e6)
        rows.append(
            Row(
                SECTION,
                f"Maglev table from TableCache (hit), {n} weighted reals",
                "us",
                hits,
                note="table and fingerprint shared, not rebuilt",
            )
        )
    return rows


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=30, capture_output=True)


def _setup_netns(n_reals: int, scale: bool = False) -> None:
    _sh("ip", "netns", "add", NS_D)
    _sh("ip", "netns", "add", NS_R)
    _sh(
        "ip",
        "-n",
        NS_D,
        "link",
        "add",
        "carom0",
        "type",
        "veth",
        "peer",
        "name",
        "carom0",
        "netns",
        NS_R,
    )
    _sh("ip", "-n", NS_D, "addr", "add", "192.0.2.2/24", "dev", "carom0")
    _sh("ip", "-n", NS_D, "addr", "add", "10.77.255.1/16", "dev", "carom0")
    _sh("ip", "-n", NS_D, "link", "set", "carom0", "up")
    _sh("ip", "-n", NS_D, "link", "set", "lo", "up")
    _sh("ip", "-n", NS_R, "link", "set", "carom0", "up")
    if scale:
        addrs = [_scale_addr(i) for i in range(SCALE_ADDRS + 1)]
    else:
        addrs = [f"192.0.2.{10 + i}" for i in range(n_reals + 1)]
    batch = "".join(f"address add {a}/32 dev carom0\n" for a in addrs)
    subprocess.run(["ip", "-n", NS_R, "-batch", "-"], input=batch.encode(), check=True, timeout=30)
    # the reals' side answers ARP for all its addresses; the director's side
    # needs an XDP program on the peer for native XDP_TX on veth
    obj = os.path.join(os.path.dirname(__import__("carom").__file__), "bpf/obj/xdp_pass.bpf.o")
    _sh("ip", "-n", NS_R, "link", "set", "carom0", "xdpdrv", "obj", obj, "sec", "xdp")


def _teardown_netns() -> None:
    for ns in (NS_D, NS_R):
        subprocess.run(["ip", "netns", "del", ns], timeout=30, capture_output=True)


def _config(n_reals: int, tmp: str) -> dict[str, Any]:
    return {
        "instance": "bcp",
        "interfaces": ["carom0"],
        "bpffs": os.path.join(tmp, "bpffs"),
        "control_socket": os.path.join(tmp, "carom.sock"),
        "limits": {"conn_table_size": 1 << 20},
        "services": [
            {
                "name": "big",
                "vip": "192.0.2.250",
                "port": 80,
                "reals": [{"address": f"192.0.2.{10 + i}"} for i in range(n_reals)],
            }
        ],
    }


def daemon_rows(budget: Budget, rounds: int = 5) -> list[Row]:
    tmp = tempfile.mkdtemp(prefix="carom-bcp-")
    ensure_bpffs(os.path.join(tmp, "bpffs"))
    cfg_path = os.path.join(tmp, "carom.yaml")
    proc = None
    try:
        _setup_netns(100)
        cfg = _config(100, tmp)
        with open(cfg_path, "w") as f:
            yaml.safe_dump(cfg, f)
        log = open(os.path.join(tmp, "daemon.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NS_D, sys.executable, "-m", "carom", "run", "-c", cfg_path],
            stdout=log,
            stderr=log,
        )
        sock = cfg["control_socket"]
        deadline = time.monotonic() + 30
        while True:
            try:
                control.request(sock, "status", timeout=2)
                break
            except (OSError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(Path(tmp, "daemon.log").read_text()) from None
                time.sleep(0.1)
        st = control.request(sock, "status")["status"]
        up = [r for r in st["services"][0]["reals"] if r["state"] == "up"]
        assert len(up) == 100, f"only {len(up)} of 100 reals resolved"
        times, writes = [], []
        for i in range(rounds):
            if budget.expired():
                break
            # add real #101, then remove it again: two reloads, both measured
            for add in (True, False):
                reals = _config(101 if add else 100, tmp)["services"][0]["reals"]
                cfg["services"][0]["reals"] = reals
                with open(cfg_path, "w") as f:
                    yaml.safe_dump(cfg, f)
                t0 = time.perf_counter()
                reply = control.request(sock, "reload")
                elapsed = (time.perf_counter() - t0) * 1000
                assert reply["ok"], reply
                if add:
                    times.append(elapsed)
                    writes.append(float(reply["writes"]))
            _ = i
        rss_kb = 0
        # `ip netns exec` execs the daemon in place: same PID
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
        # the Maglev array is mapped into the daemon (BPF_F_MMAPABLE): its pages
        # count as resident file pages, but they are the kernel's map memory
        limits = Limits.model_validate(cfg.get("limits", {}))
        mapped_kb = -(-limits.max_services * limits.maglev_table_size * 8 // 4096) * 4
        return [
            Row(
                SECTION,
                "config change -> maps: add 1 real to a 100-real service (carom reload round trip)",
                "ms",
                times,
                note="includes config parse, ARP check of 101 reals, Maglev rebuild, writes",
            ),
            Row(
                SECTION,
                "map writes for that change",
                "writes",
                writes,
                note=f"of {65537} slots; 1/101 of the table is ~649",
            ),
            Row(
                SECTION,
                "daemon memory (RSS), 100 reals, 1M-entry conn table",
                "MiB",
                [(rss_kb - mapped_kb) / 1024],
                note="user space only; BPF maps are kernel memory: VmRSS "
                f"{rss_kb / 1024:.0f} MiB counts the {mapped_kb / 1024:.0f} MiB Maglev array "
                "mapped into the daemon, left out here",
            ),
        ]
    finally:
        if proc is not None and proc.poll() is None:
            try:
                control.request(_config(100, tmp)["control_socket"], "stop", detach=True)
                proc.wait(15)
            except (OSError, ConnectionError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        _teardown_netns()
        subprocess.run(["umount", "-l", os.path.join(tmp, "bpffs")], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


SCALE_SERVICES, SCALE_REALS, SCALE_ADDRS = 4096, 8, 400


def _scale_addr(i: int) -> str:
    return f"10.77.{i // 200}.{10 + i % 200}"


def _scale_config(tmp: str) -> dict[str, Any]:
    """4,096 services on one VIP, 8 reals each out of 400 addresses: service i
    takes 8 consecutive addresses from (7 i) mod 400, so 400 distinct tables."""
    services = []
    for i in range(SCALE_SERVICES):
        start = (7 * i) % SCALE_ADDRS
        reals = [{"address": _scale_addr((start + k) % SCALE_ADDRS)} for k in range(SCALE_REALS)]
        services.append({"name": f"s{i}", "vip": "192.0.2.250", "port": 1000 + i, "reals": reals})
    return {
        "instance": "bcp",
        "interfaces": ["carom0"],
        "bpffs": os.path.join(tmp, "bpffs"),
        "control_socket": os.path.join(tmp, "carom.sock"),
        "limits": {"max_services": SCALE_SERVICES, "conn_table_size": 65536},
        "services": services,
    }


class _Daemon:
    """`carom run` in the director namespace, stopped (detached) on exit."""

    def __init__(self, tmp: str, cfg: dict[str, Any]) -> None:
        self.tmp = tmp
        self.cfg = cfg
        self.sock = cfg["control_socket"]
        self.cfg_path = os.path.join(tmp, "carom.yaml")
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self) -> None:
        with open(self.cfg_path, "w") as f:
            yaml.safe_dump(self.cfg, f, sort_keys=False)

    def start(self, timeout: float) -> float:
        """Seconds from launch until the daemon answers (maps written, XDP attached)."""
        self.write()
        log = open(os.path.join(self.tmp, "daemon.log"), "wb")  # noqa: SIM115
        t0 = time.perf_counter()
        argv = ["ip", "netns", "exec", NS_D, sys.executable, "-m", "carom", "run"]
        self.proc = subprocess.Popen(
            [*argv, "-c", self.cfg_path],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                control.request(self.sock, "status", timeout=60)
                return time.perf_counter() - t0
            except (OSError, ConnectionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(Path(self.tmp, "daemon.log").read_text()) from None
                time.sleep(0.1)

    def request(self, command: str, **kw: Any) -> dict[str, Any]:
        return control.request(self.sock, command, timeout=120, **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.request("stop", detach=True)
                self.proc.wait(60)
            except (OSError, ConnectionError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def scale_rows(budget: Budget, rounds: int = 5) -> list[Row]:
    tmp = tempfile.mkdtemp(prefix="carom-bcp-")
    ensure_bpffs(os.path.join(tmp, "bpffs"))
    d = _Daemon(tmp, _scale_config(tmp))
    try:
        _setup_netns(0, scale=True)
        started = d.start(timeout=max(budget.left(), 60))
        st = d.request("status")["status"]
        up = sum(1 for s in st["services"] for r in s["reals"] if r["state"] == "up")
        assert up == SCALE_SERVICES * SCALE_REALS, f"only {up} reals up"
        start_writes = st["last_reload"]["writes"]
        phases = st["last_reload"].get("start_phases", {})
        # before the daemon's clock started (interpreter, imports, `ip netns exec`) and
        # the first status reply
        phases = {"python": started - st["uptime_s"], **phases}
        tables = st["maglev_tables"]["distinct"]
        spare = _scale_addr(SCALE_ADDRS)  # carried by the reals' side, in no service
        times, writes, status_ms, built, applied, parsed = [], [], [], [], [], []
        busy_times: list[float] = []
        parts: dict[str, list[float]] = {}  # the apply's parts, ms
        neigh: list[float] = []  # the reload's neighbours phase, ms
        ideal = 65537 / SCALE_REALS  # the slots of the replaced real
        for i in range(rounds):
            if budget.expired():
                break
            svc = d.cfg["services"][(977 * i) % SCALE_SERVICES]
            old = svc["reals"][3]["address"]
            # alone, then with a `carom status` asked 10 ms in (it competes for the GIL)
            for with_status in (False, True):
                for new in (spare, old):  # swap one real out and back: two reloads
                    svc["reals"][3]["address"] = new
                    d.write()
                    answered: list[float] = []

                    def ask_status(answered: list[float] = answered) -> None:
                        time.sleep(0.01)
                        t0 = time.perf_counter()
                        d.request("status")
                        answered.append((time.perf_counter() - t0) * 1000)

                    asker = threading.Thread(target=ask_status)
                    if with_status:
                        asker.start()
                    t0 = time.perf_counter()
                    reply = d.request("reload")
                    elapsed = (time.perf_counter() - t0) * 1000
                    if with_status:
                        asker.join()
                    assert reply["ok"], reply
                    if new == spare and with_status:
                        busy_times.append(elapsed)
                    elif new == spare:
                        times.append(elapsed)
                        writes.append(float(reply["writes"]))
                        built.append(float(reply.get("tables_built", 0)))
                        applied.append(reply["phases"]["apply"] * 1000)
                        for k, v in reply["phases"].items():
                            if k.startswith("apply_"):
                                parts.setdefault(k.removeprefix("apply_"), []).append(v * 1000)
                        neigh.append(reply["phases"]["neighbours"] * 1000)
                        parsed.append(reply["phases"]["parse"] * 1000)
                    status_ms.extend(answered)
            # a neighbour MAC change of a real used by 8 services: events, not polling
            mac = f"02:00:00:00:{i % 256:02x}:01"
            _sh(
                "ip",
                "-n",
                NS_D,
                "neigh",
                "replace",
                _scale_addr(5),
                "lladdr",
                mac,
                "dev",
                "carom0",
                "nud",
                "reachable",
            )
        time.sleep(0.5)
        st = d.request("status")["status"]
        lag = st["loop_lag_ms"]["max"]
        worst = st["loop_lag_ms"].get("worst") or {}
        return [
            Row(
                SECTION,
                "4096 services x 8 reals: start to forwarding",
                "s",
                [started],
                note=f"{tables} distinct tables over 400 addresses; {start_writes} map writes "
                "(Maglev slots stored through the mapped array); in the daemon, s: "
                + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()),
            ),
            Row(
                SECTION,
                "4096 services: reload changing one real of one service (round trip)",
                "ms",
                times,
                note="target <= 200 ms; includes parsing the 4096-service config (only the "
                "changed service is parsed again) and resolving the new real's MAC "
                f"(median {np.median(neigh) if neigh else float('nan'):.0f} ms); tables "
                f"built per reload: at most {max(built, default=0):.0f}",
            ),
            Row(
                SECTION,
                "  of which config parse and validation",
                "ms",
                parsed,
                note="incremental: the changed service, the top level, the cross-service rules",
            ),
            Row(
                SECTION,
                "  of which the daemon's apply (tables, writes, commit)",
                "ms",
                applied,
                note=", ".join(f"{k} {np.median(v):.0f}" for k, v in parts.items()),
            ),
            Row(
                SECTION,
                "the same reload while a `carom status` runs (round trip)",
                "ms",
                busy_times,
                note="status is asked 10 ms after the reload; encoding 4096 services "
                "competes for the GIL",
            ),
            Row(
                SECTION,
                "map writes for that reload",
                "writes",
                writes,
                note=f"ideal: the replaced real's {ideal:.0f} slots + 1 reals entry; target <= 2x",
            ),
            Row(
                SECTION,
                "carom status answered during such a reload",
                "ms",
                status_ms,
                note="4096 services of JSON",
            ),
            Row(
                SECTION,
                "largest event-loop stall during reloads, status and MAC changes",
                "ms",
                [float(lag)],
                note="daemon's loop-lag probe (10 ms ticks); target <= 50 ms; "
                f"{st['loop_lag_ms'].get('stalls', 0)} ticks >= 50 ms late; the worst: "
                f"{worst.get('gc_ms', 0)} ms in gc, the daemon got {worst.get('cpu_ms', '?')} ms "
                f"of CPU (its loop thread {worst.get('loop_cpu_ms', '?')}), loop at "
                f"{worst.get('where') or '?'} ({worst.get('samples', 0)} samples), other "
                f"thread: {worst.get('others') or '-'}",
            ),
        ]
    finally:
        d.stop()
        keep = os.environ.get("CAROM_BENCH_LOGS")  # a directory: the daemon's log is kept there
        if keep:
            os.makedirs(keep, exist_ok=True)
            stamp = time.strftime("%H%M%S")
            shutil.copy(os.path.join(tmp, "daemon.log"), os.path.join(keep, f"scale-{stamp}.log"))
        _teardown_netns()
        subprocess.run(["umount", "-l", os.path.join(tmp, "bpffs")], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def run(budget_s: float = 120.0) -> list[Row]:
    budget = Budget(budget_s)
    rows = maglev_rows() + daemon_rows(budget)
    if os.environ.get("CAROM_BENCH_SCALE", "1") != "0":
        rows += scale_rows(Budget(max(budget.left(), 0) + 300.0))
    return rows


if __name__ == "__main__":
    from benchmarks.run import table

    print(table(run()))
