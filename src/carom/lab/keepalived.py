"""keepalived drives the roles, carom follows (cluster.election: keepalived).

Each director runs one keepalived (VRRP only, VRRPv3 so adverts can be 100 ms
apart, unicast between the directors; carom owns the VIPs, keepalived only a
marker address on lo). Its notify script reports every state change to carom with `carom
cluster vrrp STATE`; carom still syncs, resyncs and refuses to go active before
it holds the connection table.

A track script makes VRRP follow carom's daemon: it waits on the daemon's PID
and fails the moment the daemon exits (so a killed daemon takes its node out of
VRRP at once instead of after keepalived's 1 s script interval), and returns
success every few seconds while it lives. Processes are started and stopped by
PID; configs, scripts and pid files live in the lab's state directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from carom.lab import topology as t
from carom.lab.lab import Lab

VRID = 51
ADVERT_S = 0.1
# keepalived wants at least one address to manage; carom owns the VIPs, so it
# gets a marker on lo (RFC 2544 benchmarking range) that nothing else uses.
MARKER = "198.18.51.1/32"


def _paths(node: str, state: Path) -> dict[str, Path]:
    return {
        "conf": state / f"{node}.keepalived.conf",
        "check": state / f"{node}.carom-alive.sh",
        "seen": state / f"{node}.carom-alive.pid",  # the daemon the script answered for
        "notify": state / f"{node}.vrrp-notify.sh",
        "pid": state / f"{node}.keepalived.pid",
        "vrrp_pid": state / f"{node}.keepalived-vrrp.pid",
        "log": state / f"{node}.keepalived.log",
    }


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o700)


def write_config(node: t.Node, priority: int, state: Path) -> Path:
    """keepalived.conf and its two scripts for one director."""
    p = _paths(node.name, state)
    pid_file = state / f"{node.name}.carom.pid"  # written by lab.director.Director
    sock = state / f"{node.name}.sock"
    _script(
        p["check"],
        f"""# carom's daemon alive? fail as soon as it exits; succeed every 9 s while it runs
pid=$(cat {pid_file} 2>/dev/null) || exit 1
kill -0 "$pid" 2>/dev/null || exit 1
# keepalived starts VRRP only once the script has answered: the first run for
# a daemon answers at once, not after 9 s
[ "$(cat {p["seen"]} 2>/dev/null)" = "$pid" ] || {{ echo "$pid" >{p["seen"]}; exit 0; }}
timeout 9 tail --pid="$pid" -f /dev/null
[ $? -eq 124 ]
""",
    )
    _script(
        p["notify"],
        f"""# keepalived notify: $1 INSTANCE|GROUP, $2 name, $3 state, $4 priority
state=$(echo "$3" | tr 'A-Z' 'a-z')
exec {sys.executable} -m carom cluster vrrp "$state" --socket {sock} >>{p["log"]} 2>&1
""",
    )
    peers = "\n".join(f"    {d.main.addr4}" for d in t.DIRECTORS if d.name != node.name)
    p["conf"].write_text(
        f"""global_defs {{
  router_id {node.short}
  vrrp_version 3
  script_user root
  enable_script_security
}}
vrrp_script carom_alive {{
  script "{p["check"]}"
  interval 1
  timeout 10
  fall 1
  rise 1
}}
vrrp_instance carom {{
  state BACKUP
  interface {node.main.ifname}
  virtual_router_id {VRID}
  priority {priority}
  advert_int {ADVERT_S}
  unicast_src_ip {node.main.addr4}
  unicast_peer {{
{peers}
  }}
  virtual_ipaddress {{
    {MARKER} dev lo
  }}
  track_script {{
    carom_alive
  }}
  notify "{p["notify"]}"
}}
"""
    )
    return p["conf"]


class Keepalived:
    """One keepalived process in a lab node."""

    def __init__(self, lab: Lab, node: t.Node, priority: int) -> None:
        self.lab = lab
        self.node = node
        self.state = Path(t.DEFAULT_STATE_DIR)
        self.priority = priority
        self.paths = _paths(node.name, self.state)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = write_config(self.node, self.priority, self.state)
        log = open(self.paths["log"], "ab")  # noqa: SIM115 (kept open for the child)
        self.proc = self.lab.popen(
            self.node.name,
            [
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--vrrp",
                "--use-file",
                str(conf),
                "--pid",
                str(self.paths["pid"]),
                "--vrrp_pid",
                str(self.paths["vrrp_pid"]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise RuntimeError(f"keepalived exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.paths["log"].read_text(errors="replace") if self.paths["log"].exists() else ""

    def stop(self) -> None:
        """SIGTERM by PID; its VRRP child goes with it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        for key in ("pid", "vrrp_pid"):
            with contextlib.suppress(OSError):
                pid = int(self.paths[key].read_text())
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"keepalived" in cmd and str(self.paths["conf"]).encode() in cmd:
                    os.kill(pid, signal.SIGTERM)
            self.paths[key].unlink(missing_ok=True)
