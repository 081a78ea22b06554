"""VIP ownership for real: the router of the lab resolves the VIPs through
carom's XDP ARP/NDP responder, takes the director's announcements, and stops
getting answers the moment the daemon is frozen or not active. Every node of the
lab carries the VIPs on lo (arp_ignore), so only carom can answer for them."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from carom.lab import Lab, nodes
from carom.lab import topology as t
from carom.lab.director import Director, lab_config
from carom.lab.traffic import curl

pytestmark = [pytest.mark.root, pytest.mark.integration]

DIR1_MAC = t.DIR1.main.mac
ROUTER_IF = t.ROUTER.main.ifname


@pytest.fixture(scope="module")
def director(lab: Lab) -> Iterator[Director]:
    with Director(lab, "carom-dir1").running(lab_config()) as d:
        yield d


def _forget(lab: Lab) -> None:
    for vip in t.VIPS:
        lab.exec("router", ["ip", "neigh", "flush", "to", str(vip)])


def _ping(lab: Lab, vip: object) -> bool:
    return lab.exec("router", ["ping", "-c1", "-W1", str(vip)]).returncode == 0


def _wait(cond: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `cond` held, or None if it never did within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def test_router_resolves_the_vips_to_the_active_director(lab: Lab, director: Director) -> None:
    _forget(lab)
    for vip in t.VIPS:
        assert _ping(lab, vip), f"ping {vip} through the XDP ARP/NDP responder"
        assert nodes.vip_neighbours(t.ROUTER.name).get(str(vip)) == DIR1_MAC
    assert lab.status().vip_owners == (t.DIR1.name,)
    own = director.status()["ownership"]
    assert own["active"] and own["announcements"] >= 1


def test_takeover_announcement_moves_the_router_without_traffic(
    lab: Lab, director: Director
) -> None:
    """A stale entry pointing elsewhere (as after a failover) is corrected by the
    gratuitous ARP / unsolicited NA burst when the daemon starts, before any
    packet is sent to the VIP."""
    director.stop()
    for vip in t.VIPS:
        lab.exec(
            "router",
            [
                "ip",
                "neigh",
                "replace",
                str(vip),
                "lladdr",
                t.REAL1.main.mac,
                "nud",
                "stale",
                "dev",
                ROUTER_IF,
            ],
            check=True,
        )
    director.start()
    took = _wait(
        lambda: all(nodes.vip_neighbours(t.ROUTER.name).get(str(v)) == DIR1_MAC for v in t.VIPS),
        3.0,
    )
    assert took is not None, nodes.vip_neighbours(t.ROUTER.name)


def test_a_foreign_claim_is_answered_by_reannouncing(lab: Lab, director: Director) -> None:
    """Split-brain recovery: another host announces our VIP; the active director
    notices and announces again, and the router ends up back on it."""
    before = director.status()["ownership"]["foreign_claims"]
    assert _ping(lab, t.VIP4)  # the router has an entry for the VIP (on our MAC)
    send_garp = (
        "import socket, ipaddress; from carom.net.announce import garp_frame; "
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('carom0', 0)); "
        f"s.send(garp_frame(bytes.fromhex('{t.REAL2.main.mac.replace(':', '')}'), "
        f"ipaddress.IPv4Address('{t.VIP4}')))"
    )
    lab.exec("real2", [sys.executable, "-c", send_garp], check=True)
    assert _wait(lambda: director.status()["ownership"]["foreign_claims"] > before, 2.0)
    took = _wait(lambda: nodes.vip_neighbours(t.ROUTER.name).get(str(t.VIP4)) == DIR1_MAC, 3.0)
    assert took is not None, nodes.vip_neighbours(t.ROUTER.name)
    assert director.status()["ownership"]["last_foreign_claim"]["mac"] == t.REAL2.main.mac


def test_a_frozen_daemon_stops_answering_within_its_lease(lab: Lab, director: Director) -> None:
    """Field note 6: a wedged daemon must not keep its data plane answering for
    the VIP. SIGSTOP: the lease runs out and ARP/NDP go unanswered; SIGCONT:
    answered again."""
    assert director.proc is not None
    pid = director.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # the lease (1 s) must run out while the daemon is frozen
        _forget(lab)
        for vip in t.VIPS:
            assert not _ping(lab, vip), f"{vip} answered while the daemon was frozen"
            assert str(vip) not in nodes.vip_neighbours(t.ROUTER.name)
    finally:
        os.kill(pid, signal.SIGCONT)
    _forget(lab)
    assert _wait(lambda: all(_ping(lab, v) for v in t.VIPS), 5.0) is not None


def test_a_frozen_daemon_stops_scheduling_within_its_lease(lab: Lab, director: Director) -> None:
    """Issue 9: the data plane acts as active only while its daemon proves it is
    alive. Frozen (SIGSTOP), the director stops scheduling within the lease: the
    router still sends VIP traffic to it (its ARP entry has not expired), and the
    director, a real server too, serves it from its own stack (pass_lease_expired)
    instead of forwarding it. SIGCONT: scheduled to the reals again."""
    url = f"http://{t.VIP4}/"
    assert _ping(lab, t.VIP4)  # the router's entry for the VIP is our MAC
    reals = {n.name for n in t.REALS}
    assert set(curl(lab, "client1", url, 6)) <= reals
    assert director.proc is not None
    pid = director.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # the lease (1 s) runs out
        assert nodes.vip_neighbours(t.ROUTER.name).get(str(t.VIP4)) == DIR1_MAC
        served = curl(lab, "client1", url, 6)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert served == [t.DIR1.name] * 6, served
    assert director.status()["counters"].get("pass_lease_expired", 0) >= 6
    assert _wait(lambda: set(curl(lab, "client1", url, 3)) <= reals, 5.0) is not None


def test_a_backup_never_answers_for_the_vips(lab: Lab, director: Director) -> None:
    cfg = lab_config()
    try:
        reply = director.reload({**cfg, "node": {"role": "backup"}})
        assert reply["ok"], reply
        _forget(lab)
        for vip in t.VIPS:
            answered = _ping(lab, vip)
            st = director.status()
            assert not answered, (st["counters"], st["ownership"], director.log()[-2000:])
        assert director.status()["ownership"]["active"] is False
    finally:
        assert director.reload(cfg)["ok"]
    _forget(lab)
    assert _wait(lambda: all(_ping(lab, v) for v in t.VIPS), 5.0) is not None


def test_detach_takes_the_vips_it_added_off_lo(lab: Lab, director: Director) -> None:
    """node.vips_on_lo: the daemon puts the VIPs on lo at start and `carom stop
    --detach` removes the ones it added (pyroute2 there runs off the event loop)."""
    ns = t.DIR1.name

    def on_lo() -> set[str]:
        return {a.split("/")[0] for a in nodes.addresses(ns).get("lo", [])}

    vips = {str(v) for v in t.VIPS}
    director.stop(detach=True)
    try:
        for vip in t.VIPS:
            plen = 32 if vip.version == 4 else 128
            nodes.ip(ns, "addr", "del", f"{vip}/{plen}", "dev", "lo", check=False)
        assert not vips & on_lo()
        seen = len(director.log())
        director.start(lab_config())
        assert vips <= on_lo(), "the daemon puts every VIP on lo"
        assert director.stop(detach=True) == 0
        assert not vips & on_lo(), "stop --detach removes the VIPs it added"
        log = director.log()[seen:]
        assert "Traceback" not in log and "already running" not in log, log
    finally:
        nodes.realserver_up(t.DIR1)
        director.start(lab_config())
