"""Steady new connections to a VIP, for failover measurements.

Runs inside a client namespace: `python -m carom.lab.prober --vip ADDR
--every 0.02`. Starts one new TCP connection (HTTP GET, then close) every
`--every` seconds, each in its own thread with a short timeout, so a lost SYN
shows as a failed attempt instead of a retransmission a second later. On
stdin `dump` it prints one JSON line: every attempt as [start, ok, served_by],
start in CLOCK_MONOTONIC seconds (namespaces share the clock, so the caller
can compare it with its own); `quit` ends it.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

TIMEOUT_S = 0.4  # below TCP's 1 s initial SYN retransmission


def attempt(vip: str, port: int, out: list[tuple[float, bool, str]], lock: threading.Lock) -> None:
    start = time.monotonic()
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    served, ok = "", False
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect((vip, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: carom\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            for line in data.decode(errors="replace").split("\r\n"):
                if line.lower().startswith("x-served-by:"):
                    served, ok = line.split(":", 1)[1].strip(), True
    except OSError as exc:
        served = type(exc).__name__
    with lock:
        out.append((start, ok, served))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vip", required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--every", type=float, default=0.02)
    args = ap.parse_args()
    out: list[tuple[float, bool, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loop() -> None:
        nxt = time.monotonic()
        while not stop.is_set():
            threading.Thread(target=attempt, args=(args.vip, args.port, out, lock)).start()
            nxt += args.every
            time.sleep(max(0.0, nxt - time.monotonic()))

    threading.Thread(target=loop, daemon=True).start()
    print(json.dumps({"started": time.monotonic()}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "dump":
            with lock:
                print(json.dumps({"attempts": sorted(out)}), flush=True)
        elif cmd == "quit":
            break
    stop.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
