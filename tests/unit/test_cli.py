"""The `carom` command with bad input: a config error is its file:line message,
never a traceback, and a command that would break a running daemon refuses."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carom.cli.main import main
from carom.daemon import control

BAD = Path(__file__).parent / "config_cases" / "bad" / "too_many_vips.yaml"
MESSAGE = "services[256].vip: 300 distinct vips but limits.max_vips is 256"


def config(tmp_path: Path, socket_path: Path) -> Path:
    path = tmp_path / "carom.yaml"
    path.write_text(
        "instance: carom-harden\n"
        "interfaces: [carom-nonexist]\n"
        f"bpffs: {tmp_path / 'bpffs'}\n"
        f"control_socket: {socket_path}\n"
    )
    return path


@pytest.mark.parametrize("command", ["status", "reload", "stop", "detach", "check"])
def test_a_bad_config_is_reported_not_raised(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([command, "-c", str(BAD)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{BAD}:260: {MESSAGE}" in err
    assert "Traceback" not in err


def test_check_prints_the_maps_kernel_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, tmp_path / "c.sock")
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kernel memory for the maps: " in out  # the default limits:
    assert "conn_table         1048576 entries x  104 B =  120.0 MiB" in out
    assert "maglev             4194368 entries x    8 B =   32.0 MiB" in out


@pytest.fixture
def daemon_socket(tmp_path: Path) -> Iterator[Path]:
    """A live control socket at the config's path, as a running daemon has."""
    path = tmp_path / "run" / "c.sock"
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    async def serve() -> None:
        server = await control.serve(str(path), handler)
        ready.set()
        async with server:
            with contextlib.suppress(asyncio.CancelledError):
                await server.serve_forever()

    task = loop.create_task(serve())
    thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield path
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        loop.close()


def test_detach_refuses_while_a_daemon_answers(
    tmp_path: Path, daemon_socket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, daemon_socket)
    pins = tmp_path / "bpffs" / "carom" / "carom-harden"
    pins.mkdir(parents=True)
    (pins / "conn_table").write_text("pinned")
    rc = main(["detach", "-c", str(path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "a carom daemon is running for instance carom-harden" in err
    assert "carom stop --detach" in err
    assert (pins / "conn_table").read_text() == "pinned"  # nothing removed


def test_run_refuses_a_file_at_the_socket_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "notes.txt"
    sock.write_text("precious")
    rc = main(["run", "-c", str(config(tmp_path, sock))])
    assert rc == 1
    assert "is a regular file, not a socket; carom will not delete it" in capsys.readouterr().err
    assert sock.read_text() == "precious"
    assert not (tmp_path / "bpffs").exists()  # refused before anything was loaded
