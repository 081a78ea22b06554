"""Running carom on a lab director: start, reload, restart and stop the daemon
by PID, the way an operator (or a test) would, with its config in the lab's
state directory and its maps pinned in a bpffs the lab mounts once in the host
mount namespace (so pins survive across `ip netns exec` sessions)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from carom.bpf.loader import ensure_bpffs
from carom.daemon import control
from carom.lab import daemons
from carom.lab import topology as t
from carom.lab.lab import Lab

# The lab's bpffs: mounted once in the host mount namespace, so every
# `ip netns exec` session (each with a fresh /sys) sees the same pins.
BPFFS = t.LAB_BPFFS


def lab_config(
    node: str = "carom-dir1", services: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """A config for `node` in the lab; services default to HTTP and speaks-first
    on both VIPs, balanced over the three real servers."""
    reals4 = [{"address": str(n.main.addr4)} for n in t.REALS]
    reals6 = [{"address": str(n.main.addr6)} for n in t.REALS]
    if services is None:
        services = [
            {"name": "web", "vip": str(t.VIP4), "port": 80, "reals": reals4},
            {"name": "banner", "vip": str(t.VIP4), "port": 2525, "reals": reals4},
            {"name": "web6", "vip": str(t.VIP6), "port": 80, "reals": reals6},
        ]
    cfg: dict[str, Any] = {
        "instance": node.removeprefix("carom-"),
        "interfaces": ["carom0"],
        "bpffs": BPFFS,
        "control_socket": os.path.join(t.DEFAULT_STATE_DIR, f"{node}.sock"),
        "limits": {"conn_table_size": 65536, "persist_table_size": 16384},
        "services": services,
    }
    cfg.update(extra)
    return cfg


class Director:
    """One `carom run` process inside a lab node."""

    def __init__(self, lab: Lab, node: str = "carom-dir1") -> None:
        self.lab = lab
        self.node = node if node.startswith("carom-") else f"carom-{node}"
        state = Path(t.DEFAULT_STATE_DIR)
        self.config_path = state / f"{self.node}.yaml"
        self.log_path = state / f"{self.node}.carom.log"  # NODE.log is the lab server's
        self.socket = os.path.join(t.DEFAULT_STATE_DIR, f"{self.node}.sock")
        self.pid_path = daemons.pid_file(state, self.node)
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, cfg: dict[str, Any] | str) -> None:
        text = cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False)
        self.config_path.write_text(text)

    def carom(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a `carom` CLI command inside the director's namespace."""
        return self.lab.exec(self.node, [sys.executable, "-m", "carom", *args], check=check)

    @contextmanager
    def running(self, cfg: dict[str, Any]) -> Iterator[Director]:
        """A daemon on a fresh data plane for the block (what an earlier crashed
        run left is removed first), removed again afterwards, even on failure."""
        self.remove()
        self.start(cfg)
        try:
            yield self
        finally:
            self.remove()

    def start(self, cfg: dict[str, Any] | None = None, wait: float = 20.0) -> None:
        if cfg is not None:
            self.write_config(cfg)
        ensure_bpffs(BPFFS)
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child)
        self.proc = self.lab.popen(
            self.node,
            [sys.executable, "-m", "carom", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.pid_path.write_text(str(self.proc.pid))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"carom run exited with {self.proc.returncode}:\n{self.log()}")
            try:
                control.request(self.socket, "status", timeout=2)
                return
            except (ConnectionError, OSError, json.JSONDecodeError):
                time.sleep(0.1)
        raise RuntimeError(f"carom run did not answer within {wait}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        reply = control.request(self.socket, "status")
        assert reply["ok"], reply
        result: dict[str, Any] = reply["status"]
        return result

    def request(self, command: str, **kw: Any) -> dict[str, Any]:
        return control.request(self.socket, command, **kw)

    def reload(self, cfg: dict[str, Any] | str) -> dict[str, Any]:
        self.write_config(cfg)
        return self.request("reload")

    def stop(self, detach: bool = False, timeout: float = 10.0) -> int | None:
        """Stop the daemon by its PID (SIGTERM), or via the socket when detaching."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if detach:
                try:
                    self.request("stop", detach=True)
                except (ConnectionError, OSError):
                    self.proc.send_signal(signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self.pid_path.unlink(missing_ok=True)
        return rc

    def remove(self) -> None:
        """Stop and take the data plane off the interface, whatever state it is in."""
        self.stop(detach=True)
        if self.config_path.exists():
            self.carom("detach", "-c", str(self.config_path))
