"""The control socket treats every request as untrusted: bounded in size and in
time, checked against the table of commands, answered with one line. And it never
removes a file that is not its own socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from carom.daemon import control


def run_server(
    path: Path, client: Callable[[], Any], handler: control.Handler | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """Serve on `path`, run the blocking `client` in a thread, return its result
    and the requests the handler saw."""
    seen: list[dict[str, Any]] = []

    async def echo(req: dict[str, Any]) -> dict[str, Any]:
        seen.append(req)
        return {"ok": True, "command": req["command"]}

    async def main() -> Any:
        server = await control.serve(str(path), handler or echo)
        async with server:
            return await asyncio.get_running_loop().run_in_executor(None, client)

    return asyncio.run(main()), seen


def raw(path: Path, data: bytes, shut: bool = True) -> dict[str, Any]:
    """Send raw bytes, read the one-line reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    finally:
        s.close()
    assert buf.count(b"\n") == 1 and buf.endswith(b"\n"), buf
    reply: dict[str, Any] = json.loads(buf)
    return reply


# --- the socket path ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
def test_never_deletes_what_is_not_a_socket(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "carom.sock"
    if kind == "file":
        path.write_text("precious")
    elif kind == "directory":
        path.mkdir()
    else:
        (tmp_path / "target").write_text("precious")
        path.symlink_to(tmp_path / "target")

    async def main() -> None:
        await control.serve(str(path), _never)

    with pytest.raises(control.SocketPathError, match="not a socket; carom will not delete it"):
        asyncio.run(main())
    assert os.path.lexists(path)
    if kind == "file":
        assert path.read_text() == "precious"
    control.remove_socket(str(path))  # nor at shutdown
    assert os.path.lexists(path)


def test_a_stale_socket_is_replaced_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "carom.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: what a killed daemon leaves
    stale.close()
    reply, _ = run_server(path, lambda: control.request(str(path), "status"))
    assert reply == {"ok": True, "command": "status"}

    async def twice() -> None:
        server = await control.serve(str(path), _never)
        async with server:
            await control.serve(str(path), _never)

    with pytest.raises(control.SocketPathError, match="another carom daemon is answering"):
        asyncio.run(twice())


async def _never(req: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError(f"the handler must not see {req}")


# --- requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello\n", "malformed request: not JSON"),
        (b"\xff\xfe\n", "malformed request: not JSON"),
        (b"[1, 2]\n", "malformed request: expected an object"),
        (b'{"command": "format-disk"}\n', "unknown command 'format-disk'; the commands are"),
        (b'{"command": 7}\n', "unknown command 7"),
        (b'{"command": "explain", "client": "192.0.2.1:1"}\n', "explain: missing argument service"),
        (b'{"command": "stop", "detach": "yes"}\n', "stop: detach must be bool, not str"),
        (b'{"command": "status", "x": 1}\n', "status: unknown argument 'x'"),
        (b"[" * 100000 + b"\n", "request larger than 65536 bytes"),
        (b'{"command": "status"}', "incomplete request"),
    ],
    ids=[
        "text",
        "binary",
        "list",
        "unknown",
        "command-number",
        "missing-arg",
        "bad-type",
        "extra-arg",
        "too-big",
        "no-newline",
    ],
)
def test_malformed_requests_get_one_line_and_never_reach_the_daemon(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "c.sock"

    def client() -> tuple[dict[str, Any], dict[str, Any]]:
        return raw(path, data), control.request(str(path), "status")

    (bad, after), seen = run_server(path, client)
    assert bad["ok"] is False and bad["error"].startswith(message), bad
    assert "\n" not in bad["error"] and "Traceback" not in bad["error"]
    assert after == {"ok": True, "command": "status"}  # still serving
    assert seen == [{"command": "status"}]


def test_a_silent_client_is_dropped_and_others_are_served_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 0.5)
    path = tmp_path / "c.sock"

    def client() -> tuple[dict[str, Any], dict[str, Any]]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b'{"command": "sta')  # and then nothing
        served = control.request(str(path), "status")  # not blocked by the silent one
        buf = b""
        while chunk := s.recv(4096):
            buf += chunk
        s.close()
        return json.loads(buf), served

    (silent, served), _ = run_server(path, client)
    assert served == {"ok": True, "command": "status"}
    assert silent == {"ok": False, "error": "no complete request within 0.5 s"}


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (ValueError("'x:1': expected ADDRESS:PORT\n(IPv6 as [ADDRESS]:PORT)"), "'x:1': expected"),
        (KeyError("client"), "internal error (KeyError: 'client'); the daemon log has the details"),
    ],
)
def test_handler_failures_are_one_line(
    tmp_path: Path, exc: Exception, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sock"

    async def failing(req: dict[str, Any]) -> dict[str, Any]:
        raise exc

    def client() -> tuple[dict[str, Any], dict[str, Any]]:
        return control.request(str(path), "status"), control.request(str(path), "reload")

    (first, second), _ = run_server(path, client, failing)
    assert first == second
    assert first["ok"] is False and first["error"].startswith(message)
    assert "\n" not in first["error"]


def test_cli_side_reports_a_dead_or_broken_daemon_in_words(tmp_path: Path) -> None:
    path = tmp_path / "nobody.sock"
    with pytest.raises(ConnectionError, match="no carom daemon is answering"):
        control.request(str(path), "status")

    async def main() -> Any:
        async def closer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readline()
            w.write(b"not json\n")
            w.close()

        server = await asyncio.start_unix_server(closer, path=str(path))
        async with server:
            loop = asyncio.get_running_loop()
            with pytest.raises(ConnectionError, match="without a valid reply"):
                await loop.run_in_executor(None, lambda: control.request(str(path), "status"))

    asyncio.run(main())


def test_the_command_table_matches_what_the_daemon_handles() -> None:
    """A command the daemon handles but the table lacks would be refused before
    it gets there (and the reverse would reach `unknown command`): keep them equal."""
    import ast

    from carom.daemon import app

    tree = ast.parse(Path(app.__file__).read_text())
    handle = next(
        n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == "handle"
    )
    handled = {
        c.comparators[0].value
        for c in ast.walk(handle)
        if isinstance(c, ast.Compare)
        and isinstance(c.left, ast.Name)
        and c.left.id == "cmd"
        and isinstance(c.comparators[0], ast.Constant)
    }
    from carom.daemon import health_task  # handle() passes these on to it

    assert handled | set(health_task.COMMANDS) == set(control.COMMANDS)


# --- streams (carom trace) -----------------------------------------------------------


def _streaming(closed: list[str], keepalive_s: float) -> control.Handler:
    """A handler whose stream sends a counter every 50 ms until it is cancelled."""

    async def handler(req: dict[str, Any]) -> dict[str, Any] | control.Stream:
        async def pump(send: control.Send) -> None:
            n = 0
            while True:
                await send({"n": n})
                n += 1
                await asyncio.sleep(0.05)

        return control.Stream({"ok": True}, pump, keepalive_s, lambda: closed.append("x"))

    return handler


def test_a_stream_lasts_while_its_client_renews_and_ends_with_it(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    closed: list[str] = []

    def client() -> list[dict[str, Any]]:
        got = []
        replies = control.stream(str(path), "status", keepalive_s=0.1)
        for msg in replies:  # longer than the keepalive: renewals keep it going
            got.append(msg)
            if len(got) == 12:
                break
        replies.close()
        return got

    got, _ = run_server(path, client, _streaming(closed, keepalive_s=0.3))
    assert got[0] == {"ok": True} and [m["n"] for m in got[1:]] == list(range(11))
    assert closed == ["x"]  # the client went: the stream's close ran


def test_a_silent_stream_client_is_ended_after_its_keepalive(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    closed: list[str] = []

    def client() -> tuple[int, float]:
        import time

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b'{"command": "status"}\n')  # and never a renewal
        t0, buf = time.monotonic(), b""
        while chunk := s.recv(65536):
            buf += chunk
        s.close()
        return buf.count(b"\n"), time.monotonic() - t0

    (lines, took), _ = run_server(path, client, _streaming(closed, keepalive_s=0.5))
    assert closed == ["x"] and 0.4 < took < 3.0 and lines >= 5
