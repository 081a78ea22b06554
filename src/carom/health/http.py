"""HTTP and HTTPS checks over asyncio streams.

The request is HTTP/1.0 with `Connection: close` (like HAProxy's default
httpchk): the server answers without chunked encoding and closes, so the body is
what comes before EOF. Every read is capped: the status line and headers at
HTTP_HEAD_CAP bytes, the body at HTTP_BODY_CAP; a server that sends more is
not read further."""

from __future__ import annotations

import asyncio
import ssl

from carom.health.spec import (
    HTTP_BODY_CAP,
    HTTP_HEAD_CAP,
    CheckResult,
    HttpCheck,
    Target,
)
from carom.health.tcp import abort, open_stream


def tls_context(verify: bool) -> ssl.SSLContext:
    """Verification on: system CAs and the host name; off: any certificate."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_CONTEXTS = {True: tls_context(True), False: tls_context(False)}


def host_header(check: HttpCheck, target: Target) -> str:
    if check.host is not None:
        return check.host
    address = str(target.address)
    return f"[{address}]" if target.address.version == 6 else address


def build_request(check: HttpCheck, target: Target) -> bytes:
    return (
        f"{check.method} {check.path} HTTP/1.0\r\n"
        f"Host: {host_header(check, target)}\r\n"
        "User-Agent: carom-health\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")


def status_ok(check: HttpCheck, status: int) -> bool:
    if check.expect_status:
        return status in check.expect_status
    return 200 <= status < 400


def parse_status_line(line: bytes) -> int | None:
    """The status code of `HTTP/1.x NNN reason`, None if the line is not one."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    if len(parts[1]) != 3:
        return None
    return int(parts[1])


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """Status line and headers, at most HTTP_HEAD_CAP bytes in all."""
    head = b""
    while True:
        line = await reader.readuntil(b"\n")  # the reader's limit caps one line
        head += line
        if len(head) > HTTP_HEAD_CAP:
            raise ValueError(f"response headers longer than {HTTP_HEAD_CAP} bytes")
        if line in (b"\r\n", b"\n"):
            return head


async def probe(check: HttpCheck, target: Target) -> CheckResult:
    ctx = _CONTEXTS[check.tls_verify] if check.tls else None
    server_name = None
    if ctx is not None:
        server_name = check.host if check.host is not None else str(target.address)
    reader, writer = await open_stream(
        target, limit=HTTP_HEAD_CAP, ssl=ctx, server_hostname=server_name
    )
    try:
        writer.write(build_request(check, target))
        try:
            head = await _read_head(reader)
        except asyncio.IncompleteReadError as exc:
            what = "no response" if not exc.partial else "a truncated response head"
            return CheckResult(ok=False, reason=f"server closed after {what}")
        except asyncio.LimitOverrunError:
            return CheckResult(ok=False, reason=f"response line longer than {HTTP_HEAD_CAP} bytes")
        except ValueError as exc:
            return CheckResult(ok=False, reason=str(exc))
        status = parse_status_line(head.split(b"\n", 1)[0])
        if status is None:
            return CheckResult(ok=False, reason=f"not an HTTP response: {head[:40]!r}")
        if not status_ok(check, status):
            wanted = list(check.expect_status) if check.expect_status else "2xx or 3xx"
            return CheckResult(ok=False, reason=f"HTTP {status}, expected {wanted}")
        if check.body is not None:
            body = b""
            while len(body) < HTTP_BODY_CAP and check.body not in body:
                chunk = await reader.read(HTTP_BODY_CAP - len(body))
                if not chunk:
                    break
                body += chunk
            if check.body not in body:
                return CheckResult(
                    ok=False,
                    reason=f"HTTP {status} but the body's first {len(body)} bytes "
                    f"lack {check.body[:32]!r}",
                )
        return CheckResult(ok=True, reason=f"HTTP {status}")
    finally:
        abort(writer)
