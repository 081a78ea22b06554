"""A steady stream of new HTTP connections to one URL, for the health tests:
one JSON line per request, [start time, served-by name or null, error]. Runs in
a lab client namespace until its duration is over.

    python health_load.py URL SECONDS [RATE]"""

from __future__ import annotations

import json
import socket
import sys
import time


def once(host: str, port: int) -> tuple[str | None, str]:
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.settimeout(1.0)
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError as exc:
        return None, type(exc).__name__
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("served-by "):
            return line.split()[-1], ""
    return None, "no answer"


def main() -> int:
    host, port = sys.argv[1].rsplit(":", 1)
    duration = float(sys.argv[2])
    gap = 1.0 / float(sys.argv[3]) if len(sys.argv) > 3 else 0.02
    end = time.time() + duration
    while (start := time.time()) < end:
        name, error = once(host, int(port))
        print(json.dumps([start, name, error]), flush=True)
        time.sleep(max(0.0, start + gap - time.time()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
