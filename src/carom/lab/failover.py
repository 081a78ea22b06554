"""Failover in the lab, with real TCP: both directors run carom as a cluster and
are real servers too; long-lived connections (server-speaks-first and HTTP
keep-alive, spread over all five reals) and a steady stream of new ones go
through the scenarios of docs/cluster.md, and every lost connection is listed.

Used by tests/integration/test_failover.py and `carom lab failover`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carom.config.cluster import DEFAULT_PORT
from carom.lab import topology as t
from carom.lab.director import Director, lab_config
from carom.lab.failover_traffic import ForwarderWatch, Held, Prober
from carom.lab.lab import Lab

PRIORITY = {t.DIR1.name: 200, t.DIR2.name: 100}
HEARTBEAT_MS = 100
DEAD_AFTER = 3


def key_path(state_dir: str | Path = t.DEFAULT_STATE_DIR) -> Path:
    return Path(state_dir) / "cluster.key"


def write_key(state_dir: str | Path = t.DEFAULT_STATE_DIR) -> Path:
    """The shared HMAC key, mode 0600 (the config refuses anything else)."""
    path = key_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32).hex().encode())
    os.chmod(path, 0o600)
    return path


def cluster_config(
    node: str, preempt: bool = True, election: str = "builtin", **service: Any
) -> dict[str, Any]:
    """The config of one director: every service balanced over the three reals
    and both directors (each director's own entry is `local`), and the cluster
    section. The same file on both directors but for `node` and `local`.
    `service`: more fields for every service (a health check, down_flows)."""

    def reals(v6: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for n in (*t.REALS, *t.DIRECTORS):
            r: dict[str, Any] = {"address": str(n.main.addr6 if v6 else n.main.addr4)}
            if n.name == node:
                r["local"] = True
            out.append(r)
        return out

    services = [
        {"name": "web", "vip": str(t.VIP4), "port": t.HTTP_PORT, "reals": reals(False)},
        {"name": "banner", "vip": str(t.VIP4), "port": t.BANNER_PORT, "reals": reals(False)},
        {"name": "web6", "vip": str(t.VIP6), "port": t.HTTP_PORT, "reals": reals(True)},
    ]
    for svc in services:
        svc.update(service)
    members = [
        {
            "name": d.short,
            "id": i + 1,
            "priority": PRIORITY[d.name],
            "addresses": [str(d.main.addr4)],
        }
        for i, d in enumerate(t.DIRECTORS)
    ]
    cluster = {
        "node": node.removeprefix("carom-"),
        "members": members,
        "key_file": str(key_path()),
        "heartbeat_ms": HEARTBEAT_MS,
        "dead_after": DEAD_AFTER,
        "preempt": preempt,
        "election": election,
    }
    return lab_config(node, services=services, cluster=cluster)


@dataclass
class Result:
    """One scenario's outcome."""

    name: str
    flows: int  # long-lived connections that went through it
    lost: list[str] = field(default_factory=list)  # each lost one, described
    takeover_ms: float | None = None  # longest time without a new connection served
    failed_new: int = 0  # new connections that failed during it
    two_forwarders_s: float | None = None  # longest time both directors scheduled traffic
    peer_active_ms: float | None = None  # scenario 1: kill -> the peer reports itself active
    notes: list[str] = field(default_factory=list)


class ClusterRun:
    """Two directors as a cluster in the lab, and the scenarios."""

    def __init__(self, lab: Lab, say: Callable[[str], None] = lambda _: None) -> None:
        self.lab = lab
        self.say = say
        self.dirs = {d.name: Director(lab, d.name) for d in t.DIRECTORS}
        self.held: list[Held] = []
        self.prober: Prober | None = None
        self.keepalived: list[Any] = []  # lab.keepalived.Keepalived, in keepalived mode
        self.saw_down: set[str] = (
            set()
        )  # scenario 2: the dead host's reals, as the peer marked them

    # --- directors ----------------------------------------------------------------------
    def cluster(self, node: str) -> dict[str, Any]:
        st = self.dirs[node].status()
        c: dict[str, Any] = st["cluster"]
        return c

    def wait_role(self, node: str, role: str, timeout: float = 15.0, bulk: bool = False) -> None:
        deadline = time.monotonic() + timeout
        c: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                c = self.cluster(node)
                if c["role"] == role and (not bulk or c["bulk"]["done"]):
                    return
            except (ConnectionError, OSError, AssertionError):
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"{node} did not become {role} in {timeout}s: {c}\n{self.dirs[node].log()[-3000:]}"
        )

    def start(self, preempt: bool = True, election: str = "builtin", **service: Any) -> None:
        """Both directors up, dir1 active and dir2 synced; `service`: more fields
        for every service (see cluster_config)."""
        write_key()
        for d in self.dirs.values():
            d.remove()
        d1, d2 = t.DIR1.name, t.DIR2.name
        self.dirs[d1].start(cluster_config(d1, preempt, election, **service))
        if election == "builtin":
            self.wait_role(d1, "active")
        else:
            self.wait_role(d1, "backup")  # keepalived has not spoken yet
        self.dirs[d2].start(cluster_config(d2, preempt, election, **service))
        self.wait_role(d2, "backup", bulk=True)
        if election == "keepalived":
            from carom.lab.keepalived import Keepalived

            for node in t.DIRECTORS:
                k = Keepalived(self.lab, node, PRIORITY[node.name])
                self.keepalived.append(k)
                k.start()
            self.wait_role(d1, "active", timeout=10.0)
        self.say(f"cluster up: {t.DIR1.short} active, {t.DIR2.short} backup (synced)")

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        d = self.dirs[node]
        assert d.proc is not None
        d.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            d.proc.wait()
            d.proc = None
            d.pid_path.unlink(missing_ok=True)

    def stop(self) -> None:
        for k in self.keepalived:
            k.stop()
        for h in self.held:
            h.close()
        if self.prober:
            self.prober.close()
        for d in self.dirs.values():
            d.remove()

    # --- traffic ------------------------------------------------------------------------
    def hold(self, banner: int, http: int) -> list[Held]:
        new = [Held(self.lab, c.name, banner, http) for c in t.CLIENTS]
        self.held += new
        return new

    def servers(self) -> Counter[str]:
        return Counter(c["server"] for h in self.held for c in h.conns)

    def ping_for(self, seconds: float, every: float = 0.1) -> None:
        end = time.monotonic() + seconds
        while True:
            for h in self.held:
                h.ping()
            if time.monotonic() >= end:
                return
            time.sleep(every)

    def lost(self) -> list[str]:
        return [x for h in self.held for x in h.lost()]

    def _scenario(
        self, name: str, act: Callable[[], None], watch_s: float = 3.0, ping_during: bool = False
    ) -> Result:
        """Run `act` under the long-lived flows (pinged every 100 ms during it
        too with `ping_during`, else only before and after) and the prober."""
        before = set(self.lost())
        flows = sum(len(h.conns) - len(h.failed) for h in self.held)
        self.ping_for(0.3)
        at = time.monotonic()
        if ping_during:
            stop = threading.Event()

            def ping() -> None:
                while not stop.is_set():
                    for h in self.held:
                        h.ping()
                    stop.wait(0.1)

            pinger = threading.Thread(target=ping, name="pings", daemon=True)
            pinger.start()
            try:
                act()
            finally:
                stop.set()
                pinger.join()
        else:
            act()
        self.ping_for(watch_s)
        lost = [x for x in self.lost() if x not in before]
        res = Result(name, flows, lost)
        if self.prober is not None:
            res.takeover_ms, res.failed_new = self.prober.outage_ms(at, time.monotonic())
        self.say(
            f"{name}: {flows} long-lived flows, {len(lost)} lost; longest time without a new "
            f"connection {res.takeover_ms} ms ({res.failed_new} new connections failed)"
        )
        for x in lost:
            self.say(f"  LOST {x}")
        return res

    # --- the scenarios --------------------------------------------------------------------
    def scenario_kill(self) -> Result:
        """1: the active daemon is SIGKILLed (its host stays up)."""
        became: list[float] = []

        def kill() -> None:
            t0 = time.monotonic()
            self.kill(t.DIR1.name)
            self.wait_role(t.DIR2.name, "active", timeout=5.0)
            # when the daemon took the role, by its own clock (the same
            # CLOCK_MONOTONIC): a status reply that is slow to come back must
            # not pass for a slow election
            seen = time.monotonic()
            last = self.cluster(t.DIR2.name)["transitions"][-1]
            ago = last["ago_ms"] / 1000 if last["to"] == "active" and last["ago_ms"] else 0.0
            became.append((seen - ago - t0) * 1000)
            if became[-1] > 500:  # for whoever reads a failed run: what dir2 logged
                tail = self.dirs[t.DIR2.name].log().splitlines()[-25:]
                self.say("  dir2's log after a slow takeover:\n    " + "\n    ".join(tail))

        res = self._scenario("1 active daemon SIGKILLed", kill, watch_s=3.0)
        res.peer_active_ms = round(became[0]) if became else None
        res.notes.append(
            f"{t.DIR2.short} reported itself active {res.peer_active_ms} ms after the kill"
        )
        self.say(f"  {res.notes[-1]}")
        return res

    def scenario_return(self) -> Result:
        """3: the old active's daemon comes back: bulk resync, then (preempt) takeover."""
        d1 = t.DIR1.name

        def back() -> None:
            self.dirs[d1].start()
            self.wait_role(d1, "active", timeout=20.0, bulk=True)

        res = self._scenario("3 old active returns", back, watch_s=2.0)
        bulk = self.cluster(d1)["bulk"]
        res.notes.append(
            f"bulk resync: {bulk['records']} records in {bulk['seconds']} s, "
            f"{bulk['skipped_newer']} superseded by the stream"
        )
        self.say(f"  {res.notes[-1]}")
        return res

    def scenario_host_down(self, active: str, down_s: float = 3.0) -> Result:
        """2: the active host's links go down (the host is gone for the network):
        only the flows served by that host may be lost, each one listed; then the
        link comes back and the host rejoins as a backup after its resync."""
        dead = self.dirs[active]
        other = next(n for n in self.dirs if n != active)
        on_dead = f" on {active}:"  # in every lost flow's description: the real it was on

        def cut() -> None:
            self.lab.exec(active, ["ip", "link", "set", "carom0", "down"], check=True)
            self.wait_role(other, "active", timeout=5.0)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and not self.saw_down:
                self.saw_down = set(self.cluster(other)["peer_hosts_down"])
                time.sleep(0.1)

        res = self._scenario("2 active host's link down", cut, watch_s=down_s)
        unexplained = [x for x in res.lost if on_dead not in x]
        explained = len(res.lost) - len(unexplained)
        res.notes.append(
            f"{explained} lost flows were served by {active} (a dead host: expected), "
            f"{len(unexplained)} unexplained"
        )
        self.say(f"  {res.notes[-1]}")
        res.lost = unexplained
        self.lab.exec(active, ["ip", "link", "set", "carom0", "up"], check=True)
        # the link took its IPv6 address (keep_addr_on_down is off) and the routes
        # through it: back as the lab built them
        node = t.node(active)
        self.lab.exec(
            active,
            ["ip", "-6", "addr", "replace", f"{node.main.addr6}/64", "dev", "carom0", "nodad"],
        )
        seg = t.SERVER_SEGMENT
        for fam, gw in (("-4", t.gateway4(seg)), ("-6", t.gateway6(seg))):
            self.lab.exec(active, ["ip", fam, "route", "replace", "default", "via", str(gw)])
        self.wait_role(active, "backup", timeout=15.0, bulk=True)
        if dead.proc is None or dead.proc.poll() is not None:
            raise RuntimeError(f"the daemon on {active} did not survive its link going down")
        return res

    def scenario_sync_cut(self, cut_s: float = 3.0) -> Result:
        """5a: the directors cannot hear each other (heartbeat and sync port
        dropped on dir2) while both stay up: the backup may take over for a
        moment, must stand down when the better-ranked active answers for the
        VIPs, and the two never both forward for more than a second."""
        d2 = t.DIR2.name
        p = DEFAULT_PORT
        rules = f"""table inet carom_cut {{
  chain i {{
    type filter hook input priority 0
    udp dport {p} drop
    udp sport {p} drop
    tcp dport {p} drop
    tcp sport {p} drop
  }}
  chain o {{
    type filter hook output priority 0
    udp dport {p} drop
    tcp dport {p} drop
  }}
}}
"""
        watch = ForwarderWatch()

        def cut() -> None:
            self.lab.exec(d2, ["nft", "-f", "-"], input=rules, check=True)
            try:
                time.sleep(cut_s)
            finally:
                self.lab.exec(d2, ["nft", "delete", "table", "inet", "carom_cut"], check=True)

        try:
            res = self._scenario("5a sync link cut", cut, watch_s=2.0)
        finally:
            res_two = watch.stop()
        res.two_forwarders_s = res_two
        self.say(f"  both directors forwarded for at most {res.two_forwarders_s} s")
        return res

    def scenario_freeze(self, active: str, frozen_s: float = 2.0) -> Result:
        """5b: the active daemon is frozen (SIGSTOP) and thawed: the peer takes
        over; the frozen node's data plane stops within its lease; thawed, it
        knows it stalled, goes FAULT and resyncs before it may be active again."""
        d = self.dirs[active]
        assert d.proc is not None
        watch = ForwarderWatch()

        def freeze() -> None:
            assert d.proc is not None
            d.proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(frozen_s)
            finally:
                d.proc.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:  # thawed: FAULT, resync, then backup
                c = self.cluster(active)  # (or active again, if it preempts)
                stalled = any("stalled" in x["reason"] for x in c["transitions"])
                if stalled and c["bulk"]["done"] and c["role"] in ("backup", "active"):
                    return
                time.sleep(0.05)
            raise RuntimeError(f"{active} did not resync after the thaw: {c}")

        try:
            res = self._scenario("5b active daemon frozen (SIGSTOP), thawed", freeze, watch_s=2.0)
        finally:
            res_two = watch.stop()
        res.two_forwarders_s = res_two
        self.say(f"  both directors forwarded for at most {res.two_forwarders_s} s")
        return res

    def scenario_restart_both(self, gap_s: float = 0.4, reboot: bool = True) -> Result:
        """5c: both directors restarted within `gap_s` (< 0.5 s), as a reboot
        leaves them: daemons killed, data planes gone (empty connection
        tables), VIPs off lo; the flows are pinged throughout. With `reboot`
        False (5d) only the daemons restart: they adopt their data planes,
        connection tables included, and the VIPs stay on lo. No director
        forwards until the new active is elected; the router keeps sending
        to the old active, whose stack (5c: no VIP yet) drops what it gets,
        or (5d) whose data plane holds every frame its stack would reset
        (bpf/hold.h: lease run out, then role UNDECIDED until an active is
        known), and the clients retransmit; every flow keeps its entry, so
        none is expected lost. With empty tables on both (5c), a flow
        survives only if Maglev sends it to the real it was on: it does
        whenever the tables equal those before the restart. A flow that moved while the
        tables differ is explained ("never synced and table changed"), and so
        is, after a reboot, a flow served by a restarted director itself (its
        host restarted: in the lab its server lives on, but its VIP was gone
        for seconds, and the server's own retransmissions may come too late
        for the client's 5 s); any other loss is not."""
        active = next(n for n in self.dirs if self.cluster(n)["role"] == "active")
        other = next(n for n in self.dirs if n != active)
        fp_before = self.cluster(active)["fingerprint"]
        watch = ForwarderWatch()
        started: dict[str, float] = {}
        errors: list[BaseException] = []

        def start(node: str) -> None:
            started[node] = time.monotonic()
            try:
                self.dirs[node].start()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        def restart() -> None:
            for node in (active, other):
                self.kill(node)
            # what a reboot loses, the VIPs first: a data plane gone while the
            # VIP is still on lo would let the stack reset every flow it gets
            for node in (active, other) if reboot else ():
                self.lab.exec(node, ["ip", "addr", "del", f"{t.VIP4}/32", "dev", "lo"])
                self.lab.exec(node, ["ip", "-6", "addr", "del", f"{t.VIP6}/128", "dev", "lo"])
            for node in (active, other) if reboot else ():
                self.dirs[node].carom("detach", "-c", str(self.dirs[node].config_path))
            threads = [threading.Thread(target=start, args=(n,)) for n in (active, other)]
            threads[0].start()
            time.sleep(gap_s)
            threads[1].start()
            for th in threads:
                th.join()
            if errors:
                raise errors[0]
            deadline = time.monotonic() + 15.0
            roles: dict[str, str] = {}
            while time.monotonic() < deadline:
                roles = {n: self.cluster(n)["role"] for n in self.dirs}
                if sorted(roles.values()) == ["active", "backup"]:
                    return
                time.sleep(0.05)
            raise RuntimeError(f"no active and backup after the restart: {roles}")

        try:
            name = "5c both directors restarted" if reboot else "5d both daemons restarted"
            res = self._scenario(name, restart, 3.0, ping_during=True)
        finally:
            res_two = watch.stop()
        res.two_forwarders_s = res_two
        gap = abs(started[other] - started[active])
        now_active = next(n for n in self.dirs if self.cluster(n)["role"] == "active")
        fp_after = self.cluster(now_active)["fingerprint"]
        same = fp_after == fp_before
        explained = [x for x in res.lost if not same and ": moved to " in x]
        on_host = [
            x
            for x in res.lost
            if reboot and x not in explained and (f" on {active}:" in x or f" on {other}:" in x)
        ]
        res.lost = [x for x in res.lost if x not in explained and x not in on_host]
        res.notes.append(
            f"restarted {gap:.2f} s apart, {now_active} active after; tables "
            f"{'equal to' if same else 'DIFFERENT from'} those before; both forwarded for at "
            f"most {res.two_forwarders_s} s; lost: {len(explained)} moved with the tables, "
            f"{len(on_host)} served by a restarted director itself (explained), "
            f"{len(res.lost)} unexplained"
        )
        self.say(f"  {res.notes[-1]}")
        return res

    def scenario_switchover(self) -> Result:
        """4: planned switchover from the active to the backup."""
        d1, d2 = t.DIR1.name, t.DIR2.name

        def switch() -> None:
            r = self.dirs[d1].request("switchover")
            if not r.get("ok"):
                raise RuntimeError(f"switchover refused: {r}")
            self.wait_role(d2, "active", timeout=5.0)

        return self._scenario("4 planned switchover", switch, watch_s=2.0)


def run_failover(say: Callable[[str], None] = print, keep: bool = False) -> int:
    """`carom lab failover`: scenarios 1, 3 and 4 in a fresh lab."""
    lab = Lab()
    lab.up()
    run = ClusterRun(lab, say)
    try:
        run.start(preempt=True)
        run.prober = Prober(lab, t.CLIENTS[1].name)
        run.hold(banner=50, http=50)
        say(f"long-lived flows by server: {dict(sorted(run.servers().items()))}")
        s1 = run.scenario_kill()
        run.hold(banner=25, http=25)  # established while the backup is active
        s3 = run.scenario_return()
        s4 = run.scenario_switchover()
        held = sum(len(h.conns) for h in run.held)
        lost = len(set(run.lost()))
        say(
            f"failover: held={held - lost} lost={len(s1.lost)} takeover_ms={s1.takeover_ms:.0f} "
            f"failback_lost={len(s3.lost)} switchover_lost={len(s4.lost)}"
        )
        say(
            "(takeover_ms: the longest time no new connection was served after the kill; "
            f"the backup reported itself active after {s1.peer_active_ms} ms)"
        )
        ok = not (s1.lost or s3.lost or s4.lost) and (s1.takeover_ms or 0) <= 500
        return 0 if ok else 1
    finally:
        run.stop()
        if not keep:
            lab.down()
