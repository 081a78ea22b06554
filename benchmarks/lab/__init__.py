"""Helpers shared by the lab benchmark parts (2 forwarding rate, 3 real TCP):
bounded subprocesses, namespaces that are always `carom*`, processes stopped by
their own PID (or process group), and the small C helpers built at run time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).parent
PREFIX = "carom"
CLANG_BPF = "clang -O2 -g -target bpf -Wall -Werror -I/usr/include/x86_64-linux-gnu"


def sh(
    argv: Sequence[str], *, timeout: float = 30.0, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one command, bounded in time; a failure names the command and its stderr."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, argv: Sequence[str] | str) -> list[str]:
    """The argv running a command (a list, or a string split on spaces) in a namespace."""
    return ["ip", "netns", "exec", ns, *(argv.split() if isinstance(argv, str) else argv)]


def ip(ns: str, args: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip -n NS ARGS...`: the namespace is mandatory, so the host is never touched."""
    return sh(["ip", "-n", ns, *args.split(), *extra], check=check)


def add_netns(ns: str) -> None:
    if not ns.startswith(f"{PREFIX}-"):
        raise ValueError(f"refusing to create namespace {ns!r}: not a carom name")
    sh(["ip", "netns", "add", ns])
    sh(["ip", "-n", ns, "link", "set", "lo", "up"])


def del_netns(ns: str) -> None:
    """Delete one of our namespaces (its veths go with it)."""
    if not ns.startswith(f"{PREFIX}-"):
        raise ValueError(f"refusing to delete namespace {ns!r}: not a carom name")
    if Path("/run/netns", ns).exists():
        sh(["ip", "netns", "del", ns], check=False)


def build_shim(out_dir: Path) -> Path:
    """The trafgen send-buffer shim (see sndbuf_shim.c), built with cc."""
    out = out_dir / "sndbuf_shim.so"
    sh(
        ["cc", "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "sndbuf_shim.c"), "-ldl"],
        timeout=60,
    )
    return out


def build_bpf(name: str, out_dir: Path) -> Path:
    """Compile benchmarks/lab/NAME.bpf.c into out_dir with clang."""
    out = out_dir / f"{name}.bpf.o"
    sh(
        [*CLANG_BPF.split(), "-c", str(HERE / f"{name}.bpf.c"), "-o", str(out)],
        timeout=60,
    )
    return out


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, wait: float = 5.0) -> None:
    """Stop a process we started in its own session (start_new_session=True):
    signal its process group, then SIGKILL the group if it does not exit."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def schedstat_ns(pid: int) -> int:
    """Time a task has run on a CPU, in ns (/proc/PID/schedstat, precise)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def cpu_ticks() -> dict[str, list[int]]:
    """/proc/stat per-CPU lines: user nice system idle iowait irq softirq steal ..."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            out[name] = [int(v) for v in vals]
    return out


def kthreads(prefix: str) -> list[int]:
    """PIDs of kernel threads whose name starts with prefix (e.g. napi/carom-d0-)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(prefix):
            pids.append(int(d.name))
    return pids


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def stop_carom(proc: subprocess.Popen[bytes], socket: str, config: str, ns: str) -> None:
    """End a `carom run` the benchmark started: `stop --detach` over its socket
    (XDP off, pins removed); if that fails, by PID, then `carom detach` in its
    namespace so nothing stays attached."""
    from carom.daemon import control

    if proc.poll() is not None:
        return
    try:
        control.request(socket, "stop", detach=True, timeout=5)
        proc.wait(15)
    except (OSError, ConnectionError, ValueError, subprocess.TimeoutExpired):
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        detach = [sys.executable, "-m", "carom", "detach", "-c", config]
        sh(in_ns(ns, detach), check=False, timeout=30)
