"""Real servers on 127.0.0.1 for the health-check tests: well-behaved ones (HTTP,
HTTPS, UDP echo, DNS, agent) and hostile ones (silent, endless, garbage).
Each is an async context manager that yields the port it listens on."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import IPv4Address

import dns.message
import dns.rcode
import trustme

from carom.health.spec import Target

LOCAL = IPv4Address("127.0.0.1")


def target(port: int) -> Target:
    return Target(address=LOCAL, port=port, real=LOCAL)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Handler(http.server.BaseHTTPRequestHandler):
    """/ -> 200 "carom ok", /down -> 503, /redirect -> 302; records Host headers."""

    seen_hosts: list[str] = []
    peers: list[tuple[str, int]] = []  # the client address of each GET

    def do_GET(self) -> None:
        self.seen_hosts.append(self.headers.get("Host", ""))
        self.peers.append(self.client_address)
        status, body = {
            "/": (200, b"hello: carom ok\n"),
            "/down": (503, b"maintenance\n"),
            "/redirect": (302, b""),
        }.get(self.path, (404, b"no\n"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.asynccontextmanager
async def http_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """The standard library's threaded HTTP server, optionally over TLS."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def tls_server_context(hostname: str = "localhost") -> tuple[ssl.SSLContext, trustme.CA]:
    """A server context with a certificate for `hostname`, from a fresh test CA."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(hostname).configure_cert(ctx)
    return ctx, ca


@contextlib.asynccontextmanager
async def stream_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
) -> AsyncIterator[int]:
    """An asyncio TCP server running `handle` for each connection."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            result = handle(reader, writer)
            if asyncio.iscoroutine(result):
                await result
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """Completes TCP handshakes (the kernel does, from the backlog) and then says
    nothing, ever: a hung application, or a TLS handshake that stalls."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    """Sends `data` again and again until the client goes away (a gigabyte and more)."""
    while True:
        writer.write(data)
        await writer.drain()


async def say(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.reply(data)
        if answer is not None:
            self.transport.sendto(answer, addr)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def udp_server(reply: Callable[[bytes], bytes | None]) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpEcho(reply), local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def dns_answer(wire: bytes) -> bytes:
    """A tiny authoritative server: NOERROR for names under example.test., REFUSED
    for the rest."""
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    name = query.question[0].name.to_text()
    if not name.endswith("example.test."):
        response.set_rcode(dns.rcode.REFUSED)
    elif name.startswith("missing."):
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


@contextlib.asynccontextmanager
async def dns_server() -> AsyncIterator[int]:
    """The responder above on one port, over UDP and TCP."""

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        answer = dns_answer(await reader.readexactly(size))
        writer.write(len(answer).to_bytes(2, "big") + answer)
        await writer.drain()

    async with stream_server(tcp) as port:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpEcho(dns_answer), local_addr=("127.0.0.1", port)
        )
        try:
            yield port
        finally:
            transport.close()
