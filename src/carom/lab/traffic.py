"""Traffic and captures in the lab: curl from a client, tcpdump on a node.
Shared by the demo and the integration tests."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from scapy.utils import rdpcap

from carom.lab.lab import Lab


def curl(lab: Lab, client: str, url: str, n: int = 1) -> list[str]:
    """n requests, each on a new connection; returns who served each (answers only)."""
    script = f"for i in $(seq {n}); do curl -s -g -m 3 '{url}'; echo; done"
    out = lab.exec(client, ["sh", "-c", script]).stdout
    return [line.split()[-1] for line in out.splitlines() if line.startswith("served-by")]


class Capture:
    """tcpdump on a node's carom0, started and stopped by PID."""

    def __init__(self, lab: Lab, node: str, path: Path) -> None:
        self.path = path
        # --immediate-mode: without it frames wait in the capture ring until a
        # block times out, and stopping the capture early loses them.
        self.proc = lab.popen(
            node,
            ["tcpdump", "-i", "carom0", "-nn", "--immediate-mode", "-U", "-w", str(path)],
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()  # "listening on carom0 ..."
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpdump did not start: {line}")

    def stop(self, quiet_s: float = 0.1, limit_s: float = 3.0) -> list[Any]:
        """Stop once the capture has been quiet for `quiet_s` (the last frames of
        a finished exchange, FIN and ACK, are still on their way when the client
        returns), at most `limit_s` from now; return the frames."""
        deadline = time.monotonic() + limit_s
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = self.path.stat().st_size if self.path.exists() else 0
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.02)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return list(rdpcap(str(self.path)))
