"""Part 6, end to end: new flows through the active director's XDP program, its
conn_events ring buffer read by the sync sender of the real daemon, over UDP
to a backup daemon that writes its own conn_table, at fixed offered rates.

A dedicated three-namespace topology (run it under `flock /run/carom-tests.lock`):

    carom-s100k-g (CPU 0)                 carom-s100k-a (active)          carom-s100k-b (backup)
    flow_gen --> carom-s1g0 ==== veth ==== carom-s1d0  192.0.2.2/24
    xdp_sink <--  (drops the DSR output)   carom-s1a1 198.18.0.1/24 ==== carom-s1b1 198.18.0.2/24

Both directors are `carom run` daemons with a `cluster` section (a: priority
200, b: 100, no preemption): a becomes active, b pulls a's (empty) table and
stays backup. The generator (benchmarks/lab/flow_gen.bpf.c, live-frames
BPF_PROG_TEST_RUN like part 2's) sends every new flow's two packets (TCP SYN +
ACK, or two UDP datagrams; half and half) at a paced rate; a's XDP program
schedules each flow on its first packet and enters it into conn_table, emitting
a NEW event, on its second. a's daemon drains the ring buffer, encodes, batches,
HMACs and sends; b's daemon applies the records to its conn_table.

For each offered rate (sustained for SECONDS), with both tables emptied before:
  entered    flows in a's conn_table afterwards (and a's conn_confirmed counter)
  synced     of those, flows in b's conn_table, pointing to the same real address
  lost       entered - synced; split by stage: events the ring had no room for
             (conn_events_dropped), records the sender sent (sent_records),
             records the backup received and applied, sequence gaps
  CPU        of each daemon (all its threads, /proc/PID/task/*/schedstat) and of
             the director's NAPI thread (the XDP program and the ring-buffer
             writes), as shares of one core over the run and per flow
  lag        of every 255th flow: the generator records when its first packet
             left, a thread of this process looks it up in b's pinned
             conn_table every millisecond (LagPoller)

The daemons' logs of the last run are copied to $TMPDIR/carom-s100k-logs/.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import Budget, Row
from benchmarks.lab import (
    add_netns,
    build_bpf,
    del_netns,
    in_ns,
    ip,
    kthreads,
    schedstat_ns,
    sh,
    stop_carom,
)
from carom import abi
from carom.bpf import libbpf
from carom.bpf.loader import ensure_bpffs, object_path
from carom.cluster import codec, wire
from carom.daemon import control

SECTION = "6 connection sync"
NS_G, NS_A, NS_B = "carom-s100k-g", "carom-s100k-a", "carom-s100k-b"
IF_G, IF_A, IF_AS, IF_BS = "carom-s1g0", "carom-s1d0", "carom-s1a1", "carom-s1b1"
MAC_G, MAC_A = "02:ca:00:5e:00:01", "02:ca:00:5e:00:02"
A_ADDR, B_ADDR = "192.0.2.2", "192.0.2.3"
A_SYNC, B_SYNC = "198.18.0.1", "198.18.0.2"
VIP = "192.0.2.100"
REALS = {f"192.0.2.{10 + i}": f"02:ca:00:5e:01:{10 + i}" for i in (1, 2, 3)}
UDP_PORT, TCP_PORT = 53, 80
BPFFS = "/run/carom-s100k-bpffs"
GEN_CPU, DIR_CPU = 0, 1
GEN_NICE = int(os.environ.get("CAROM_BENCH_GEN_NICE", "0"))
# asked of the generator; on this machine it achieves 60-80% (it shares CPU 0)
RATES = (50_000, 100_000, 150_000, 200_000, 300_000, 400_000)
SECONDS = 4.0
CONN_TABLE = 1 << 21  # 2M: the largest run (400k/s x 4 s, asked) fills at most 76%
# CAROM_BENCH_DAEMON_SRC=/path/to/other/carom/src runs both daemons from another
# tree (its BPF objects built), e.g. the commit before a change, for before/after
DAEMON_SRC = os.environ.get("CAROM_BENCH_DAEMON_SRC", "")


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def templates() -> tuple[bytes, bytes]:
    """(TCP SYN, UDP) frames of 60 bytes, client address 0.0.0.0: the generator
    writes each flow's address and the IP checksum."""
    dst = ipaddress.ip_address(VIP).packed
    eth = _mac(MAC_A) + _mac(MAC_G) + b"\x08\x00"
    out = []
    for proto in ("tcp", "udp"):
        if proto == "udp":
            l4 = struct.pack("!HHHH", 40000, UDP_PORT, 26, 0) + b"A" * 18
            ip_proto, ip_len = 17, 46
        else:
            l4 = struct.pack("!HHIIBBHHH", 40000, TCP_PORT, 1, 0, 0x50, 0x02, 64240, 0, 0)
            l4 += bytes(6)
            ip_proto, ip_len = 6, 40
        iph = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, ip_proto, 0, bytes(4), dst
        )
        frame = eth + iph + l4
        assert len(frame) == 60
        out.append(frame)
    return out[0], out[1]


# --- topology -----------------------------------------------------------------------


def build_topology() -> None:
    for ns in (NS_G, NS_A, NS_B):
        add_netns(ns)
        sh(
            in_ns(
                ns,
                "sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 "
                "net.ipv6.conf.default.disable_ipv6=1",
            )
        )
    ip(NS_G, f"link add {IF_G} type veth peer name {IF_A} netns {NS_A}")
    ip(NS_A, f"link add {IF_AS} type veth peer name {IF_BS} netns {NS_B}")
    ip(NS_G, f"link set {IF_G} address {MAC_G}")
    ip(NS_A, f"link set {IF_A} address {MAC_A}")
    # GRO on keeps a NAPI (and its thread) on each end whatever XDP is attached
    sh(in_ns(NS_G, f"ethtool -K {IF_G} tso off gso off gro on"))
    sh(in_ns(NS_A, f"ethtool -K {IF_A} gro on"))
    ip(NS_A, f"addr add {A_ADDR}/24 dev {IF_A}")
    ip(NS_A, f"addr add {A_SYNC}/24 dev {IF_AS}")
    ip(NS_B, f"addr add {B_SYNC}/24 dev {IF_BS}")
    ip(NS_B, f"addr add {B_ADDR}/24 dev {IF_BS}")
    for ns, ifname in ((NS_G, IF_G), (NS_A, IF_A), (NS_A, IF_AS), (NS_B, IF_BS)):
        ip(ns, f"link set {ifname} up")
    for ns, ifname in ((NS_G, IF_G), (NS_A, IF_A)):
        sh(in_ns(ns, ["sh", "-c", f"echo 1 > /sys/class/net/{ifname}/threaded"]))
    for ns, ifname in ((NS_A, IF_A), (NS_B, IF_BS)):
        sh(in_ns(ns, f"sysctl -q -w net.ipv4.neigh.{ifname}.base_reachable_time_ms=36000000"))
        for addr, mac in REALS.items():  # the reals: MACs on the generator's segment
            ip(ns, f"neigh replace {addr} lladdr {mac} dev {ifname} nud reachable")
    ip(NS_G, f"link set dev {IF_G} xdpdrv obj {object_path('xdp_sink.bpf.o')} sec xdp")


def teardown() -> None:
    for ns in (NS_G, NS_A, NS_B):
        del_netns(ns)
    if os.path.ismount(BPFFS):  # the daemons removed their pins (stop --detach)
        subprocess.run(["umount", "-l", BPFFS], check=False, timeout=30)
    with contextlib.suppress(OSError):
        os.rmdir(BPFFS)


def pin_napi() -> int:
    """The director's NAPI thread on DIR_CPU, FIFO (the priority softirq work
    has over tasks); the sink's on GEN_CPU as an ordinary task: FIFO, it woke
    for every frame the director sent back and preempted the generator each
    time, which then fell behind its schedule. Returns the director's."""
    d, g = kthreads(f"napi/{IF_A}-"), kthreads(f"napi/{IF_G}-")
    if len(d) != 1 or len(g) != 1:
        raise RuntimeError(f"expected one NAPI thread per veth end, found {d} and {g}")
    os.sched_setaffinity(d[0], {DIR_CPU})
    os.sched_setaffinity(g[0], {GEN_CPU})
    os.sched_setscheduler(d[0], os.SCHED_FIFO, os.sched_param(50))
    os.sched_setscheduler(g[0], os.SCHED_OTHER, os.sched_param(0))
    return d[0]


# --- the two daemons ----------------------------------------------------------------


def cluster_section(node: str, key_file: Path) -> dict[str, Any]:
    return {
        "node": node,
        "key_file": str(key_file),
        "heartbeat_ms": 100,
        "dead_after": 3,
        "preempt": False,
        "members": [
            {"name": "a", "id": 1, "priority": 200, "addresses": [A_SYNC]},
            {"name": "b", "id": 2, "priority": 100, "addresses": [B_SYNC]},
        ],
    }


class Daemon:
    """`carom run` in a namespace, stopped by its PID (`ip netns exec` execs in
    place, so the Popen PID is the daemon's)."""

    def __init__(self, tmp: Path, node: str, ns: str, ifname: str, key_file: Path) -> None:
        self.node, self.ns = node, ns
        self.instance = f"s100k{node}"
        self.cfg_path = tmp / f"{node}.yaml"
        self.socket = str(tmp / f"{node}.sock")
        self.log_path = tmp / f"{node}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        reals = [{"address": a} for a in REALS]
        cfg = {
            "instance": self.instance,
            "interfaces": [ifname],
            "bpffs": BPFFS,
            "control_socket": self.socket,
            "limits": {"conn_table_size": CONN_TABLE, "persist_table_size": 1024},
            "services": [
                {"name": "udp", "vip": VIP, "protocol": "udp", "port": UDP_PORT, "reals": reals},
                {"name": "tcp", "vip": VIP, "protocol": "tcp", "port": TCP_PORT, "reals": reals},
            ],
            "cluster": cluster_section(node, key_file),
        }
        self.cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def pin(self, name: str) -> str:
        return os.path.join(BPFFS, "carom", self.instance, name)

    def start(self) -> None:
        env = dict(os.environ)
        if DAEMON_SRC:  # another carom tree's daemon (a before/after comparison)
            env["PYTHONPATH"] = DAEMON_SRC
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                in_ns(self.ns, [sys.executable, "-m", "carom", "run", "-c", str(self.cfg_path)]),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def role_changes(self) -> int:
        """Role transitions logged so far."""
        return self.log_path.read_text(errors="replace").count("cluster role ")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def status(self) -> dict[str, Any]:
        reply = control.request(self.socket, "status", timeout=5)
        if not reply.get("ok"):
            raise ValueError(str(reply))
        st: dict[str, Any] = reply["status"]
        return st

    def wait_role(self, role: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        c: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"carom run ({self.node}) exited:\n{self.log()}")
            with contextlib.suppress(OSError, ConnectionError, ValueError, KeyError):
                c = self.status()["cluster"]
                if c["role"] == role and (role != "backup" or c["bulk"]["done"]):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.node} not {role} in {timeout}s: {c}\n{self.log()}")

    def real_addresses(self) -> dict[int, str]:
        """This daemon's real ids -> addresses (ids are local to each director)."""
        out = {}
        for s in self.status()["services"]:
            for r in s["reals"]:
                out[int(r["real_id"])] = str(r["address"])
        return out

    def cpu_ns(self) -> int:
        """CPU time of all the daemon's threads so far."""
        assert self.proc is not None
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
        return total

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_carom(proc, self.socket, str(self.cfg_path), self.ns)


# --- reading the maps ---------------------------------------------------------------


def counters(path: str) -> dict[str, int]:
    fd = libbpf.obj_get(path)
    try:
        ncpus = libbpf.num_possible_cpus()
        out = {}
        for c in abi.Counter:
            raw = libbpf.map_lookup(fd, int(c).to_bytes(4, "little"), 8 * ncpus)
            if raw is not None:
                out[c.name.lower()] = sum(
                    int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(ncpus)
                )
        return out
    finally:
        os.close(fd)


def dump_flows(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Every entry of a pinned conn_table as (client address << 8 | proto, real id),
    sorted by the first (each generated flow has its own client address)."""
    fd = libbpf.obj_get(path)
    try:
        ks, vs = codec.KEY_DT.itemsize, codec.VAL_DT.itemsize
        keys, reals = [], []
        for kb, vb, n in libbpf.map_lookup_batch_raw(fd, ks, vs, CONN_TABLE, chunk=65536):
            k = np.frombuffer(kb, dtype=codec.KEY_DT, count=n)
            v = np.frombuffer(vb, dtype=codec.VAL_DT, count=n)
            src = k["src"][:, :4].copy().view(">u4").ravel().astype(np.int64)
            keys.append(src << 8 | k["proto"].astype(np.int64))
            reals.append(v["real_id"].astype(np.int64))
    finally:
        os.close(fd)
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    key, real = np.concatenate(keys), np.concatenate(reals)
    order = np.argsort(key)
    return key[order], real[order]


def clear(path: str) -> None:
    fd = libbpf.obj_get(path)
    try:
        ks, vs = codec.KEY_DT.itemsize, codec.VAL_DT.itemsize
        for kb, _, n in list(libbpf.map_lookup_batch_raw(fd, ks, vs, CONN_TABLE, chunk=65536)):
            libbpf.map_delete_batch(fd, kb, n)
    finally:
        os.close(fd)


STAMP_EVERY = 255  # as in flow_gen.bpf.c: every 255th flow's first packet is timed
POLL_S = 0.001
POLL_MAX = 64  # lookups per poll: the oldest sampled flows not yet seen
GEN_STATE_PIN = os.path.join(BPFFS, "s100k_gen_state")  # the generator's progress


def flow_key(base: int, flow: int) -> bytes:
    """The conn_table key of the generator's flow number `flow`."""
    key = np.zeros(1, dtype=codec.KEY_DT)
    key["src"][0, :4] = np.frombuffer((base + flow).to_bytes(4, "big"), np.uint8)
    key["dst"][0, :4] = np.frombuffer(ipaddress.ip_address(VIP).packed, np.uint8)
    key["sport"] = np.frombuffer((40000).to_bytes(2, "big"), np.uint8)
    udp = flow & 1
    key["dport"] = np.frombuffer((UDP_PORT if udp else TCP_PORT).to_bytes(2, "big"), np.uint8)
    key["proto"] = 17 if udp else 6
    key["family"] = int(abi.Family.IPV4)
    return key.tobytes()


class LagPoller:
    """Sync lag of sampled flows: a thread looks the sampled flows up in the
    backup's pinned conn_table every POLL_S and keeps the time each first
    appears; the generator reports when each one's first packet left.

    Only flows whose first packet has left are looked up (the generator's
    progress, read from its pinned gen_state), the oldest first, at most
    POLL_MAX a poll; a flow still missing STALE_S after it left is looked up
    every STALE_POLL_S only (flows whose frames were lost before the director
    never arrive, and must not crowd out the others)."""

    STALE_S, STALE_POLL_S = 0.2, 0.05

    def __init__(self, path: str, gen_state: str, base: int, flows: int) -> None:
        self.fd = libbpf.obj_get(path)
        self.gen_state = gen_state
        self.state_fd: int | None = None
        self.base = base
        self.samples = list(range(0, flows, STAMP_EVERY))
        self.keys = {f: flow_key(base, f) for f in self.samples}
        self.seen: dict[int, int] = {}  # flow -> the poll that found it in b's map
        self.before: dict[int, int] = {}  # flow -> the poll before that one (it was not there)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sent_flows(self) -> int:
        """Flows whose first packet the generator has sent (0 before it pinned)."""
        if self.state_fd is None:
            if not os.path.exists(self.gen_state):
                return 0
            self.state_fd = libbpf.obj_get(self.gen_state)
        raw = libbpf.map_lookup(self.state_fd, bytes(4), 48) or bytes(48)
        return (int.from_bytes(raw[8:16], "little") + 1) // 2  # gen_state.sent: frames

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        vs = codec.VAL_DT.itemsize
        fresh: list[tuple[int, int]] = []  # (flow, when it became due)
        stale: list[int] = []
        nxt, stale_at, prev = 0, 0, time.monotonic_ns()
        while not self.stop.is_set():
            now = time.monotonic_ns()
            due = self._sent_flows() - 1
            while nxt < len(self.samples) and self.samples[nxt] <= due:
                fresh.append((self.samples[nxt], now))
                nxt += 1
            check = [f for f, _ in fresh[:POLL_MAX]]
            fresh_flows = set(check)
            if now >= stale_at:
                check += stale
                stale_at = now + int(self.STALE_POLL_S * 1e9)
            for f in check:
                if libbpf.map_lookup(self.fd, self.keys[f], vs) is not None:
                    self.seen[f] = now
                    self.before[f] = (
                        prev if f in fresh_flows else now - int(self.STALE_POLL_S * 1e9)
                    )
            old = now - int(self.STALE_S * 1e9)
            stale = [f for f in stale if f not in self.seen]
            stale += [f for f, t in fresh if t < old and f not in self.seen]
            fresh = [(f, t) for f, t in fresh if t >= old and f not in self.seen]
            prev = now
            time.sleep(POLL_S)

    def finish(
        self, stamps: list[list[int]], entered: np.ndarray
    ) -> tuple[list[float], list[float], int]:
        """Lags in ms of the sampled flows seen (when the poll found them, and
        when the poll before did not: the entry arrived in between; a late
        poll, this process waiting for a CPU, widens the interval), and how
        many flows the active entered were never seen (`entered`: its table's
        keys, sorted, as dump_flows returns them)."""
        self.stop.set()
        self.thread.join()
        os.close(self.fd)
        if self.state_fd is not None:
            os.close(self.state_fd)
        lags, lows, unseen = [], [], 0
        for f, sent_ns in stamps:
            if f in self.seen:
                lags.append((self.seen[f] - sent_ns) / 1e6)
                lows.append(max(0, self.before[f] - sent_ns) / 1e6)
            else:
                key = (self.base + f) << 8 | (17 if f & 1 else 6)
                i = int(np.searchsorted(entered, key))  # entered is sorted
                unseen += int(i < len(entered) and entered[i] == key)
        return lags, lows, unseen


def link_stats(ns: str, ifname: str) -> dict[str, int]:
    s = json.loads(ip(ns, f"-j -s link show dev {ifname}").stdout)[0]["stats64"]
    return {f"{d}_{k}": int(s[d][k]) for d in ("rx", "tx") for k in ("bytes", "dropped")}


def links() -> dict[str, int]:
    """What the window needs of the veths: bytes on the sync link, frames the
    director's veth end had no room for."""
    sync, gen, dr = link_stats(NS_A, IF_AS), link_stats(NS_G, IF_G), link_stats(NS_A, IF_A)
    return {
        "sync_tx_bytes": sync["tx_bytes"],
        "to_director_dropped": gen["tx_dropped"] + dr["rx_dropped"],
    }


# --- one rate -----------------------------------------------------------------------


@dataclass
class Result:
    rate: int
    offered: float  # flows/s the generator achieved
    span: float  # seconds from the first frame to the last
    entered: int  # flows in the active's conn_table
    synced: int  # of those, in the backup's, to the same real
    wrong_real: int  # in both, to different reals
    confirmed: int  # the active's conn_confirmed counter
    scheduled: int  # the active's new_flow counter (first packets)
    ring_dropped: int  # conn_events_dropped
    sent: int  # records the active's sender sent
    received: int  # records the backup received
    applied: int
    gaps: int
    rejected: int
    datagrams: int
    link_bytes: int  # sent on the sync link (frames: Ethernet + IP + UDP + sync; heartbeats too)
    veth_dropped: int  # generator frames the director's veth ring had no room for
    gen_late: int  # times the generator fell behind its schedule by > 100 us
    role_changes: int  # cluster role transitions of either daemon during the run
    role_a: str  # the active's role at the end
    cpu_a: float  # CPU seconds over the window (generation and drain)
    cpu_b: float
    cpu_napi: float
    window: float  # seconds
    load: str
    lag_ms: list[float] = field(default_factory=list)  # sampled flows: first packet -> b's map
    lag_low_ms: list[float] = field(default_factory=list)  # the same, from the poll before
    lag_unseen: int = 0  # sampled flows never seen in b's map
    retried: bool = False  # the first attempt found the director's NAPI thread idle

    @property
    def rate_in(self) -> float:
        """New flows per second the director entered (and emitted events for)."""
        return self.entered / self.span if self.span > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.entered - self.synced

    @property
    def payload_bytes(self) -> int:
        """Sync messages only: IPv4 records plus each datagram's header and MAC."""
        return self.sent * codec.REC4_DT.itemsize + self.datagrams * (
            wire.HEADER.size + wire.MAC_LEN
        )


class EndToEnd:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.gen_obj = build_bpf("flow_gen", tmp)
        ensure_bpffs(BPFFS)
        build_topology()
        key = tmp / "cluster.key"
        key.write_bytes(os.urandom(32).hex().encode())
        key.chmod(0o600)
        self.a = Daemon(tmp, "a", NS_A, IF_A, key)
        self.b = Daemon(tmp, "b", NS_B, IF_BS, key)
        self.a.start()
        self.a.wait_role("active")
        self.b.start()
        self.b.wait_role("backup")
        self.napi = pin_napi()
        self.next_base = int(ipaddress.ip_address("10.0.0.0"))
        self.tcp, self.udp = templates()

    def close(self) -> None:
        self.b.stop()
        self.a.stop()

    def restart_napi(self) -> None:
        path = f"/sys/class/net/{IF_A}/threaded"
        for v in ("0", "1"):
            sh(in_ns(NS_A, ["sh", "-c", f"echo {v} > {path}"]))
        self.napi = pin_napi()

    def sync_stats(self, d: Daemon) -> dict[str, int]:
        s: dict[str, int] = d.status()["cluster"]["sync"]
        return s

    def run_generator(self, rate: int, flows: int, base: int) -> dict[str, Any]:
        argv = [sys.executable, "-m", "benchmarks.lab.flowgen", str(self.gen_obj), IF_G]
        argv += [self.tcp.hex(), self.udp.hex(), str(rate), str(flows), str(base)]
        argv += ["--pin", GEN_STATE_PIN]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(GEN_STATE_PIN)  # left by a run that was killed
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        out = subprocess.run(
            # nice: a generator that spins between frames yields to the daemons
            in_ns(NS_G, ["nice", "-n", str(GEN_NICE), "taskset", "-c", str(GEN_CPU), *argv]),
            capture_output=True,
            text=True,
            env=env,
            timeout=3 * flows / rate + 30,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"generator failed: {out.stderr[-2000:]}")
        res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return res

    def settle(self, want: int, since: int, timeout: float = 5.0) -> None:
        """Until the backup has received `want` records more than `since`, or its
        count stood still for a second (the stream drained)."""
        last, still, deadline = -1, time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.sync_stats(self.b)["received_records"] - since
            if now >= want:
                return
            if now != last:
                last, still = now, time.monotonic()
            elif time.monotonic() - still >= 1.0:
                return
            time.sleep(0.1)

    def once(self, rate: int, seconds: float = SECONDS) -> Result:
        conn_a, conn_b = self.a.pin("conn_table"), self.b.pin("conn_table")
        clear(conn_a)
        clear(conn_b)
        flows = int(rate * seconds)
        base, self.next_base = self.next_base, self.next_base + flows + 1
        c0 = counters(self.a.pin("stats"))
        sa0, sb0 = self.sync_stats(self.a), self.sync_stats(self.b)
        t0 = time.monotonic()
        cpu0 = (self.a.cpu_ns(), self.b.cpu_ns(), schedstat_ns(self.napi))
        link0, roles0 = links(), self.a.role_changes() + self.b.role_changes()
        poller = LagPoller(conn_b, GEN_STATE_PIN, base, flows)
        poller.start()
        stamps: list[list[int]] = []
        try:
            gen = self.run_generator(rate, flows, base)
            stamps = gen["stamps"]
            confirmed = counters(self.a.pin("stats")).get("conn_confirmed", 0) - c0.get(
                "conn_confirmed", 0
            )
            self.settle(confirmed, sb0["received_records"])
        finally:
            poller.stop.set()
        t1 = time.monotonic()
        cpu1 = (self.a.cpu_ns(), self.b.cpu_ns(), schedstat_ns(self.napi))
        link1, roles1 = links(), self.a.role_changes() + self.b.role_changes()
        role_a = self.a.status()["cluster"]["role"]
        c1 = counters(self.a.pin("stats"))
        sa1, sb1 = self.sync_stats(self.a), self.sync_stats(self.b)
        load = Path("/proc/loadavg").read_text().split()[0]
        ka, ra = dump_flows(conn_a)
        lags, lows, unseen = poller.finish(stamps, ka)
        kb, rb = dump_flows(conn_b)
        ids_a, ids_b = self.a.real_addresses(), self.b.real_addresses()
        both, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
        addr_a = [ids_a.get(int(r)) for r in ra[ia]]
        addr_b = [ids_b.get(int(r)) for r in rb[ib]]
        same = sum(1 for x, y in zip(addr_a, addr_b, strict=True) if x is not None and x == y)
        dc = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}
        # the generator moves t0 forward by the time it fell behind: add it back
        span = (gen["last_ns"] - gen["t0_ns"] + gen["late_ns"]) / 1e9
        window = t1 - t0
        return Result(
            rate=rate,
            offered=(gen["frames"] / 2) / span if span > 0 else 0.0,
            span=span,
            entered=len(ka),
            synced=same,
            wrong_real=len(both) - same,
            confirmed=dc.get("conn_confirmed", 0),
            scheduled=dc.get("new_flow", 0),
            ring_dropped=dc.get("conn_events_dropped", 0),
            sent=sa1["sent_records"] - sa0["sent_records"],
            received=sb1["received_records"] - sb0["received_records"],
            applied=sb1["applied"] - sb0["applied"],
            gaps=sb1["gaps"] - sb0["gaps"],
            rejected=sb1["rejected"] - sb0["rejected"],
            datagrams=sa1["sent_datagrams"] - sa0["sent_datagrams"],
            link_bytes=link1["sync_tx_bytes"] - link0["sync_tx_bytes"],
            veth_dropped=link1["to_director_dropped"] - link0["to_director_dropped"],
            gen_late=int(gen["late"]),
            role_changes=roles1 - roles0,
            role_a=role_a,
            lag_ms=lags,
            lag_low_ms=lows,
            lag_unseen=unseen,
            cpu_a=(cpu1[0] - cpu0[0]) / 1e9,
            cpu_b=(cpu1[1] - cpu0[1]) / 1e9,
            cpu_napi=(cpu1[2] - cpu0[2]) / 1e9,
            window=window,
            load=load,
        )


def describe(r: Result) -> str:
    return (
        f"sync end-to-end at {r.rate_in / 1000:.0f}k new flows/s ({r.rate // 1000}k asked): "
        f"synced {r.synced} of {r.entered}, lost {r.lost}"
    )


def lag_text(r: Result) -> str:
    if not r.lag_ms:
        return "lag: no sample"
    p50, p99 = np.percentile(r.lag_ms, [50, 99])
    lo50, lo99 = np.percentile(r.lag_low_ms, [50, 99])
    fifths = [float(np.median(q)) for q in np.array_split(np.array(r.lag_ms), 5) if len(q)]
    return (
        f"lag, first packet -> backup's map: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max "
        f"{max(r.lag_ms):.1f} ms ({len(r.lag_ms)} sampled flows, {r.lag_unseen} not seen; "
        f"{POLL_S * 1000:.0f} ms polling; the previous poll's time gives p50 {lo50:.1f} ms, "
        f"p99 {lo99:.1f} ms; medians of each fifth of the run: "
        + " ".join(f"{m:.1f}" for m in fifths)
        + ")"
    )


def details(r: Result) -> str:
    def cpu(seconds: float) -> str:
        return f"{seconds / r.window:.0%} ({seconds / max(1, r.entered) * 1e6:.2f} us)"

    return (
        f"offered {r.offered / 1000:.1f}k flows/s (generator late {r.gen_late}x, frames lost "
        f"before the director {r.veth_dropped}); director: {r.scheduled} scheduled, "
        f"{r.confirmed} confirmed, ring drops {r.ring_dropped}; sender {r.sent} records in "
        f"{r.datagrams} datagrams; backup received {r.received}, applied {r.applied}, "
        f"gaps {r.gaps}, rejected {r.rejected}, wrong real {r.wrong_real}; CPU over the "
        f"{r.window:.1f} s window, share of one core and per flow entered: active daemon "
        f"{cpu(r.cpu_a)}, backup daemon {cpu(r.cpu_b)}, director NAPI {cpu(r.cpu_napi)}; "
        f"role changes {r.role_changes} (a ends {r.role_a}); {lag_text(r)}; "
        f"load average {r.load}"
        + ("; second attempt (the first found the NAPI thread idle)" if r.retried else "")
    )


def rows(budget: Budget, rates: tuple[int, ...] = RATES) -> list[Row]:
    out: list[Row] = []
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="carom-s100k-") as tmp:
        e2e = None
        try:
            e2e = EndToEnd(Path(tmp))
            for rate in rates:
                if budget.left() < 3 * SECONDS + 10:
                    break
                r = e2e.once(rate)
                if r.scheduled < 0.5 * r.rate * SECONDS:
                    # Seen a few times: the director's NAPI thread did not run for
                    # a whole run (CPU ~0%, every frame dropped at its veth ring).
                    # Restart it and measure again; the note says so.
                    print(f"{describe(r)}: {details(r)}; retried", flush=True)
                    e2e.restart_napi()
                    r = e2e.once(rate)
                    r.retried = True
                results.append(r)
                print(describe(r), f"({details(r)})", flush=True)
        finally:
            if e2e is not None:
                e2e.close()
            teardown()
            keep = Path(tempfile.gettempdir()) / "carom-s100k-logs"
            keep.mkdir(exist_ok=True)
            for log in Path(tmp).glob("*.log"):
                (keep / log.name).write_bytes(log.read_bytes())
    best, clean_so_far = 0.0, True
    best_r: Result | None = None
    for r in results:
        out.append(
            Row(
                SECTION,
                f"sync end-to-end, {r.rate // 1000}k new flows/s asked: flows lost",
                "flows",
                [float(r.lost)],
                note=f"{describe(r)}; {details(r)}",
            )
        )
        clean = r.lost == 0 and r.gaps == 0 and r.ring_dropped == 0 and r.role_changes == 0
        # the highest rate such that it and every lower one lost nothing
        clean_so_far = clean_so_far and clean and r.entered > 0
        if clean_so_far and r.rate_in > best:
            best, best_r = r.rate_in, r
    if results:
        r = max(results, key=lambda x: x.synced)
        out.append(
            Row(
                SECTION,
                "sync end-to-end: bytes per synced flow, sync messages",
                "B",
                [r.payload_bytes / max(1, r.synced)],
                note=f"records, headers and MACs; at {r.rate // 1000}k/s: "
                f"{r.sent / max(1, r.datagrams):.1f} records per datagram",
            )
        )
        out.append(
            Row(
                SECTION,
                "sync end-to-end: bytes per synced flow on the link",
                "B",
                [r.link_bytes / max(1, r.synced)],
                note="Ethernet, IP and UDP headers and the heartbeats included",
            )
        )
    out.append(
        Row(
            SECTION,
            "sync end-to-end: highest rate entered with no flow lost (nor below)",
            "flows/s",
            [best] if results else [],
            higher_is_better=True,
        )
    )
    if best_r is not None and best_r.lag_ms:
        for q in (50, 99):
            out.append(
                Row(
                    SECTION,
                    f"sync end-to-end: lag p{q} at that rate, first packet -> backup's map",
                    "ms",
                    [float(np.percentile(best_r.lag_ms, q))],
                    note=lag_text(best_r) if q == 99 else "",
                )
            )
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("rates", nargs="*", type=int, default=list(RATES))
    args = ap.parse_args()
    for row in rows(Budget(600), tuple(args.rates)):
        print(row.name, row.median, row.unit, row.note)
