"""The active's health view drives the tables on every node (issue 10,
"Cluster"), in the lab with two real carom daemons as a cluster, TCP checks on
every service (`down_flows: keep`), 80 long-lived connections and a new
connection every 20 ms:

1. the backup's own probes to real1 are dropped (nft on dir2): its local check
   says down, its tables keep real1 (the active's view), fingerprints agree and
   it stays ready;
2. the active's probes to real2 are dropped (nft on dir1): the active takes
   real2 out and the backup's tables follow at once, although its own check
   says up;
3. the active daemon is SIGKILLed: the backup takes over with the view it
   followed (no table change at the takeover: its fingerprint is the old
   active's), then its own checks drive the tables (real1 out, real2 back);
   no long-lived flow is lost.
"""

from __future__ import annotations

import copy
import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from carom.lab import Lab
from carom.lab import topology as t
from carom.lab.failover import ClusterRun, cluster_config
from carom.lab.failover_traffic import Prober

pytestmark = [pytest.mark.root, pytest.mark.integration]

CHECK = {"kind": "tcp", "interval": 0.2, "timeout": 0.1, "rise": 2, "fall": 2}
R1, R2 = t.REALS[0], t.REALS[1]
D1, D2 = t.DIR1.name, t.DIR2.name


def block_probes(lab: Lab, director: str, real: t.Node) -> None:
    """Drop this director's own connections to the real's service ports (its
    health probes; forwarded traffic is XDP's and never meets nft)."""
    ports = f"{{ {t.HTTP_PORT}, {t.BANNER_PORT} }}"
    rules = f"""table inet carom_probes {{
  chain o {{
    type filter hook output priority 0
    ip daddr {real.main.addr4} tcp dport {ports} drop
    ip6 daddr {real.main.addr6} tcp dport {ports} drop
  }}
}}
"""
    lab.exec(director, ["nft", "-f", "-"], input=rules, check=True)


def unblock(lab: Lab, director: str) -> None:
    lab.exec(director, ["nft", "delete", "table", "inet", "carom_probes"])


@pytest.fixture(scope="module")
def run(lab: Lab) -> Iterator[ClusterRun]:
    r = ClusterRun(lab, print)
    try:
        r.start(preempt=False, check=CHECK, down_flows="keep")
        r.prober = Prober(lab, t.CLIENTS[1].name)
        r.hold(banner=20, http=20)
        yield r
    finally:
        for d in (D1, D2):
            unblock(lab, d)
        r.stop()


def real_of(run: ClusterRun, node: str, real: t.Node, service: str = "web") -> dict[str, Any]:
    st = run.dirs[node].status()
    svc = next(s for s in st["services"] if s["name"] == service)
    found: dict[str, Any] = next(r for r in svc["reals"] if r["address"] == str(real.main.addr4))
    return found


def until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def tables(run: ClusterRun, node: str) -> list[tuple[str, str, str, int, str]]:
    """What shapes a node's tables, for an assertion message."""
    st = run.dirs[node].status()
    return [
        (s["name"], s["fingerprint"], r["address"], r["weight"], r["state"])
        for s in st["services"]
        for r in s["reals"]
    ] + [("view", "", "", 0, str(st["cluster"]["health_view"]))]


def dir1_active(run: ClusterRun) -> None:
    """The tests below want dir1 active and dir2 its synced backup. On a busy
    machine a stalled daemon may have handed the role over (without preempt
    it stays there): switch back over."""
    c2 = run.cluster(D2)
    if c2["role"] == "active":
        print("dir2 is active:", [x["reason"] for x in c2["transitions"]])
        print("dir1:", [(x["from"], x["to"], x["reason"]) for x in run.cluster(D1)["transitions"]])
        assert run.dirs[D2].request("switchover")["ok"]
        run.wait_role(D1, "active")
    run.wait_role(D2, "backup", bulk=True)
    until(lambda: fingerprints(run)[0] == fingerprints(run)[1], 3, "fingerprints agree")


def fingerprints(run: ClusterRun) -> tuple[str, str]:
    return run.cluster(D1)["fingerprint"], run.cluster(D2)["fingerprint"]


def doctor(run: ClusterRun, node: str) -> dict[str, Any]:
    d = run.dirs[node]
    r = d.carom("doctor", "-c", str(d.config_path), "--json")
    report: dict[str, Any] = json.loads(r.stdout)
    return report


def test_doctor_finds_tables_that_differ_across_the_cluster(run: ClusterRun) -> None:
    """A planted mistake: real1 with weight 2 in dir2's config only."""
    dir1_active(run)
    good = cluster_config(D2, False, check=CHECK, down_flows="keep")
    bad = copy.deepcopy(good)
    web = next(s for s in bad["services"] if s["name"] == "web")
    next(r for r in web["reals"] if r["address"] == str(R1.main.addr4))["weight"] = 2
    assert run.dirs[D2].reload(bad)["ok"]
    try:
        until(lambda: not run.cluster(D1)["fingerprints_agree"], 2, "dir1 sees the mismatch")
        for node, peer in ((D2, t.DIR1.short), (D1, t.DIR2.short)):
            found = [f for f in doctor(run, node)["findings"] if f["check"] == "fingerprints"]
            assert len(found) == 1, found
            assert f"differ from {peer}'s" in found[0]["problem"], found
            assert "weight" in found[0]["fix"], found
    finally:
        assert run.dirs[D2].reload(good)["ok"]
    until(lambda: run.cluster(D1)["fingerprints_agree"], 2, "tables agree again")
    report = doctor(run, D2)
    assert not [f for f in report["findings"] if f["check"] == "fingerprints"], report
    assert any(
        p.startswith(f"fingerprints: Maglev tables equal to {t.DIR1.short}'s")
        for p in report["passed"]
    )


def test_backup_tables_follow_the_active_when_its_own_check_fails(
    run: ClusterRun, lab: Lab
) -> None:
    dir1_active(run)
    block_probes(lab, D2, R1)
    until(
        lambda: real_of(run, D2, R1)["health"]["state"] == "down", 5, "dir2's check of real1 down"
    )
    time.sleep(0.5)  # anything the backup would do about it, it has done
    mine = real_of(run, D2, R1)
    assert mine["state"] == "up" and mine["weight"] == real_of(run, D1, R1)["weight"], mine
    c2 = run.cluster(D2)
    view = c2["health_view"]
    assert view["tables_from"] == "following" and view["peer"] == t.DIR1.short, view
    assert {"service": "web", "real": str(R1.main.addr4), "local": "down", "tables": "up"} in view[
        "disagree"
    ], view
    a, b = fingerprints(run)
    assert a == b, (a, b)
    assert c2["fingerprints_agree"] and run.cluster(D1)["fingerprints_agree"]
    peer = next(p for p in run.cluster(D1)["peers"] if p["name"] == t.DIR2.short)
    assert peer["ready"], peer  # the backup can still be elected
    out = run.dirs[D2].carom("status", "--socket", run.dirs[D2].socket).stdout
    assert f"local check: web {R1.main.addr4} down, tables follow the active: up" in out, out
    assert "tables follow dir1's" in out, out
    # a drain on the backup is kept there for when it is active; its tables do not move
    sock = ("--socket", run.dirs[D2].socket)
    r3 = str(t.REALS[2].main.addr4)
    drained = run.dirs[D2].carom("real", "drain", r3, *sock)
    try:
        assert "note: this node's tables follow dir1's health view" in drained.stdout, drained
        assert real_of(run, D2, t.REALS[2])["state"] == "up"
        assert fingerprints(run)[0] == fingerprints(run)[1]
    finally:
        run.dirs[D2].carom("real", "undrain", r3, *sock)


def test_backup_takes_out_a_real_only_the_active_finds_down(run: ClusterRun, lab: Lab) -> None:
    dir1_active(run)
    block_probes(lab, D1, R2)
    until(lambda: real_of(run, D1, R2)["state"] == "down", 5, "dir1 takes real2 out")
    t0 = time.monotonic()
    until(lambda: real_of(run, D2, R2)["state"] == "down", 2, "dir2's tables follow")
    print(f"backup followed the active's view {1000 * (time.monotonic() - t0):.0f} ms later")
    mine = real_of(run, D2, R2)
    assert mine["health"]["state"] == "up", mine  # its own check disagrees
    try:
        until(lambda: fingerprints(run)[0] == fingerprints(run)[1], 1, "fingerprints agree")
    except AssertionError:
        raise AssertionError(f"tables differ:\n{tables(run, D1)}\n{tables(run, D2)}") from None
    assert run.cluster(D2)["fingerprints_agree"]


def test_takeover_keeps_the_view_then_own_checks_and_no_flow_lost(run: ClusterRun) -> None:
    dir1_active(run)
    before = fingerprints(run)
    assert before[0] == before[1]
    seen: dict[str, Any] = {}

    def kill() -> None:
        run.kill(D1, signal.SIGKILL)
        run.wait_role(D2, "active", timeout=5.0)
        c = run.cluster(D2)
        seen["at_takeover"] = (c["fingerprint"], c["health_view"]["tables_from"])
        until(
            lambda: run.cluster(D2)["health_view"]["tables_from"] == "own checks",
            5,
            "own checks drive dir2's tables",
        )
        seen["converged_after_s"] = time.monotonic()

    res = run._scenario("health view: takeover", kill, watch_s=2.0)
    assert not res.lost, "\n".join(res.lost)
    assert res.takeover_ms is not None and res.takeover_ms <= 500, res
    # no table change at the takeover: the old active's tables
    assert seen["at_takeover"] == (before[0], "inherited at takeover"), seen
    # then its own checks: real1 out (its probes are still dropped), real2 back
    assert real_of(run, D2, R1)["state"] == "down"
    assert real_of(run, D2, R2)["state"] in ("up", "slow-start")
    assert run.cluster(D2)["fingerprint"] != before[0]
