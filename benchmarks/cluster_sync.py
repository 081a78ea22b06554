"""Part 6: connection sync between directors.

* bulk resync: a 1M-entry conn_table pulled from one data plane into another
  through the real path (batched map dump, numpy encode, HMAC-framed TCP on
  loopback, decode, batched map writes). Both ends run in this one process,
  so they share one core's worth of Python: an upper bound of the time two
  hosts need.
* sync stream capacity: ring-buffer records (made beforehand, as the data
  plane writes them) fed at a fixed rate for 2 s through the sender's whole
  path (numpy encode of each drain, real id -> address, batcher, HMAC, UDP on
  loopback)
  into a receiver in another process that writes them into its own
  conn_table; a rate passes when every record arrives (no sequence gap, none
  missing). Bytes per synced flow from the sender's counters. Not included:
  the kernel writing the ring buffer, and epoll wake-ups.
* sync lag in the lab, first packet to entry in the peer's map: see
  `lab_sync_rows` (needs the lab; skipped if another part holds it).
* end to end at fixed new-flow rates, from the active's XDP program through
  the daemons to the backup's map: benchmarks/cluster_sync_e2e.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import Budget, Row
from carom import abi
from carom.bpf import libbpf
from carom.bpf.loader import Dataplane
from carom.cluster import bulk, codec
from carom.config.limits import Limits

SECTION = "6 connection sync"
N_BULK = 1_000_000
REALS = {ipaddress.ip_address(f"192.0.2.{11 + i}"): i + 1 for i in range(5)}


def _limits(entries: int) -> Limits:
    return Limits(
        max_services=4,
        max_reals=16,
        maglev_table_size=13,
        conn_table_size=entries,
        persist_table_size=1024,
        max_vips=4,
    )


def fill(dp: Dataplane, n: int, now_ns: int) -> None:
    """n IPv4 flows (distinct client address and port) to random reals."""
    keys = np.zeros(n, dtype=codec.KEY_DT)
    idx = np.arange(n, dtype=np.uint32)
    src = (0x0A000000 + (idx >> 4)).astype(">u4")  # 10.x.y.z
    keys["src"][:, :4] = src.view(np.uint8).reshape(n, 4)
    keys["dst"][:, :4] = np.frombuffer(ipaddress.ip_address("192.0.2.100").packed, np.uint8)
    keys["sport"] = (1024 + (idx & 15)).astype(">u2").view(np.uint8).reshape(n, 2)
    keys["dport"] = np.frombuffer((80).to_bytes(2, "big"), np.uint8)
    keys["proto"] = 6
    keys["family"] = int(abi.Family.IPV4)
    vals = np.zeros(n, dtype=codec.VAL_DT)
    vals["real_id"] = 1 + idx % 5
    vals["last_seen_ns"] = now_ns
    m = dp["conn_table"]
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        m.update_batch_raw(keys[s:e].tobytes(), vals[s:e].tobytes(), e - s)


def bulk_once(src: Dataplane, dst: Dataplane, key: bytes) -> tuple[float, int]:
    """One pull of src's table into dst over loopback TCP: (seconds, records)."""
    reals = codec.RealMap.of(REALS)
    m = src["conn_table"]

    def snapshot() -> list[tuple[bytes, int]]:
        dump = libbpf.map_lookup_batch_raw(
            m.fd, m.key_size, m.value_size, m.max_entries, chunk=16384
        )
        return list(bulk.snapshot_pieces(dump, reals, 10**13, time.monotonic_ns))

    async def go() -> tuple[float, int]:
        server = bulk.BulkServer(key, 1, {ipaddress.ip_address("127.0.0.1"): 2}, snapshot)
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        progress = bulk.Progress()
        conns = dst["conn_table"]

        def chunk(payload: bytes, count: int) -> None:
            codec.apply_payload(payload, count, conns, reals, time.monotonic_ns())

        t0 = time.monotonic()
        await bulk.pull(key, 2, 1, "127.0.0.1", port, chunk, progress)
        took = time.monotonic() - t0
        srv.close()
        return took, progress.records

    return asyncio.run(go())


def bulk_rows(budget: Budget, rounds: int = 3) -> list[Row]:
    key = os.urandom(32)
    src = Dataplane.load(_limits(2 * N_BULK))
    dst = Dataplane.load(_limits(2 * N_BULK))
    try:
        fill(src, N_BULK, time.monotonic_ns())
        samples, rates = [], []
        for _ in range(rounds):
            if budget.expired():
                break
            dst["conn_table"].clear()
            took, n = bulk_once(src, dst, key)
            got = dst["conn_table"].count()
            if n != N_BULK or got != N_BULK:
                raise RuntimeError(f"bulk resync moved {n} records, peer holds {got}")
            samples.append(took)
            rates.append(n / took)
        return [
            Row(SECTION, "bulk resync of 1M entries (dump, encode, TCP, apply)", "s", samples),
            Row(SECTION, "bulk resync rate", "entries/s", rates, higher_is_better=True),
        ]
    finally:
        src.close()
        dst.close()


# --- stream capacity: sender here, receiver in a child process ------------------------

RECEIVER = """
import asyncio, json, sys, time
from types import SimpleNamespace
from carom.bpf.loader import Dataplane
from carom.cluster.service import ClusterService
from carom.config.cluster import Cluster
from benchmarks.cluster_sync import _limits, REALS
cluster = Cluster.model_validate(json.loads(sys.argv[1]))
dp = Dataplane.load(_limits(1 << 21))
rec = SimpleNamespace(real_ids=REALS, current=SimpleNamespace(reals={}))
host = SimpleNamespace(dp=dp, rec=rec, owner=None, config=None)
svc = ClusterService(host, cluster)
async def main():
    loop = asyncio.get_running_loop()
    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            svc.node.datagram(data, __import__("ipaddress").ip_address(addr[0]))
    t, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.2", cluster.port))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    print(json.dumps({"received": svc.stats["received_records"], "applied": svc.stats["applied"],
                      "gaps": svc.stats["gaps"], "dropped": dict(svc.node.dropped),
                      "entries": dp["conn_table"].count()}), flush=True)
asyncio.run(main())
"""


def _cluster(tmp: str) -> dict[str, Any]:
    key = Path(tmp) / "key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o600)
    return {
        "node": "a",
        "key_file": str(key),
        "port": 17946,
        "members": [
            {"name": "a", "id": 1, "priority": 200, "addresses": ["127.0.0.1"]},
            {"name": "b", "id": 2, "priority": 100, "addresses": ["127.0.0.2"]},
        ],
    }


def stream_once(rate: int, seconds: float, tmp: str) -> dict[str, Any]:
    from carom.cluster.service import ClusterService
    from carom.config.cluster import Cluster

    spec = _cluster(tmp)
    recv_spec = dict(spec, node="b")
    child = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, json.dumps(recv_spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("receiver did not start")
        cluster = Cluster.model_validate(spec)
        by_id = {rid: abi.RealInfo(addr=abi.Addr.of(a), family=4) for a, rid in REALS.items()}
        host = SimpleNamespace(
            dp=None,
            rec=SimpleNamespace(real_ids=REALS, current=SimpleNamespace(reals=by_id)),
            owner=None,
            config=None,
        )
        svc = ClusterService(host, cluster)  # type: ignore[arg-type]
        svc.forwarding = True
        dst = ipaddress.ip_address("192.0.2.100")

        # The sender's whole path from the data plane's records: a drain of
        # ring-buffer records -> numpy encode (real id -> address) -> raw
        # batcher -> HMAC -> UDP. The records are made beforehand.
        n_max = int(rate * seconds) + 1
        keys = np.zeros(n_max, dtype=codec.KEY_DT)
        idx = np.arange(n_max, dtype=np.uint32)
        keys["src"][:, :4] = (0x0A000000 + idx).astype(">u4").view(np.uint8).reshape(n_max, 4)
        keys["dst"][:, :4] = np.frombuffer(dst.packed, np.uint8)
        keys["sport"] = (1024 + idx % 50000).astype(">u2").view(np.uint8).reshape(n_max, 2)
        keys["dport"] = np.frombuffer((80).to_bytes(2, "big"), np.uint8)
        keys["proto"] = 6
        keys["family"] = int(abi.Family.IPV4)
        raw_keys = keys.tobytes()
        ks = codec.KEY_DT.itemsize
        tail = [
            bytes(abi.ConnEventRecord(real_id=1 + i % 5, kind=int(abi.ConnEventKind.NEW)))[ks:]
            for i in range(5)
        ]
        records = [raw_keys[i * ks : (i + 1) * ks] + tail[i % 5] for i in range(n_max)]

        async def go() -> float:
            loop = asyncio.get_running_loop()
            t, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            svc.node.transports.append(t)
            batcher = asyncio.create_task(svc.raw_batcher.run())
            t0 = time.monotonic()
            sent = 0
            while (now := time.monotonic()) - t0 < seconds:
                due = min(n_max, int((now - t0) * rate))
                if due > sent:
                    svc._queue_raw(b"".join(records[sent:due]))  # one drain's worth
                    sent = due
                await asyncio.sleep(0.001)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.05)
            svc.raw_batcher.flush()
            await asyncio.sleep(0.3)
            batcher.cancel()
            t.close()
            return sent / elapsed

        achieved = asyncio.run(go())
        child.stdin.write("report\n")
        child.stdin.flush()
        report: dict[str, Any] = json.loads(child.stdout.readline())
        report["achieved"] = achieved
        report["sent"] = svc.raw_batcher.stats["records"]
        report["bytes"] = svc.raw_batcher.stats["bytes"]
        return report
    finally:
        child.kill()
        child.wait()


def stream_rows(budget: Budget) -> list[Row]:
    rows: list[Row] = []
    best: list[float] = []
    per_flow: list[float] = []
    notes = []
    with tempfile.TemporaryDirectory(prefix="carom-bsync-") as tmp:
        for rate in (50_000, 100_000, 200_000, 400_000):
            if budget.left() < 10:
                break
            r = stream_once(rate, 2.0, tmp)
            lossless = r["received"] == r["sent"] and r["gaps"] == 0
            notes.append(
                f"{rate // 1000}k/s offered: {r['achieved'] / 1000:.0f}k/s sent, "
                f"{r['received']}/{r['sent']} received, gaps {r['gaps']}"
            )
            per_flow.append(r["bytes"] / max(1, r["sent"]))
            if lossless and r["achieved"] >= 0.95 * rate:
                best = [r["achieved"]]
            else:
                break
    rows.append(
        Row(
            SECTION,
            "sync stream: highest rate with every flow applied at the peer (UDP loopback)",
            "flows/s",
            best,
            higher_is_better=True,
            note="; ".join(notes),
        )
    )
    rows.append(Row(SECTION, "bytes on the wire per synced IPv4 flow", "B", per_flow))
    return rows


# --- sync lag in the lab: a flow's first packet -> its entry in the backup's map ------

OPENER = """
import json, socket, sys, time
vip, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out, socks = [], []
t0 = time.monotonic()
for i in range(n):
    time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    s = socket.socket()
    s.settimeout(2)
    start = time.monotonic()
    try:
        s.connect((vip, 80))
    except OSError:
        continue
    out.append((s.getsockname()[1], start))
    socks.append(s)
print(json.dumps(out), flush=True)
"""


def _poll_peer(path: str, port: int, stop: Any, seen: dict[int, float]) -> None:
    """First time each client port shows up in the peer's conn_table (1 ms polls)."""
    fd = libbpf.obj_get(path)
    try:
        ks, vs = codec.KEY_DT.itemsize, codec.VAL_DT.itemsize
        while not stop.is_set():
            now = time.monotonic()
            for keys, _, n in libbpf.map_lookup_batch_raw(fd, ks, vs, 1 << 16, chunk=8192):
                k = np.frombuffer(keys, dtype=codec.KEY_DT, count=n)
                dport = k["dport"].view(">u2").ravel()
                for sp in k["sport"][dport == port].view(">u2").ravel().tolist():
                    seen.setdefault(int(sp), now)
            time.sleep(0.001)
    finally:
        os.close(fd)


def lab_rows(budget: Budget, flows: int = 1500, rate: float = 500.0) -> list[Row]:
    import threading

    from carom.lab import Lab
    from carom.lab import topology as t
    from carom.lab.failover import ClusterRun
    from carom.lab.nodes import existing_namespaces

    if existing_namespaces():
        raise RuntimeError("a lab is already up (another run, or tests?): `carom lab down` first")
    lab = Lab()
    run = ClusterRun(lab)
    lags: list[float] = []
    note = ""
    try:
        lab.up()
        run.start(preempt=False)
        path = os.path.join(t.LAB_BPFFS, "carom", t.DIR2.short, "conn_table")
        seen: dict[int, float] = {}
        stop = threading.Event()
        poller = threading.Thread(target=_poll_peer, args=(path, t.HTTP_PORT, stop, seen))
        poller.start()
        try:
            out = lab.exec(
                t.CLIENTS[0].name,
                [sys.executable, "-c", OPENER, str(t.VIP4), str(flows), str(rate)],
                timeout=max(30.0, budget.left()),
            ).stdout
            time.sleep(0.5)
        finally:
            stop.set()
            poller.join()
        opened = json.loads(out)
        lags = [(seen[p] - t0) * 1000 for p, t0 in opened if p in seen]
        src = run.cluster(t.DIR1.name)["sync"]["source"]
        note = (
            f"{len(opened)} TCP flows at {rate:.0f}/s, {len(lags)} reached the backup's map; "
            f"sync source: {src}; 1 ms polling of the peer's map"
        )
    finally:
        run.stop()
        lab.down()
    arr = np.array(lags) if lags else np.array([float("nan")])
    return [
        Row(
            SECTION,
            "sync lag, SYN sent -> entry in the backup's map, p50",
            "ms",
            [float(np.percentile(arr, 50))],
            note=note,
        ),
        Row(
            SECTION,
            "sync lag, SYN sent -> entry in the backup's map, p99",
            "ms",
            [float(np.percentile(arr, 99))],
        ),
        Row(
            SECTION,
            "flows never synced (of those opened)",
            "flows",
            [float(len(json.loads(out)) - len(lags))] if lags else [],
        ),
    ]


def run(budget_s: float = 180.0) -> list[Row]:
    from benchmarks import cluster_sync_e2e

    budget = Budget(budget_s)
    rows = bulk_rows(budget)
    rows += stream_rows(budget)
    rows += lab_rows(budget)
    rows += cluster_sync_e2e.rows(budget)
    return rows


if __name__ == "__main__":
    for r in run():
        print(r.name, r.median, r.unit, r.note)
