"""A small HTTP/1.1 server on asyncio streams, for /metrics and the JSON API.

Why not a framework: the daemon serves a handful of routes to Prometheus and to
deploy tooling, one request per connection; the standard library's asyncio does
that in one event loop with the daemon's other tasks, without a dependency.
Whatever arrives is untrusted, as on the control socket: the head and the body
are bounded in size and in the time they may take to arrive, and every failure
gets a status code and a one-line JSON error."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

log = logging.getLogger("carom.http")

MAX_HEAD_BYTES = 16 * 1024  # request line and headers
MAX_BODY_BYTES = 64 * 1024  # an action's arguments are a few short fields
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Request:
    method: str  # GET, POST, ...
    path: str  # without the query string
    query: dict[str, str]  # last value of each query parameter
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, data: Any) -> Response:
    return Response(status, json.dumps(data, default=str).encode() + b"\n")


def error(status: int, message: str, **extra: Any) -> Response:
    return json_response(status, {"ok": False, "error": message, **extra})


Handler = Callable[[Request], Awaitable[Response]]


class HttpError(Exception):
    """A request that cannot be read; answered with `status` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"request head larger than {MAX_HEAD_BYTES} bytes") from None
    except asyncio.IncompleteReadError:
        raise HttpError(400, "incomplete request head") from None
    except TimeoutError:
        raise HttpError(408, f"no complete request within {READ_TIMEOUT_S:g} s") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, f"malformed header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked request bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "Content-Length is not a number") from None
    if length < 0 or length > MAX_BODY_BYTES:
        raise HttpError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S) if length else b""
    except (asyncio.IncompleteReadError, TimeoutError):
        raise HttpError(400, "request body shorter than its Content-Length") from None
    url = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(url.query))
    return Request(method.upper(), url.path or "/", query, headers, body)


def encode(resp: Response) -> bytes:
    reason = HTTPStatus(resp.status).phrase if resp.status in HTTPStatus._value2member_map_ else ""
    head = [
        f"HTTP/1.1 {resp.status} {reason}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in resp.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Listen on host:port; each connection carries one request."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                req = await read_request(reader)
            except HttpError as exc:
                resp = error(exc.status, str(exc))
            else:
                try:
                    resp = await handler(req)
                except Exception as exc:  # a bad request must never take the daemon down
                    log.exception("HTTP request failed", extra={"path": req.path})
                    resp = error(
                        500,
                        f"internal error ({type(exc).__name__}); the daemon log has the details",
                    )
            writer.write(encode(resp))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            pass  # the client went away or stopped reading
        finally:
            writer.close()

    return await asyncio.start_server(client, host, port, limit=MAX_HEAD_BYTES, reuse_address=True)
