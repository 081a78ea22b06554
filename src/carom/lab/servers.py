"""The services every lab server runs, as one small program.

    python -m carom.lab.servers --name carom-real1 [--ready-file PATH]

* HTTP/1.1 with keep-alive on port 80: every GET answers `served-by NAME\\n`
  with an `X-Served-By: NAME` header; `X-Local-Addr` tells which local address
  the connection reached (the VIP, under DSR) and `X-Client-Addr` who asked.
  `?size=N` pads the body to N bytes, for tests that want large responses.
* A "server speaks first" line protocol on port 2525, SMTP-like, for
  long-lived connections (field note 3: these break first when a balancer
  loses a connection): on connect `220 NAME ready`, then `PING n` answers
  `250 NAME n`, `QUIT` answers `221 NAME bye` and closes.

Both listen on `::` with IPV6_V6ONLY off, so one socket serves IPv4 and IPv6.
Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import socketserver
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from carom.lab.topology import BANNER_PORT, HTTP_PORT

log = logging.getLogger("carom.lab.servers")

MAX_BODY = 64 * 1024 * 1024  # cap for ?size=N


def _plain(addr: str) -> str:
    """`::ffff:198.51.100.10` (an IPv4 peer on a dual-stack socket) as `198.51.100.10`."""
    return addr.removeprefix("::ffff:") if addr.startswith("::ffff:") and "." in addr else addr


class _DualStack:
    """Mixin: bind `::` with IPV6_V6ONLY off so the socket takes IPv4 too."""

    address_family: int = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    socket: socket.socket

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)  # type: ignore[arg-type]


class HTTPServer(_DualStack, ThreadingHTTPServer):
    def __init__(self, port: int, name: str) -> None:
        self.node_name = name
        super().__init__(("::", port), HTTPHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (socket.getfqdn),
        # which in a namespace without DNS can stall; the lab does not need it.
        super().server_bind()
        self.server_name = self.node_name
        self.server_port = self.server_address[1]


class HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response has Content-Length
    server_version = "carom-lab"
    server: HTTPServer

    def _respond(self, with_body: bool) -> None:
        name = self.server.node_name
        body = f"served-by {name}\n".encode()
        size = parse_qs(urlsplit(self.path).query).get("size", [""])[0]
        if size.isdigit():
            want = min(int(size), MAX_BODY)
            body = (body + b"x" * want)[:want]
        local = self.connection.getsockname()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", name)
        self.send_header("X-Local-Addr", _plain(local[0]))
        self.send_header("X-Client-Addr", _plain(self.client_address[0]))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("http %s %s", _plain(self.client_address[0]), format % args)


class BannerServer(_DualStack, socketserver.ThreadingTCPServer):
    def __init__(self, port: int, name: str) -> None:
        self.node_name = name
        super().__init__(("::", port), BannerHandler)


class BannerHandler(socketserver.StreamRequestHandler):
    server: BannerServer

    def _send(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())
        self.wfile.flush()

    def handle(self) -> None:
        name = self.server.node_name
        peer = _plain(self.client_address[0])
        log.info("banner: connection from %s", peer)
        self._send(f"220 {name} ready")
        for raw in self.rfile:
            words = raw.decode(errors="replace").split()
            verb = words[0].upper() if words else ""
            if verb == "PING":
                self._send(f"250 {name} {' '.join(words[1:])}".rstrip())
            elif verb == "QUIT":
                self._send(f"221 {name} bye")
                break
            else:
                self._send("500 unknown command")
        log.info("banner: %s closed", peer)


def serve(name: str, http_port: int, banner_port: int, ready_file: Path | None) -> int:
    servers: list[socketserver.TCPServer] = [
        HTTPServer(http_port, name),
        BannerServer(banner_port, name),
    ]
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [
        threading.Thread(target=s.serve_forever, name=type(s).__name__, daemon=True)
        for s in servers
    ]
    for th in threads:
        th.start()
    log.info("%s: http on [::]:%d, banner on [::]:%d", name, http_port, banner_port)
    if ready_file is not None:
        ready_file.write_text("ready\n")
    while not stop.wait(1.0):
        pass
    for s in servers:
        s.shutdown()
        s.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m carom.lab.servers", description=__doc__)
    p.add_argument("--name", required=True, help="node name shown in every answer")
    p.add_argument("--http-port", type=int, default=HTTP_PORT)
    p.add_argument("--banner-port", type=int, default=BANNER_PORT)
    p.add_argument("--ready-file", type=Path, help="written once both services listen")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return serve(args.name, args.http_port, args.banner_port, args.ready_file)


if __name__ == "__main__":
    raise SystemExit(main())
