"""The sync benchmark's new-flow generator process: run inside the generator's
namespace (`ip netns exec carom-s100k-g taskset -c 0 python -m
benchmarks.lab.flowgen OBJ IFNAME ...`), it loads flow_gen.bpf.o, writes its
config (two frame templates, pace, number of flows, first client address) and
runs the program with BPF_PROG_TEST_RUN in live-frames mode until every frame is
out. Prints {"frames", "t0_ns", "last_ns", "spins", "late", "late_ns", "stamps"}
(CLOCK_MONOTONIC, as the program read it; stamps: [flow, first packet's time]
of every 255th flow)."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import struct
import time

from carom.bpf import libbpf

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
REPEAT = 1 << 30  # a run ends by the time limit's signal (see xdpgen.py)
STATE = struct.Struct("<6Q")
STAMP_EVERY, STAMP_SLOTS = 255, 8192  # as in flow_gen.bpf.c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("obj")
    ap.add_argument("ifname")
    ap.add_argument("tcp", help="the TCP SYN frame, hex (client address 0)")
    ap.add_argument("udp", help="the UDP frame, hex (client address 0)")
    ap.add_argument("rate", type=float, help="new flows per second (two frames each)")
    ap.add_argument("flows", type=int)
    ap.add_argument("base", type=int, help="first client address, as an integer")
    ap.add_argument("--pin", help="pin gen_state here while running (progress for others)")
    args = ap.parse_args()
    tcp, udp = bytes.fromhex(args.tcp), bytes.fromhex(args.udp)
    assert len(tcp) == len(udp) == 60
    interval_ps = round(1e12 / (2 * args.rate))
    frames = 2 * args.flows
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = signum != signal.SIGALRM

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, on_signal)
    obj = libbpf.BpfObject(args.obj)
    obj.load()
    cfg = struct.pack("<QQII", interval_ps, frames, args.base, 0) + tcp + udp
    libbpf.map_update(obj.map("gen_cfg").fd, struct.pack("<I", 0), cfg)
    state_fd = obj.map("gen_state").fd
    if args.pin:
        libbpf.obj_pin(state_fd, args.pin)
    prog = obj.program_fd("carom_flow_gen")
    ctx = struct.pack("<6I", 0, len(tcp), 0, socket.if_nametoindex(args.ifname), 0, 0)
    data = ctypes.create_string_buffer(tcp, len(tcp))
    ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
    opts = libbpf.TestRunOpts(
        sz=ctypes.sizeof(libbpf.TestRunOpts),
        data_in=ctypes.cast(data, ctypes.c_void_p),
        data_size_in=len(tcp),
        ctx_in=ctypes.cast(ctx_buf, ctypes.c_void_p),
        ctx_size_in=len(ctx),
        repeat=REPEAT,
        flags=BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size=64,
    )

    def state() -> tuple[int, ...]:
        raw = libbpf.map_lookup(state_fd, struct.pack("<I", 0), STATE.size)
        assert raw is not None
        return STATE.unpack(raw)

    deadline = time.monotonic() + 3 * frames * interval_ps / 1e12 + 10
    sent = 0
    while not stop and sent < frames and time.monotonic() < deadline:
        # the run ends at the signal: when the rest of the frames should be out
        left = (frames - sent) * interval_ps / 1e12
        signal.setitimer(signal.ITIMER_REAL, left + 0.02)
        rc = libbpf._prog_test_run(prog, ctypes.byref(opts))
        signal.setitimer(signal.ITIMER_REAL, 0)
        if rc < 0 and not stop and rc != -4:  # -EINTR: the timer
            raise OSError(-rc, f"BPF_PROG_TEST_RUN: {rc}")
        sent = state()[1]
    t0, sent, last, spins, late, late_ns = state()
    if args.pin:
        os.unlink(args.pin)
    stamp_fd = obj.map("gen_stamp").fd
    stamps = []  # (flow, CLOCK_MONOTONIC ns of its first packet)
    for slot in range(min(STAMP_SLOTS, (sent // 2 + STAMP_EVERY - 1) // STAMP_EVERY)):
        raw = libbpf.map_lookup(stamp_fd, struct.pack("<I", slot), 8)
        if raw is not None and int.from_bytes(raw, "little"):
            stamps.append((slot * STAMP_EVERY, int.from_bytes(raw, "little")))
    print(
        json.dumps(
            {
                "frames": sent,
                "t0_ns": t0,
                "last_ns": last,
                "spins": spins,
                "late": late,
                "late_ns": late_ns,
                "stamps": stamps,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
