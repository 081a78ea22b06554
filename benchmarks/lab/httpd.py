"""A small, fast HTTP/1.1 server for the real-TCP benchmark (part 3): asyncio
protocol callbacks, keep-alive, one fixed response per request. The lab's own
servers (carom.lab.servers, http.server) are too slow to load a balancer; every
contender of part 3 talks to these same servers.

    python benchmarks/lab/httpd.py --name carom-real1 --port 8081 [--port 8082] --size 4096

Listens on 0.0.0.0 (so that a DSR real server answers for the VIP on its
loopback too), on every --port, prints "ready" once listening, stops on
SIGTERM/SIGINT.
The body is `served-by NAME\\n` padded to --size bytes; the header
`X-Served-By: NAME` says who answered."""

from __future__ import annotations

import argparse
import asyncio
import signal


def response(name: str, size: int) -> bytes:
    first = f"served-by {name}\n".encode()
    body = first + b"." * max(0, size - len(first) - 1) + (b"\n" if size > len(first) else b"")
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Served-By: {name}\r\n"
        "\r\n"
    ).encode()
    return head + body


class Http(asyncio.Protocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            self.transport.write(self.reply)
            if b"connection: close" in head.lower():
                self.transport.close()
                return


async def serve(name: str, ports: list[int], size: int) -> None:
    loop = asyncio.get_running_loop()
    reply = response(name, size)
    servers = [
        await loop.create_server(
            lambda: Http(reply), "0.0.0.0", port, reuse_address=True, backlog=1024
        )
        for port in ports
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--size", type=int, default=4096, help="body bytes")
    args = ap.parse_args()
    asyncio.run(serve(args.name, args.port, args.size))


if __name__ == "__main__":
    main()
