"""exec check: a command decides by its exit status.

No shell: the argv from the config is run as given, and the target reaches the
command through the environment (CAROM_REAL, CAROM_ADDRESS, CAROM_PORT), so no
config value or address is ever interpolated into a command line. The command
runs in its own session; when the probe times out or is cancelled, the whole
process group is killed by its id (a script's children too) and reaped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from carom.health.spec import EXEC_OUTPUT_CAP, CheckResult, ExecCheck, Target


def environment(target: Target) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CAROM_REAL": str(target.real),
        "CAROM_ADDRESS": str(target.address),
        "CAROM_PORT": str(target.port),
    }


async def _drain(stream: asyncio.StreamReader) -> tuple[bytes, int]:
    """Keep the first EXEC_OUTPUT_CAP bytes, discard the rest (so that a chatty
    command never blocks on a full pipe); returns (kept, total)."""
    kept = b""
    total = 0
    while chunk := await stream.read(65536):
        total += len(chunk)
        if len(kept) < EXEC_OUTPUT_CAP:
            kept += chunk[: EXEC_OUTPUT_CAP - len(kept)]
    return kept, total


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def probe(check: ExecCheck, target: Target) -> CheckResult:
    proc = await asyncio.create_subprocess_exec(
        *check.command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment(target),
        start_new_session=True,  # its own process group: killpg reaches its children
        close_fds=True,
    )
    assert proc.stdout is not None
    try:
        output, total = await _drain(proc.stdout)
        status = await proc.wait()
    finally:
        if proc.returncode is None:  # timed out or cancelled: kill, then reap
            _kill_group(proc.pid)
            with contextlib.suppress(asyncio.CancelledError, ProcessLookupError):
                await asyncio.shield(proc.wait())
    text = output.decode("utf-8", "replace").strip().splitlines()
    last = text[-1][:120] if text else ""
    more = f" ({total} bytes of output, kept {len(output)})" if total > EXEC_OUTPUT_CAP else ""
    said = f": {last}" if last else ""
    if status == 0:
        return CheckResult(ok=True, reason=f"exit 0{said}{more}")
    if status < 0:
        return CheckResult(ok=False, reason=f"killed by signal {-status}{said}{more}")
    return CheckResult(ok=False, reason=f"exit {status}{said}{more}")
