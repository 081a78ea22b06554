"""Part 2: forwarding rate of a director, carom against nftables and Linux routing.

A dedicated two-namespace topology, with nothing else on the path (no bridge,
no receiving stack: measuring.md):

    carom-bgen (CPU 0)                             carom-bdir (the director)
    generator  --> carom-g0 ======= veth ======= carom-d0  192.0.2.2/24
    mac_sink XDP <--  (counts by MAC pair)         reals .11 .12 .13: neighbour
                                                   entries, MACs 02:ca:00:0e:01:1x

DSR sends a frame back out the interface it came in on, so the "real servers"
are MACs on the generator's own segment: every forwarded frame comes back to
carom-g0, whose XDP program (benchmarks/lab/mac_sink.bpf.c) counts it by
(destination MAC, source MAC) and drops it. Only frames to a real's MAC from
the director's MAC count as delivered; every sample checks that they are all of
the sink's frames, spread over the three reals (and, for carom, that its own
counters show the path: conn_hit / syn_reschedule, tx_dsr).

Generators (frames: 60 bytes + FCS, one client address, 65536 source ports):
  xdp      (main) benchmarks/lab/xdp_gen.bpf.c run by BPF_PROG_TEST_RUN in
           live-frames mode (benchmarks/lab/xdpgen.py): frames reach the director
           as XDP frames, the way a NIC driver hands them over (no socket buffer,
           no copy), at several Mpps: more than any contender forwards, so every
           contender is measured saturated;
  trafgen  (second table, UDP) packet sockets: frames reach the director as
           socket buffers, and veth must copy each one into a page before an XDP
           program sees it; with an LD_PRELOAD shim (benchmarks/lab/sndbuf_shim.c)
           because trafgen cannot raise its send buffer in a namespace.

CPUs: both veth ends run NAPI in kernel threads (`threaded`): the director's
(napi/carom-d0-*) on CPU 1, the sink's (napi/carom-g0-*) on CPU 0 next to the
generator, both SCHED_FIFO (the priority softirq work has over tasks; RT
throttling caps them at 95%). Without threads all of it would run on CPU 0:
veth delivers in the sender's context (it raises the softirq on the sending
CPU). The director's CPU time per packet is that thread's run time
(/proc/PID/schedstat: ns; paravirt steal accounting takes stolen time out)
over the delivered frames: taking frames off the veth ring, building socket
buffers (peers), the XDP program or the stack (nft ingress, IP forwarding), the
transmit into the sink's ring, waking the sink's thread, and freeing what the
generator sent. The note beside it gives all of CPU 1's busy time per frame
(/proc/stat, tick-sampled) as a cross-check. The benchmark's own thread runs
SCHED_FIFO above the NAPI threads while it takes the two snapshots of a window,
so that they are prompt.

Contenders, all on the same path (the director's interface keeps GRO on, so its
NAPI thread exists whatever XDP program is attached):
  carom        the real daemon (`carom run`), one UDP and one TCP service;
  nftables     netdev ingress: jhash(saddr . sport) mod 3 -> real's MAC, own MAC
               as source, `fwd to` the same device;
  routing      ip_forward, VIP/32 multipath via the three reals, L4 hash policy;
               out of the same interface it came in on (redirects off).
With trafgen the peers also run with xdp_pass on the director's interface, so
that they pay veth's copy too."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Budget, Row
from benchmarks.lab import (
    add_netns,
    build_bpf,
    build_shim,
    cpu_ticks,
    del_netns,
    in_ns,
    ip,
    kthreads,
    schedstat_ns,
    sh,
    stop_carom,
    stop_group,
    wait_until,
)
from carom import abi
from carom.bpf import libbpf
from carom.bpf.loader import ensure_bpffs, object_path
from carom.daemon import control

SECTION = "2 forwarding rate (veth, 64-byte frames, 64k flows)"
GENERATORS = ("xdp", "trafgen")
NS_GEN, NS_DIR = "carom-bgen", "carom-bdir"
IF_GEN, IF_DIR = "carom-g0", "carom-d0"
MAC_GEN, MAC_DIR = "02:ca:00:0e:00:01", "02:ca:00:0e:00:02"
DIR_ADDR, VIP, CLIENT = "192.0.2.2", "192.0.2.100", "198.51.100.10"
REALS = {f"192.0.2.{10 + i}": f"02:ca:00:0e:01:{10 + i}" for i in (1, 2, 3)}
UDP_PORT, TCP_PORT = 53, 80
BPFFS = "/run/carom-bfwd-bpffs"
GEN_CPU, DIR_CPU = 0, 1
USER_HZ = os.sysconf("SC_CLK_TCK")

PROTOS = ("UDP", "TCP SYN")
CAROM = "carom XDP DSR"
NFT_X, NFT = "nftables netdev DSR (+xdp_pass)", "nftables netdev DSR (no XDP)"
ROUTE_X, ROUTE = "Linux routing ECMP (+xdp_pass)", "Linux routing ECMP (no XDP)"
CONTENDERS = {"xdp": (CAROM, NFT, ROUTE), "trafgen": (CAROM, NFT_X, ROUTE_X, NFT, ROUTE)}
GEN_PROTOS = {"xdp": PROTOS, "trafgen": ("UDP",)}


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _hexbytes(b: bytes) -> str:
    return ", ".join(f"0x{x:02x}" for x in b)


def trafgen_config(proto: str) -> str:
    """One 60-byte frame (64 on the wire), random source port per packet.
    L4 checksums are left 0: nothing on the path verifies them."""
    eth = f"{_hexbytes(_mac_bytes(MAC_DIR))}, {_hexbytes(_mac_bytes(MAC_GEN))}, c16(0x0800)"
    src = ", ".join(CLIENT.split("."))
    dst = ", ".join(VIP.split("."))
    if proto == "UDP":
        l34 = (
            f"0x45, 0, c16(46), c16(0), 0x40, 0, 64, 17, csumip(14, 33), {src}, {dst},\n"
            f"  drnd(2), c16({UDP_PORT}), c16(26), c16(0),\n  fill(0x41, 18)"
        )
    else:  # a SYN: data offset 5, flags 0x02; 6 bytes of Ethernet padding
        l34 = (
            f"0x45, 0, c16(40), c16(0), 0x40, 0, 64, 6, csumip(14, 33), {src}, {dst},\n"
            f"  drnd(2), c16({TCP_PORT}), c32(1), c32(0), 0x50, 0x02, c16(64240), c16(0),"
            " c16(0),\n  fill(0, 6)"
        )
    return f"{{\n  {eth},\n  {l34}\n}}\n"


def frame_template(proto: str) -> bytes:
    """The same frame as trafgen_config, for the XDP generator (source port 0:
    the program writes it)."""
    src, dst = bytes(map(int, CLIENT.split("."))), bytes(map(int, VIP.split(".")))
    if proto == "UDP":
        l4 = struct.pack("!HHHH", 0, UDP_PORT, 26, 0) + b"A" * 18
        ip_proto, ip_len = 17, 46
    else:
        l4 = struct.pack("!HHIIBBHHH", 0, TCP_PORT, 1, 0, 0x50, 0x02, 64240, 0, 0) + bytes(6)
        ip_proto, ip_len = 6, 40
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, ip_proto, 0, src, dst)
    csum = sum(struct.unpack("!10H", iph))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = (csum & 0xFFFF) + (csum >> 16)
    iph = iph[:10] + struct.pack("!H", ~csum & 0xFFFF) + iph[12:]
    frame = _mac_bytes(MAC_DIR) + _mac_bytes(MAC_GEN) + b"\x08\x00" + iph + l4
    assert len(frame) == 60
    return frame


def nft_ruleset() -> str:
    elems = ", ".join(f"{i} : {mac}" for i, mac in enumerate(REALS.values()))
    head = f"ether saddr set {MAC_DIR} ether daddr set jhash ip saddr"
    return f"""table netdev carom_bfwd {{
\tmap reals {{
\t\ttypeof numgen inc mod {len(REALS)} : ether daddr
\t\telements = {{ {elems} }}
\t}}
\tchain ingress {{
\t\ttype filter hook ingress device "{IF_DIR}" priority 0; policy accept;
\t\tip daddr {VIP} udp dport {UDP_PORT} {head} . udp sport mod {len(REALS)} map @reals \
fwd to "{IF_DIR}"
\t\tip daddr {VIP} tcp dport {TCP_PORT} {head} . tcp sport mod {len(REALS)} map @reals \
fwd to "{IF_DIR}"
\t}}
}}
"""


# --- the sink -------------------------------------------------------------------


class Sink:
    """mac_sink loaded here, pinned in our bpffs, attached to carom-g0 by `ip`."""

    def __init__(self, obj_path: Path) -> None:
        self.obj = libbpf.BpfObject(str(obj_path))
        self.obj.load()
        self.pin = os.path.join(BPFFS, "mac_sink")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pin)
        libbpf.obj_pin(self.obj.program_fd("carom_mac_sink"), self.pin)
        self.pairs_fd = self.obj.map("sink_pairs").fd
        self.total_fd = self.obj.map("sink_total").fd
        self.ncpus = libbpf.num_possible_cpus()

    def attach(self) -> None:
        ip(NS_GEN, f"link set dev {IF_GEN} xdpdrv pinned {self.pin}")

    def _sum(self, fd: int, key: bytes) -> int:
        raw = libbpf.map_lookup(fd, key, 8 * self.ncpus)
        if raw is None:
            return 0
        return sum(int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(self.ncpus))

    def pairs(self) -> dict[tuple[str, str], int]:
        out = {}
        for key in list(libbpf.map_keys(self.pairs_fd, 12)):
            out[(key[:6].hex(":"), key[6:].hex(":"))] = self._sum(self.pairs_fd, key)
        return out

    def overflow(self) -> int:
        return self._sum(self.total_fd, (2).to_bytes(4, "little"))

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pin)
        self.obj.close()


# --- the topology ---------------------------------------------------------------


def build_topology() -> None:
    add_netns(NS_GEN)
    add_netns(NS_DIR)
    for ns in (NS_GEN, NS_DIR):
        # no IPv6: no router solicitations or MLD reports reach the sink
        sh(
            in_ns(
                ns,
                "sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 "
                "net.ipv6.conf.default.disable_ipv6=1",
            )
        )
    ip(NS_GEN, f"link add {IF_GEN} type veth peer name {IF_DIR} netns {NS_DIR}")
    ip(NS_GEN, f"link set {IF_GEN} address {MAC_GEN}")
    ip(NS_DIR, f"link set {IF_DIR} address {MAC_DIR}")
    # GRO on keeps each end's NAPI (and its thread) alive whatever XDP program is
    # attached; without TSO on the sender veth hands frames to that NAPI too.
    sh(in_ns(NS_GEN, f"ethtool -K {IF_GEN} tso off gso off gro on"))
    sh(in_ns(NS_DIR, f"ethtool -K {IF_DIR} gro on"))
    ip(NS_DIR, f"addr add {DIR_ADDR}/24 dev {IF_DIR}")
    ip(NS_GEN, f"link set {IF_GEN} up")
    ip(NS_DIR, f"link set {IF_DIR} up")
    for ns, ifname in ((NS_GEN, IF_GEN), (NS_DIR, IF_DIR)):
        sh(in_ns(ns, ["sh", "-c", f"echo 1 > /sys/class/net/{ifname}/threaded"]))
    # forwarding for the routing contender, without redirects back to the sender;
    # "reachable" neighbours that stay so for the whole run (see set_neighbours)
    settings = (
        "net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 "
        f"net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.{IF_DIR}.send_redirects=0 "
        f"net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{IF_DIR}.rp_filter=0 "
        f"net.ipv4.neigh.{IF_DIR}.base_reachable_time_ms=36000000"
    )
    sh(in_ns(NS_DIR, f"sysctl -q -w {settings}"))
    set_neighbours()
    hops: list[str] = []
    for real in REALS:
        hops += ["nexthop", "via", real]
    ip(NS_DIR, f"route add {VIP}/32", *hops)


def set_neighbours() -> None:
    """The reals' MACs as neighbour entries on the director. Not `permanent`:
    carom's resolution request (NTF_USE) turns a permanent entry into an
    incomplete one on this kernel; `reachable` with a 10-hour reachable time
    is never re-resolved during the run (no ARP reaches the sink)."""
    for addr, mac in REALS.items():
        ip(NS_DIR, f"neigh replace {addr} lladdr {mac} dev {IF_DIR} nud reachable")


def check_neighbours() -> None:
    out = json.loads(ip(NS_DIR, f"-j neigh show dev {IF_DIR}").stdout)
    got = {n["dst"]: (n.get("lladdr"), n.get("state", [])) for n in out}
    for addr, mac in REALS.items():
        lladdr, state = got.get(addr, (None, []))
        if lladdr != mac or "REACHABLE" not in state:
            raise RuntimeError(f"neighbour {addr} on the director is {lladdr} {state}")


def pin_napi_threads() -> tuple[int, int]:
    """Pin the director's NAPI thread to DIR_CPU, the sink's to GEN_CPU (FIFO)."""
    d = kthreads(f"napi/{IF_DIR}-")
    g = kthreads(f"napi/{IF_GEN}-")
    if len(d) != 1 or len(g) != 1:
        raise RuntimeError(f"expected one NAPI thread per veth end, found {d} and {g}")
    os.sched_setaffinity(d[0], {DIR_CPU})
    os.sched_setaffinity(g[0], {GEN_CPU})
    for pid in (d[0], g[0]):
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(50))
    return d[0], g[0]


def link_stats(ns: str, ifname: str) -> dict[str, int]:
    out = json.loads(ip(ns, f"-j -s link show dev {ifname}").stdout)
    s = out[0]["stats64"]
    return {
        "rx": s["rx"]["packets"],
        "tx": s["tx"]["packets"],
        "tx_dropped": s["tx"]["dropped"],
        "rx_dropped": s["rx"]["dropped"],
    }


# --- the contenders -------------------------------------------------------------


def xdp_off() -> None:
    ip(NS_DIR, f"link set dev {IF_DIR} xdp off", check=False)


def xdp_pass() -> None:
    ip(NS_DIR, f"link set dev {IF_DIR} xdpdrv obj {object_path('xdp_pass.bpf.o')} sec xdp")


def nft_off() -> None:
    sh(in_ns(NS_DIR, "nft delete table netdev carom_bfwd"), check=False)


class CaromDaemon:
    """`carom run` in the director's namespace, started and stopped by its PID
    (`ip netns exec` execs in place, so the Popen PID is the daemon's)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cfg_path = tmp / "carom.yaml"
        self.socket = str(tmp / "carom.sock")
        self.log_path = tmp / "carom.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats_fd: int | None = None
        reals = [{"address": a} for a in REALS]
        cfg: dict[str, Any] = {
            "instance": "bfwd",
            "interfaces": [IF_DIR],
            "bpffs": BPFFS,
            "control_socket": self.socket,
            "services": [
                {"name": "udp", "vip": VIP, "protocol": "udp", "port": UDP_PORT, "reals": reals},
                {"name": "tcp", "vip": VIP, "protocol": "tcp", "port": TCP_PORT, "reals": reals},
            ],
        }
        self.cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                in_ns(NS_DIR, [sys.executable, "-m", "carom", "run", "-c", str(self.cfg_path)]),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"carom run exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                st = self.status()
                reals = [r for s in st["services"] for r in s["reals"]]
                if reals and all(r["state"] == "up" for r in reals):
                    return
            except (OSError, ConnectionError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"carom not ready in {timeout}s:\n{self.log_path.read_text()[-2000:]}")

    def status(self) -> dict[str, Any]:
        reply = control.request(self.socket, "status", timeout=5)
        if not reply.get("ok"):
            raise ValueError(str(reply))
        st: dict[str, Any] = reply["status"]
        return st

    def counters(self) -> dict[str, int]:
        """carom's per-CPU `stats` counters, read straight from the pinned map
        (the status request would take long enough to skew the window)."""
        if self.stats_fd is None:
            self.stats_fd = libbpf.obj_get(os.path.join(BPFFS, "carom", "bfwd", "stats"))
        ncpus = libbpf.num_possible_cpus()
        out = {}
        for c in abi.Counter:
            raw = libbpf.map_lookup(self.stats_fd, int(c).to_bytes(4, "little"), 8 * ncpus)
            if raw is not None:
                out[c] = sum(int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(ncpus))
        return {c.name.lower(): n for c, n in abi.with_rx(out).items()}  # rx: derived

    def stop(self) -> None:
        """Stop with --detach (XDP off, pins removed); by PID if the socket fails."""
        if self.stats_fd is not None:
            os.close(self.stats_fd)
            self.stats_fd = None
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        stop_carom(proc, self.socket, str(self.cfg_path), NS_DIR)


# --- one measurement ------------------------------------------------------------


@dataclass
class Snap:
    t: float
    pairs: dict[tuple[str, str], int]
    dir_ns: int
    sink_ns: int
    ticks: dict[str, list[int]]
    gen: dict[str, int]
    dir: dict[str, int]
    carom: dict[str, int] = field(default_factory=dict)


@dataclass
class Sample:
    delivered_pps: float
    dir_ns_per_pkt: float
    cpu1_ns_per_pkt: float  # all of CPU 1's busy time (tick-sampled), cross-check
    dir_util: float
    sink_util: float
    offered_pps: float
    dropped_to_dir_pps: float  # the director's ring was full
    dropped_to_sink_pps: float  # the sink's ring was full
    steal: float  # CPU 1's stolen share of the window
    shares: list[float]
    carom: dict[str, int]


class Forwarding:
    def __init__(self, tmp: Path, duration: float) -> None:
        self.tmp = tmp
        self.duration = duration
        self.shim = build_shim(tmp)
        self.gen_obj = build_bpf("xdp_gen", tmp)
        sink_obj = build_bpf("mac_sink", tmp)
        for proto in PROTOS:
            (tmp / f"{proto[:3].lower()}.trafgen").write_text(trafgen_config(proto))
        (tmp / "dsr.nft").write_text(nft_ruleset())
        ensure_bpffs(BPFFS)
        build_topology()
        self.sink = Sink(sink_obj)
        self.sink.attach()
        self.carom = CaromDaemon(tmp)
        self.dir_pid, self.sink_pid = pin_napi_threads()

    def close(self) -> None:
        self.carom.stop()
        self.sink.close()

    # contenders: set the director up, yield, take it down

    @contextlib.contextmanager
    def contender(self, name: str) -> Iterator[None]:
        xdp_off()
        nft_off()
        set_neighbours()
        try:
            if name == CAROM:
                self.carom.start()
            if name in (NFT_X, ROUTE_X):
                xdp_pass()
            if name in (NFT_X, NFT):
                sh(in_ns(NS_DIR, ["nft", "-f", str(self.tmp / "dsr.nft")]))
            check_neighbours()
            self.dir_pid, self.sink_pid = pin_napi_threads()
            yield
        finally:
            if name == CAROM:
                self.carom.stop()
            nft_off()
            xdp_off()

    def snap(self, carom: bool) -> Snap:
        """Counters that define the window first, back to back (map reads and
        /proc files); the veth statistics (for the notes) after, from `ip`."""
        t = time.monotonic()
        pairs = self.sink.pairs()
        counters = self.carom.counters() if carom else {}
        dir_ns, sink_ns = schedstat_ns(self.dir_pid), schedstat_ns(self.sink_pid)
        ticks = cpu_ticks()
        return Snap(
            t=t,
            pairs=pairs,
            dir_ns=dir_ns,
            sink_ns=sink_ns,
            ticks=ticks,
            gen=link_stats(NS_GEN, IF_GEN),
            dir=link_stats(NS_DIR, IF_DIR),
            carom=counters,
        )

    def generator(self, gen: str, proto: str) -> subprocess.Popen[bytes]:
        """Start a generator pinned to GEN_CPU, in its own session (stopped by group)."""
        if gen == "xdp":
            argv = [sys.executable, "-m", "benchmarks.lab.xdpgen", str(self.gen_obj), IF_GEN]
            argv += [frame_template(proto).hex(), str(self.duration + 30)]
        else:
            cfg = self.tmp / f"{proto[:3].lower()}.trafgen"
            argv = ["env", f"LD_PRELOAD={self.shim}", "trafgen", "-o", IF_GEN, "-i", str(cfg)]
            argv += ["-P", "1", "-C"]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        with open(self.tmp / "generator.log", "ab") as log:
            return subprocess.Popen(
                in_ns(NS_GEN, ["taskset", "-c", str(GEN_CPU), *argv]),
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )

    def sample(self, gen: str, name: str, proto: str) -> Sample:
        proc = self.generator(gen, proto)
        # The NAPI threads run SCHED_FIFO on both CPUs: above them, so that the
        # snapshots are taken promptly (the generator stays SCHED_OTHER).
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(60))
        try:
            total0 = sum(self.sink.pairs().values())
            if not wait_until(lambda: sum(self.sink.pairs().values()) > total0 + 1000, 5.0):
                log = (self.tmp / "generator.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} {proto}: nothing reached the sink ({gen}):\n{log}")
            time.sleep(0.5)  # warm-up: carom's connection table fills with the 64k flows
            a = self.snap(name == CAROM)
            time.sleep(self.duration)
            b = self.snap(name == CAROM)
        finally:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            stop_group(proc)
        return self._evaluate(name, proto, a, b)

    def _evaluate(self, name: str, proto: str, a: Snap, b: Snap) -> Sample:
        dt = b.t - a.t
        delta = {k: v - a.pairs.get(k, 0) for k, v in b.pairs.items()}
        per_real = {mac: delta.get((mac, MAC_DIR), 0) for mac in REALS.values()}
        good = sum(per_real.values())
        other = {k: v for k, v in delta.items() if v and k[0] not in REALS.values()}
        other_n = sum(other.values()) + sum(
            v for (d, s), v in delta.items() if d in REALS.values() and s != MAC_DIR
        )
        if good == 0 or other_n > 0.01 * good or self.sink.overflow():
            raise RuntimeError(
                f"{name} {proto}: the sink did not see forwarded frames as expected: "
                f"to reals {per_real}, other frames {other}"
            )
        shares = [v / good for v in per_real.values()]
        if min(shares) < 0.2:
            raise RuntimeError(f"{name} {proto}: uneven spread over the reals: {per_real}")
        carom: dict[str, int] = {}
        if b.carom:
            carom = {k: v - a.carom.get(k, 0) for k, v in b.carom.items() if v - a.carom.get(k, 0)}
            if carom.get("tx_dsr", 0) < 0.97 * good:
                raise RuntimeError(f"{name} {proto}: carom counters {carom} vs {good} delivered")
        cpu = f"cpu{DIR_CPU}"
        t0, t1 = a.ticks[cpu], b.ticks[cpu]
        d = [y - x for x, y in zip(t0, t1, strict=True)]
        busy_s = (d[0] + d[1] + d[2] + d[5] + d[6]) / USER_HZ
        steal_s = d[7] / USER_HZ
        return Sample(
            delivered_pps=good / dt,
            dir_ns_per_pkt=(b.dir_ns - a.dir_ns) / good,
            cpu1_ns_per_pkt=busy_s * 1e9 / good,
            dir_util=(b.dir_ns - a.dir_ns) / 1e9 / dt,
            sink_util=(b.sink_ns - a.sink_ns) / 1e9 / dt,
            offered_pps=(b.gen["tx"] + b.gen["tx_dropped"] - a.gen["tx"] - a.gen["tx_dropped"])
            / dt,
            dropped_to_dir_pps=(b.gen["tx_dropped"] - a.gen["tx_dropped"]) / dt,
            dropped_to_sink_pps=(b.dir["tx_dropped"] - a.dir["tx_dropped"]) / dt,
            steal=steal_s / dt,
            shares=shares,
            carom=carom,
        )


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _note(samples: list[Sample]) -> str:
    def m(f: Callable[[Sample], float]) -> float:
        return _med([f(s) for s in samples])

    shares = "/".join(f"{_med([s.shares[i] for s in samples]):.2f}" for i in range(len(REALS)))
    note = (
        f"offered {m(lambda s: s.offered_pps) / 1e3:.0f} kpps, dropped before the director "
        f"{m(lambda s: s.dropped_to_dir_pps) / 1e3:.0f}, at the sink's ring "
        f"{m(lambda s: s.dropped_to_sink_pps) / 1e3:.0f}; director thread "
        f"{m(lambda s: s.dir_util):.0%} of CPU {DIR_CPU}, sink {m(lambda s: s.sink_util):.0%} of "
        f"CPU {GEN_CPU}; steal {m(lambda s: s.steal):.0%}; reals' shares {shares}"
    )
    tot: dict[str, int] = {}
    for s in samples:
        for k, v in s.carom.items():
            tot[k] = tot.get(k, 0) + v
    if tot:
        rx = tot.get("rx", 0) or 1
        path = ", ".join(f"{k} {v / rx:.1%}" for k, v in sorted(tot.items()) if k != "rx")
        note += f"; carom counters per rx: {path}"
    return note


def _rows(results: dict[tuple[str, str, str], list[Sample]]) -> list[Row]:
    rows: list[Row] = []
    for gen in GENERATORS:
        prefix = "" if gen == "xdp" else "trafgen, "
        for proto in GEN_PROTOS[gen]:
            base_rate = f"{prefix}{proto}: {CAROM}, delivered"
            base_cpu = f"{prefix}{proto}: {CAROM}, director CPU"
            for name in CONTENDERS[gen]:
                samples = results.get((gen, name, proto), [])
                if not samples:
                    continue
                first = name == CAROM
                rows.append(
                    Row(
                        SECTION,
                        f"{prefix}{proto}: {name}, delivered",
                        "kpps",
                        [s.delivered_pps / 1e3 for s in samples],
                        baseline=None if first else base_rate,
                        higher_is_better=True,
                        note=_note(samples),
                    )
                )
                cpu1 = _med([s.cpu1_ns_per_pkt for s in samples])
                rows.append(
                    Row(
                        SECTION,
                        f"{prefix}{proto}: {name}, director CPU",
                        "ns/pkt",
                        [s.dir_ns_per_pkt for s in samples],
                        baseline=None if first else base_cpu,
                        note=(
                            "run time of the director's NAPI thread per delivered frame; all of "
                            f"CPU {DIR_CPU}, tick-sampled: {cpu1:.0f} ns/pkt"
                        ),
                    )
                )
    return rows


def run(
    budget_s: float = 240.0, duration: float = 3.0, rounds: int = 4, trafgen_rounds: int = 2
) -> list[Row]:
    """Main table (XDP generator): `rounds` rounds of carom, nftables, routing,
    alternating their order, UDP and TCP SYN each; then `trafgen_rounds` rounds
    with trafgen (UDP), if the budget leaves time."""
    budget = Budget(budget_s)
    reserve = 15.0  # teardown, and the daemon's stop
    tmp = Path(tempfile.mkdtemp(prefix="carom-bfwd-"))
    results: dict[tuple[str, str, str], list[Sample]] = {}
    fw: Forwarding | None = None
    try:
        fw = Forwarding(tmp, duration)
        est = {
            (gen, n): (8.0 if n == CAROM else 2.0) + len(GEN_PROTOS[gen]) * (duration + 2.0)
            for gen in GENERATORS
            for n in CONTENDERS[gen]
        }
        for gen, n_rounds in (("xdp", rounds), ("trafgen", trafgen_rounds)):
            names = CONTENDERS[gen]
            for r in range(n_rounds):
                whole = sum(est[(gen, n)] for n in names)
                if (r > 0 or gen != "xdp") and budget.left() < whole + reserve:
                    break
                for name in names if r % 2 == 0 else tuple(reversed(names)):
                    if budget.left() < est[(gen, name)] + reserve:
                        break
                    t0 = time.monotonic()
                    with fw.contender(name):
                        for proto in GEN_PROTOS[gen]:
                            sample = fw.sample(gen, name, proto)
                            results.setdefault((gen, name, proto), []).append(sample)
                    est[(gen, name)] = time.monotonic() - t0
        return _rows(results)
    finally:
        if fw is not None:
            with contextlib.suppress(Exception):
                fw.close()
        del_netns(NS_GEN)
        del_netns(NS_DIR)
        if os.path.ismount(BPFFS):
            subprocess.run(["umount", "-l", BPFFS], check=False, timeout=30)
        with contextlib.suppress(OSError):
            os.rmdir(BPFFS)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from benchmarks.run import table

    print(table(run()))
