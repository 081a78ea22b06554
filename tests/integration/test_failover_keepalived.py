"""keepalived drives the roles (VRRP between the two directors) and carom
follows (cluster.election: keepalived): scenario 1 again. The active daemon is
SIGKILLed under 200 long-lived flows and steady new connections; keepalived on
its host notices (track script on the daemon's PID) and gives up mastership,
the peer's keepalived becomes master and tells its carom, which takes over with
the synced table: 0 flows lost."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from carom.lab import Lab
from carom.lab import topology as t
from carom.lab.failover import ClusterRun
from carom.lab.failover_traffic import Prober

pytestmark = [pytest.mark.root, pytest.mark.integration]


@pytest.fixture(scope="module")
def run(lab: Lab) -> Iterator[ClusterRun]:
    if shutil.which("keepalived") is None:
        pytest.skip("keepalived is not installed (make deps installs it)")
    r = ClusterRun(lab, print)
    try:
        r.start(preempt=False, election="keepalived")
        r.prober = Prober(lab, t.CLIENTS[1].name)
        r.hold(banner=50, http=50)
        yield r
    finally:
        r.stop()


def test_keepalived_decides_and_carom_follows(run: ClusterRun) -> None:
    c1, c2 = run.cluster(t.DIR1.name), run.cluster(t.DIR2.name)
    assert c1["election"] == "keepalived" and c1["vrrp"] == "master", c1
    assert c2["vrrp"] in ("backup", None) and c2["role"] == "backup", c2
    # carom's own switchover is refused: keepalived decides
    assert not run.dirs[t.DIR1.name].request("switchover")["ok"]


def test_active_daemon_killed_keepalived_fails_over(run: ClusterRun) -> None:
    res = run.scenario_kill()
    assert not res.lost, f"{len(res.lost)} of {res.flows} lost:\n" + "\n".join(res.lost)
    c2 = run.cluster(t.DIR2.name)
    assert c2["vrrp"] == "master" and c2["role"] == "active", c2
    print(f"keepalived mode: longest time without a new connection {res.takeover_ms} ms")
