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
    passed,
)
from carom.health.tcp import abort, close_with_reset, open_stream, tcp_socket


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


def judge_head(check: HttpCheck, head: bytes) -> CheckResult | int:
    """The failure a response head shows, or its status code when it passes."""
    status = parse_status_line(head.split(b"\n", 1)[0])
    if status is None:
        return CheckResult(ok=False, reason=f"not an HTTP response: {head[:40]!r}")
    if not status_ok(check, status):
        wanted = list(check.expect_status) if check.expect_status else "2xx or 3xx"
        return CheckResult(ok=False, reason=f"HTTP {status}, expected {wanted}")
    return status


def judge_body(check: HttpCheck, status: int, body: bytes) -> CheckResult:
    assert check.body is not None
    if check.body not in body:
        return CheckResult(
            ok=False,
            reason=f"HTTP {status} but the body's first {len(body)} bytes lack {check.body[:32]!r}",
        )
    return CheckResult(ok=True, reason=f"HTTP {status}")


def _head_end(buf: bytes | bytearray) -> int:
    """Length of the head (through the blank line) in `buf`, -1 if incomplete."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    return crlf + 4 if lf < 0 else min(crlf + 4, lf + 2)


async def _probe_plain(check: HttpCheck, target: Target) -> CheckResult:
    """Plain HTTP on a bare socket: the check that runs every second for many
    reals, so no transport or stream objects (about half the CPU of streams)."""
    loop = asyncio.get_running_loop()
    sock = tcp_socket(target)
    try:
        await loop.sock_connect(sock, (str(target.address), target.port))
        await loop.sock_sendall(sock, build_request(check, target))
        buf = bytearray()
        while (end := _head_end(buf)) < 0:
            if len(buf) > HTTP_HEAD_CAP:
                what = "headers" if b"\n" in buf else "line"
                return CheckResult(
                    ok=False, reason=f"response {what} longer than {HTTP_HEAD_CAP} bytes"
                )
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                what = "no response" if not buf else "a truncated response head"
                return CheckResult(ok=False, reason=f"server closed after {what}")
            buf += chunk
        status = judge_head(check, bytes(buf[:end]))
        if isinstance(status, CheckResult) or check.body is None:
            return status if isinstance(status, CheckResult) else passed(f"HTTP {status}")
        body = bytes(buf[end : end + HTTP_BODY_CAP])
        while len(body) < HTTP_BODY_CAP and check.body not in body:
            chunk = await loop.sock_recv(sock, HTTP_BODY_CAP - len(body))
            if not chunk:
                break
            body += chunk
        return judge_body(check, status, body)
    finally:
        close_with_reset(sock)


async def probe(check: HttpCheck, target: Target) -> CheckResult:
    if not check.tls:
        return await _probe_plain(check, target)
    ctx = _CONTEXTS[check.tls_verify]
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
        status = judge_head(check, head)
        if isinstance(status, CheckResult) or check.body is None:
            return status if isinstance(status, CheckResult) else passed(f"HTTP {status}")
        body = b""
        while len(body) < HTTP_BODY_CAP and check.body not in body:
            chunk = await reader.read(HTTP_BODY_CAP - len(body))
            if not chunk:
                break
            body += chunk
        return judge_body(check, status, body)
    finally:
        abort(writer)
