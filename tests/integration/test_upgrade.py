"""Upgrading carom to a version whose map layout changed, with live connections:
the old version runs in the lab with an older data-plane layout, real TCP
connections are held open through it, and the new version starts on its pins."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from carom.bpf.loader import ensure_bpffs
from carom.daemon import control
from carom.lab import Lab
from carom.lab import topology as t
from carom.lab.director import BPFFS, Director, lab_config
from carom.lab.failover_traffic import Held
from carom.lab.traffic import curl
from tests.integration.test_daemon import assert_same_servers
from tests.packets.oldlayout import build_old, older_layout

pytestmark = [pytest.mark.root, pytest.mark.integration]

# The previous version: today's daemon on the older object. Its structs differ
# from abi.py on purpose, so its ABI check is off; nothing else is changed.
OLD_DAEMON = """
import sys
from carom.bpf import loader
loader.object_path = lambda name="carom.bpf.o": sys.argv[1]
loader.check_abi = lambda *args: None
from carom.cli.main import main
sys.exit(main(["run", "-c", sys.argv[2]]))
"""


class OldDirector(Director):
    """`carom run` of the previous version (an older-layout object)."""

    def __init__(self, lab: Lab, obj: str) -> None:
        super().__init__(lab, "carom-dir1")
        self.obj = obj

    def start(self, cfg: dict[str, Any] | None = None, wait: float = 20.0) -> None:
        if cfg is not None:
            self.write_config(cfg)
        ensure_bpffs(BPFFS)  # in the host, so the pins outlive this process
        with open(self.log_path, "ab") as log:
            self.proc = self.lab.popen(
                self.node,
                [sys.executable, "-c", OLD_DAEMON, self.obj, str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid_path.write_text(str(self.proc.pid))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"old carom exited:\n{self.log()}"
            try:
                control.request(self.socket, "status", timeout=2)
                return
            except (ConnectionError, OSError, ValueError):
                time.sleep(0.1)
        raise RuntimeError(f"old carom did not answer within {wait}s:\n{self.log()}")


def test_restart_onto_a_new_layout_keeps_every_connection(lab: Lab, tmp_path: Path) -> None:
    old = OldDirector(lab, build_old(tmp_path, older_layout))
    new = Director(lab, "carom-dir1")
    old.remove()  # whatever an earlier test left
    old.start(lab_config())
    hold: Held | None = None
    try:
        hold = Held(lab, "client1", banner=16, http=16)
        servers = Counter(c["server"] for c in hold.conns)
        assert "carom-real3" in servers and len(servers) == 3, servers
        assert_same_servers(hold, "on the old version")
        forwarded = old.status()["counters"]["tx_dsr"]
        assert old.stop() == 0  # no detach: the old program keeps forwarding
        assert_same_servers(hold, "between the versions")

        # The new version starts with real3 gone from the config: connections on
        # real3 can only stay there through their carried connection entries.
        cfg = lab_config()
        for svc in cfg["services"][:2]:
            svc["reals"] = [{"address": str(n.main.addr4)} for n in t.REALS[:2]]
        log_before = len(new.log())
        new.start(cfg)
        upgrade_log = new.log()[log_before:]
        assert "pinned maps have an older layout" in upgrade_log, upgrade_log
        assert "layout migration finished" in upgrade_log, upgrade_log
        st = new.status()
        assert st["adopted"]
        assert st["counters"]["tx_dsr"] >= forwarded, "counters are carried over"
        assert_same_servers(hold, "after the upgrade")
        fresh = Counter(curl(lab, "client2", f"http://{t.VIP4}/", 20))
        assert "carom-real3" not in fresh and fresh.total() == 20, fresh

        # The pins are in the new layout now: the next restart just adopts them.
        assert new.stop() == 0
        log_before = len(new.log())
        new.start()
        assert "older layout" not in new.log()[log_before:]
        assert_same_servers(hold, "after a second restart")
    finally:
        if hold is not None:
            hold.close()
        new.remove()
        old.remove()
