"""The carom daemons the lab started, by their pid files in the lab's state
directory. Kept apart from director.py (which drives one daemon through a Lab)
so that the lab can stop them at `lab down` without importing the director."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from carom.lab import topology as t

PID_SUFFIX = ".carom.pid"


def pid_file(state_dir: str | Path, node: str) -> Path:
    """Where the daemon of `node` records its PID."""
    return Path(state_dir) / f"{node}{PID_SUFFIX}"


def stop_daemons(state_dir: str | Path = t.DEFAULT_STATE_DIR) -> list[int]:
    """SIGTERM every carom daemon the lab started (pid files), checking each PID is
    still a `carom run` before signalling it. Used by `lab down`."""
    stopped = []
    for path in Path(state_dir).glob(f"*{PID_SUFFIX}"):
        try:
            pid = int(path.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if b"carom" in cmdline and b"run" in cmdline:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        path.unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    for pid in stopped:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
    return stopped
