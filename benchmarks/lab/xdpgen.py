"""The forwarding benchmark's generator process: run inside the generator's
namespace (`ip netns exec carom-bgen taskset -c 0 python -m benchmarks.lab.xdpgen
...`), it loads xdp_gen.bpf.o, writes the frame template and runs the program
with BPF_PROG_TEST_RUN in live-frames mode until SIGINT/SIGTERM or its time
limit. Frames leave the interface as XDP frames (XDP_TX in live-frames mode is
a redirect out of the context's ingress interface), so the director's veth end
receives them the way a NIC driver hands frames to XDP: no socket buffer, no
copy. Prints {"frames": N, "seconds": S} (frames counted by the program)."""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import socket
import struct
import time

from carom.bpf import libbpf

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
# Frames per syscall: as many as a run can send. Each BPF_PROG_TEST_RUN ends by
# tearing down its page pool, which waits for an RCU grace period (8-20 ms
# here); with short runs the generator would idle in bursts and the director's
# ring would overflow while it is fed, then starve. A signal (SIGINT, SIGTERM,
# or the SIGALRM of the time limit) ends the run early (EINTR).
REPEAT = 1 << 30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("obj")
    ap.add_argument("ifname")
    ap.add_argument("template", help="the frame, hex")
    ap.add_argument("seconds", type=float, help="hard time limit")
    args = ap.parse_args()
    frame = bytes.fromhex(args.template)
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.setitimer(signal.ITIMER_REAL, args.seconds)
    obj = libbpf.BpfObject(args.obj)
    obj.load()
    tmpl = obj.map("gen_template").fd
    seq = obj.map("gen_seq").fd
    libbpf.map_update(tmpl, struct.pack("<I", 0), frame)
    prog = obj.program_fd("carom_gen")
    # struct xdp_md: data, data_end (must be the frame's length), data_meta,
    # ingress_ifindex, rx_queue_index, egress_ifindex
    ctx = struct.pack("<6I", 0, len(frame), 0, socket.if_nametoindex(args.ifname), 0, 0)
    data = ctypes.create_string_buffer(frame, len(frame))
    ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
    opts = libbpf.TestRunOpts(
        sz=ctypes.sizeof(libbpf.TestRunOpts),
        data_in=ctypes.cast(data, ctypes.c_void_p),
        data_size_in=len(frame),
        ctx_in=ctypes.cast(ctx_buf, ctypes.c_void_p),
        ctx_size_in=len(ctx),
        repeat=REPEAT,
        flags=BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size=64,
    )
    t0 = time.monotonic()
    while not stop:
        rc = libbpf._prog_test_run(prog, ctypes.byref(opts))
        if rc < 0 and not stop:
            raise OSError(-rc, f"BPF_PROG_TEST_RUN: {rc}")
    ncpus = libbpf.num_possible_cpus()
    raw = libbpf.map_lookup(seq, struct.pack("<I", 0), 8 * ncpus) or b""
    frames = sum(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
    print(json.dumps({"frames": frames, "seconds": time.monotonic() - t0}), flush=True)


if __name__ == "__main__":
    main()
