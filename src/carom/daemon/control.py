"""The control socket: newline-delimited JSON over a root-only unix socket.

The CLI never touches maps; it asks the daemon, which owns them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("carom.control")

# A handler returns a reply to encode, or one already encoded (a large reply is
# encoded off the event loop, see daemon/app.py).
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | bytes]]
DEFAULT_SOCKET_DIR = "/run/carom"


def default_socket(instance: str = "default") -> str:
    return os.path.join(DEFAULT_SOCKET_DIR, f"{instance}.sock")


async def serve(path: str, handler: Handler) -> asyncio.Server:
    """Listen on `path` (mode 0600 in a 0700 directory) and answer requests."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        if _alive(path):
            raise RuntimeError(f"another carom daemon is answering on {path}")
        os.unlink(path)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line:
                return
            response: dict[str, Any] | bytes
            try:
                request = json.loads(line)
                response = await handler(request)
            except Exception as exc:  # a bad request must never take the daemon down
                log.exception("control request failed")
                response = {"ok": False, "error": str(exc)}
            if isinstance(response, bytes):
                writer.write(response + b"\n")
            else:
                writer.write(json.dumps(response, default=str).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    old = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(client, path=path, limit=1 << 20)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(path: str, command: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one request to the daemon (blocking; for the CLI)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(
                f"no carom daemon is answering on {path} (is `carom run` running?)"
            ) from exc
        s.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    result: dict[str, Any] = json.loads(buf)
    return result
