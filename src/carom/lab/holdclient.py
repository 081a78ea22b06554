"""A client that holds long-lived TCP connections to a VIP and reports, on
request, which server answers on each: the way to prove that established
connections survive reloads, restarts and failovers.

Runs inside a client namespace: `python -m carom.lab.holdclient --vip ADDR
--banner N --http N`. Prints one JSON line after connecting, and one per
command read from stdin: `ping` (send on every connection), `quit`."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Conn:
    def __init__(self, kind: str, vip: str, port: int, timeout: float = 5.0) -> None:
        self.kind = kind
        self.error = ""  # why the connection broke; it is not used again
        family = socket.AF_INET6 if ":" in vip else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((vip, port))
        self.file = self.sock.makefile("rb")
        self.server = ""
        self.count = 0
        if kind == "banner":  # the server speaks first
            line = self.file.readline().decode()
            self.server = line.split()[1] if line.startswith("220 ") else f"bad greeting {line!r}"

    def ping(self) -> str:
        self.count += 1
        if self.kind == "banner":
            self.sock.sendall(f"PING {self.count}\r\n".encode())
            line = self.file.readline().decode()
            parts = line.split()
            if len(parts) != 3 or parts[0] != "250" or parts[2] != str(self.count):
                raise RuntimeError(f"unexpected reply {line!r}")
            return parts[1]
        self.sock.sendall(b"GET / HTTP/1.1\r\nHost: carom\r\n\r\n")
        served, length = "", 0
        status = self.file.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected status {status!r}")
        while True:
            header = self.file.readline().strip()
            if not header:
                break
            name, _, value = header.decode().partition(":")
            if name.lower() == "x-served-by":
                served = value.strip()
            elif name.lower() == "content-length":
                length = int(value)
        self.file.read(length)
        return served


def _ping(c: Conn) -> dict[str, Any]:
    if c.error:
        return {"ok": False, "error": c.error}
    try:
        return {"ok": True, "server": c.ping()}
    except (OSError, RuntimeError) as exc:
        c.error = f"{type(exc).__name__}: {exc}"
        return {"ok": False, "error": c.error}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vip", required=True)
    ap.add_argument("--banner", type=int, default=0, help="speaks-first connections (:2525)")
    ap.add_argument("--http", type=int, default=0, help="HTTP keep-alive connections (:80)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds a reply may take")
    args = ap.parse_args()
    conns = [Conn("banner", args.vip, 2525, args.timeout) for _ in range(args.banner)]
    conns += [Conn("http", args.vip, 80, args.timeout) for _ in range(args.http)]
    for c in conns:
        if c.kind == "http":
            c.server = c.ping()

    def emit(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    emit(
        {
            "connected": [
                {"kind": c.kind, "server": c.server, "local_port": c.sock.getsockname()[1]}
                for c in conns
            ]
        }
    )
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd == "ping":
            # all connections at once: a dead one costs one timeout, not one each
            with ThreadPoolExecutor(max(1, min(len(conns), 128))) as pool:
                emit({"ping": list(pool.map(_ping, conns))})
    for c in conns:
        c.sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
