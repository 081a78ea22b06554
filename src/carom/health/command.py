"""exec check: a command decides by its exit status.

No shell: the argv from the config is run as given, and the target reaches the
command through the environment (CAROM_REAL, CAROM_ADDRESS, CAROM_PORT), so no
config value or address is ever interpolated into a command line. The command
runs in its own session; when the probe times out or is cancelled, the whole
process group is killed by its id (a script's children too) and reaped.

With `via: vip` the command runs in the probe namespace, in a cgroup whose
sockets carry the real's mark (exec_path.py), so a command that connects to
CAROM_ADDRESS (the VIP) takes that real's DSR path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess

from carom.health import exec_path
from carom.health.spec import EXEC_OUTPUT_CAP, CheckResult, ExecCheck, Target


def environment(target: Target) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CAROM_REAL": str(target.real),
        "CAROM_ADDRESS": str(target.address),
        "CAROM_PORT": str(target.port),
    }


class _Output(asyncio.SubprocessProtocol):
    """Keeps the first EXEC_OUTPUT_CAP bytes of stdout+stderr and counts the rest.
    It never pauses its pipe (extra output is dropped, not buffered), so a chatty
    command can neither fill memory nor block on a full pipe. `done` resolves
    when the process has exited and its output has all been read."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.total = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.total += len(data)
        room = EXEC_OUTPUT_CAP - len(self.kept)
        if room > 0:
            self.kept += data[:room] if isinstance(data, bytes) else data[:room].encode()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def probe(check: ExecCheck, target: Target) -> CheckResult:
    loop = asyncio.get_running_loop()
    command = list(check.command)
    if target.via is not None:  # in the real's cgroup, in the probe namespace
        command = exec_path.argv(target.via, check.command)
    transport, out = await loop.subprocess_exec(
        _Output,
        *command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment(target),
        start_new_session=True,  # its own process group: killpg reaches its children
        close_fds=True,
    )
    pid = transport.get_pid()
    try:
        # shielded: cancelling this probe must not cancel `done`, which says below
        # whether the command still runs
        await asyncio.shield(out.done)
        status = transport.get_returncode()
    finally:
        if not out.done.done():  # timed out or cancelled: kill, close, reap
            _kill_group(pid)
            transport.close()  # closes the pipes even if a stray child holds them
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(out.done), 1.0)
    assert status is not None
    output, total = bytes(out.kept), out.total
    text = output.decode("utf-8", "replace").strip().splitlines()
    last = text[-1][:120] if text else ""
    more = f" ({total} bytes of output, kept {len(output)})" if total > EXEC_OUTPUT_CAP else ""
    said = f": {last}" if last else ""
    if status == 0:
        return CheckResult(ok=True, reason=f"exit 0{said}{more}")
    if status < 0:
        return CheckResult(ok=False, reason=f"killed by signal {-status}{said}{more}")
    return CheckResult(ok=False, reason=f"exit {status}{said}{more}")
