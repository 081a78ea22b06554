"""Starting and stopping the lab's server processes, tracked by PID.

Each server node runs one `python -m carom.lab.servers` process, started inside
its namespace with `ip netns exec` (which execs, so the PID we get is the
server's). Its pid file, log and ready file live in the lab's state dir.
A process is only ever signalled after /proc/PID/cmdline shows it is still a
carom lab server: a stale pid file can never kill an unrelated process that
reused the PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import carom
from carom.lab import nodes
from carom.lab import topology as t

SERVER_MODULE = "carom.lab.servers"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ServiceState:
    """What the state dir and /proc say about one node's server process."""

    node: str  # namespace name
    pid: int | None  # from the pid file, None when there is none
    running: bool  # the PID is alive and is a carom lab server
    log: Path  # where its output goes


def pid_file(state_dir: Path, node: str) -> Path:
    return state_dir / f"{node}.pid"


def log_file(state_dir: Path, node: str) -> Path:
    return state_dir / f"{node}.log"


def ready_file(state_dir: Path, node: str) -> Path:
    return state_dir / f"{node}.ready"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (tests start servers
    from a long-lived interpreter); otherwise a zombie would look alive."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (whatever it runs)."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_lab_server(pid: int) -> bool:
    """True while the PID is alive and runs carom.lab.servers."""
    _reap(pid)
    return SERVER_MODULE in _cmdline(pid)


def read_pid(state_dir: Path, node: str) -> int | None:
    try:
        text = pid_file(state_dir, node).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def start(node: t.Node, state_dir: Path) -> int:
    """Start the servers inside the node; returns the PID (not yet ready)."""
    ready = ready_file(state_dir, node.name)
    ready.unlink(missing_ok=True)
    argv = nodes.netns_exec_argv(
        node.name,
        [sys.executable, "-m", SERVER_MODULE, "--name", node.name, "--ready-file", str(ready)],
    )
    # The same interpreter finds carom the same way even when it was imported
    # from a source tree rather than an installed package.
    env = dict(os.environ)
    src = str(Path(carom.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    with log_file(state_dir, node.name).open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C at the terminal does not reach it
        )
    pid_file(state_dir, node.name).write_text(f"{proc.pid}\n")
    return proc.pid


def wait_ready(
    node_names: Iterable[str], state_dir: Path, timeout: float = READY_TIMEOUT_S
) -> None:
    """Block until every node's servers listen; a server that died is an error."""
    waiting = set(node_names)
    deadline = time.monotonic() + timeout
    while waiting:
        for name in sorted(waiting):
            if ready_file(state_dir, name).exists():
                waiting.discard(name)
                continue
            pid = read_pid(state_dir, name)
            # alive(), not is_lab_server(): while `ip netns exec` execs the
            # interpreter, /proc/PID/cmdline can read empty for a moment.
            if pid is None or not alive(pid):
                raise nodes.LabError(f"{name}: server exited at start:\n{_tail(state_dir, name)}")
        if waiting and time.monotonic() > deadline:
            raise nodes.LabError(f"servers not ready after {timeout:.0f}s: {sorted(waiting)}")
        if waiting:
            time.sleep(0.05)


def _tail(state_dir: Path, node: str, lines: int = 15) -> str:
    try:
        text = log_file(state_dir, node).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def kill(*pids: int) -> list[int]:
    """SIGTERM lab servers, SIGKILL those that linger; all at once, so a
    teardown costs one shutdown time, not one per server. Returns the PIDs
    that were lab servers; any other PID is left alone."""
    ours = [p for p in pids if is_lab_server(p)]
    for pid in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while lingering := [p for p in ours if alive(p)]:
        if time.monotonic() > deadline:
            for pid in lingering:
                if is_lab_server(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_S
        time.sleep(0.02)
    return ours


def stop(state_dir: Path, node_names: Iterable[str]) -> None:
    """Stop nodes' servers from their pid files, and forget the files."""
    names = list(node_names)
    kill(*(pid for name in names if (pid := read_pid(state_dir, name)) is not None))
    for name in names:
        pid_file(state_dir, name).unlink(missing_ok=True)
        ready_file(state_dir, name).unlink(missing_ok=True)


def stop_strays(ns: str) -> list[int]:
    """Stop lab servers left in a namespace without a pid file (after a crash,
    or a deleted state dir). Returns the PIDs of other processes still there."""
    pids = [p for p in nodes.netns_pids(ns) if p != os.getpid()]
    ours = set(kill(*pids))
    return [p for p in pids if p not in ours]


def state(state_dir: Path, node: str) -> ServiceState:
    pid = read_pid(state_dir, node)
    return ServiceState(
        node=node,
        pid=pid,
        running=pid is not None and is_lab_server(pid),
        log=log_file(state_dir, node),
    )


def describe(pid: int) -> str:
    """A short "PID (command)" for messages about processes we leave alone."""
    cmd = " ".join(_cmdline(pid)).strip() or "?"
    return f"{pid} ({cmd[:60]})"
