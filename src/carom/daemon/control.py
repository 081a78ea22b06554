"""The control socket: newline-delimited JSON over a root-only unix socket.

The CLI never touches maps; it asks the daemon, which owns them. Whatever comes
in is untrusted: a request is bounded in size and in the time it may take to
arrive, checked against the table of commands before the daemon sees it, and
every failure is answered with one line that says what was wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("carom.control")

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Stream:
    """A reply that goes on (`carom trace`): `first` is answered at once, then
    `pump(send)` writes lines until it returns. The client keeps the stream, and
    whatever the pump switched on, alive by sending a line (any) at least every
    `keepalive_s`: its end, its silence (a frozen client) or a write it does not
    take within STREAM_WRITE_TIMEOUT_S cancels the pump, whose `finally` undoes
    what it did."""

    first: dict[str, Any]
    pump: Callable[[Send], Coroutine[Any, Any, None]]
    keepalive_s: float
    close: Callable[[], None] = lambda: None  # runs however the stream ends


# A handler returns a reply to encode, one already encoded (a large reply is
# encoded off the event loop, see daemon/app.py), or a Stream.
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | bytes | Stream]]
DEFAULT_SOCKET_DIR = "/run/carom"
MAX_REQUEST_BYTES = 64 * 1024  # a request is a command and a few short arguments
READ_TIMEOUT_S = 5.0  # a client that sends nothing must not hold a connection open
WRITE_TIMEOUT_S = 30.0  # nor one that never reads its reply
STREAM_WRITE_TIMEOUT_S = 5.0  # a streaming client that stops reading ends its stream

# command -> {argument: (type, required)}; anything else is refused before the
# daemon sees it, so a handler can trust the shape of what it gets.
COMMANDS: dict[str, dict[str, tuple[type, bool]]] = {
    "status": {},
    "reload": {},
    "stop": {"detach": (bool, False)},
    "explain": {"client": (str, True), "service": (str, True), "syn": (bool, False)},
    "switchover": {},
    "vrrp": {"state": (str, True)},
    # manual overrides of a real (daemon/overrides.py)
    "real-drain": {"address": (str, True), "service": (str, False)},
    "real-undrain": {"address": (str, True), "service": (str, False)},
    "real-weight": {"address": (str, True), "weight": (int, True), "service": (str, False)},
    # a stream of sampled decisions (daemon/trace_task.py)
    "trace": {"sample": (int, False), "host": (str, False), "port": (int, False)},
}


class SocketPathError(Exception):
    """The configured socket path cannot be used; nothing was removed."""


class RequestError(ValueError):
    """A request that does not follow the protocol."""


def default_socket(instance: str = "default") -> str:
    return os.path.join(DEFAULT_SOCKET_DIR, f"{instance}.sock")


def check_socket_path(path: str) -> None:
    """Refuse a path that holds anything but a stale socket: carom removes a
    socket a dead daemon left behind, never a file someone else put there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else _kind(st.st_mode)
        raise SocketPathError(
            f"{path} exists and is {what}, not a socket; carom will not delete it: "
            "remove it yourself or set control_socket to another path"
        )
    if alive(path):
        raise SocketPathError(f"another carom daemon is answering on {path}")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


def remove_socket(path: str) -> None:
    """Remove our socket at shutdown, and nothing that has replaced it."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line -> a checked request. Raises RequestError."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"malformed request: not JSON ({exc})") from None
    except RecursionError:
        raise RequestError("malformed request: nested too deeply") from None
    if not isinstance(request, dict):
        raise RequestError('malformed request: expected an object such as {"command": "status"}')
    command = request.get("command")
    if not isinstance(command, str) or command not in COMMANDS:
        known = ", ".join(COMMANDS)
        raise RequestError(f"unknown command {command!r}; the commands are: {known}")
    spec = COMMANDS[command]
    for name, value in request.items():
        if name == "command":
            continue
        if name not in spec:
            raise RequestError(f"{command}: unknown argument {name!r}")
        kind, _ = spec[name]
        if type(value) is not kind:
            raise RequestError(
                f"{command}: {name} must be {kind.__name__}, not {type(value).__name__}"
            )
    missing = [name for name, (_, required) in spec.items() if required and name not in request]
    if missing:
        raise RequestError(f"{command}: missing argument {', '.join(missing)}")
    return request


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def _answer(
    reader: asyncio.StreamReader, handler: Handler
) -> dict[str, Any] | bytes | Stream:
    try:
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "error": f"no complete request within {READ_TIMEOUT_S:g} s"}
    except ValueError:  # the StreamReader's limit: a line longer than the buffer
        return {"ok": False, "error": f"request larger than {MAX_REQUEST_BYTES} bytes"}
    if not line.endswith(b"\n"):
        return {"ok": False, "error": "incomplete request: end it with a newline"}
    try:
        request = parse_request(line)
        return await handler(request)
    except RequestError as exc:
        return {"ok": False, "error": str(exc)}
    except ValueError as exc:  # a well-formed request with a bad value, e.g. an address
        return {"ok": False, "error": _one_line(str(exc))}
    except Exception as exc:  # a bad request must never take the daemon down
        log.exception("control request failed")
        return {
            "ok": False,
            "error": f"internal error ({type(exc).__name__}: {_one_line(str(exc))}); "
            "the daemon log has the details",
        }


async def serve(path: str, handler: Handler) -> asyncio.Server:
    """Listen on `path` (mode 0600 in a 0700 directory) and answer requests."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    check_socket_path(path)
    remove_socket(path)  # a stale socket of a dead daemon

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await _answer(reader, handler)
            if isinstance(response, Stream):
                await _stream(reader, writer, response)
                return
            if isinstance(response, bytes):
                writer.write(response + b"\n")
            else:
                writer.write(json.dumps(response, default=str).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            pass  # the client went away or stopped reading: nothing to answer
        finally:
            writer.close()

    old = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(client, path=path, limit=MAX_REQUEST_BYTES)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


async def _stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: Stream
) -> None:
    """Run a Stream until its pump ends or its client goes away or falls silent."""

    async def send(obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, default=str).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), STREAM_WRITE_TIMEOUT_S)

    async def watch() -> None:
        while await asyncio.wait_for(reader.readline(), stream.keepalive_s):
            pass  # any line renews; EOF (b"") or silence (TimeoutError) ends

    try:
        await send(stream.first)
        pump = asyncio.create_task(stream.pump(send), name="control-stream")
        watcher = asyncio.create_task(watch(), name="control-stream-watch")
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                task.cancel()
            for result in await asyncio.gather(pump, watcher, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(
                    result, (TimeoutError, ConnectionError, ValueError)
                ):
                    log.error("control stream failed", exc_info=result)
    finally:
        stream.close()


def alive(path: str) -> bool:
    """Whether a daemon answers on `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _send(s: socket.socket, path: str, command: str, args: dict[str, Any]) -> None:
    """Connect to the daemon's socket and send one request line; a person's
    sentence (ConnectionError) when nobody answers there."""
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ConnectionError(
            f"no carom daemon is answering on {path} (is `carom run` running?)"
        ) from exc
    except PermissionError as exc:
        raise ConnectionError(f"permission denied on {path}; run as root") from exc
    s.sendall(json.dumps({"command": command, **args}).encode() + b"\n")


def request(path: str, command: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one request to the daemon (blocking; for the CLI). Raises
    ConnectionError with a sentence for a person when there is no good reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        _send(s, path, command, args)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    except TimeoutError as exc:
        raise ConnectionError(f"no reply from the daemon on {path} within {timeout:.0f} s") from exc
    finally:
        s.close()
    try:
        result = json.loads(buf)
    except (UnicodeDecodeError, json.JSONDecodeError):
        result = None
    if not isinstance(result, dict):
        raise ConnectionError(f"the daemon on {path} closed the connection without a valid reply")
    return result


def stream(
    path: str, command: str, keepalive_s: float = 1.0, **args: Any
) -> Generator[dict[str, Any], None, None]:
    """Send one request and yield the daemon's reply lines as they come (blocking;
    for the CLI). A newline goes to the daemon every `keepalive_s` to keep the
    stream alive; closing the generator ends it. Raises ConnectionError."""
    import select
    import time

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _send(s, path, command, args)
        buf = b""
        renew = time.monotonic() + keepalive_s
        while True:
            ready, _, _ = select.select([s], [], [], max(0.0, renew - time.monotonic()))
            if time.monotonic() >= renew:
                s.sendall(b"\n")
                renew = time.monotonic() + keepalive_s
            if not ready:
                continue
            chunk = s.recv(1 << 16)
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    obj = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise ConnectionError(f"the daemon on {path} sent a malformed line") from None
                if isinstance(obj, dict):
                    yield obj
    finally:
        s.close()
