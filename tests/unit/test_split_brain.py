"""Split brain and stalls: a better-ranked peer that is silent on heartbeats but
claims the VIPs holds a node back (and makes an active one stand down); a
daemon whose own steps stalled longer than a peer waits goes to FAULT."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from carom.cluster import probe
from carom.cluster.heartbeat import HeartbeatNode, decide
from carom.cluster.roles import State, Transition
from carom.net.announce import parse_claim
from tests.unit.test_heartbeat import cluster, inputs


def test_decide_with_a_silent_better_peer_claiming() -> None:
    held = "dir1"
    assert decide(inputs(State.BACKUP, elected=True, held_by=held)) is None
    nxt = decide(inputs(State.ACTIVE, elected=True, held_by=held))
    assert nxt is not None and nxt[0] is State.BACKUP and "split brain" in nxt[1]
    assert decide(inputs(State.BACKUP, elected=True))[0] is State.ACTIVE  # type: ignore[index]


def test_a_stalled_daemon_goes_to_fault(tmp_path: Path) -> None:
    seen: list[Transition] = []
    node = HeartbeatNode(cluster(tmp_path, "a"), seen.append)
    node.machine.go(State.BACKUP, "test")
    node.machine.go(State.ACTIVE, "test")
    node.step(100.0)
    node.step(100.1)  # a normal tick
    assert node.machine.state is State.ACTIVE
    node.step(100.1 + node.members.dead_s + 0.05)  # SIGSTOP for longer than peers wait
    assert node.machine.state is State.FAULT
    assert seen and "stalled" in seen[-1].reason


def test_the_vip_probe_is_a_plain_request_that_claims_nothing() -> None:
    mac = bytes.fromhex("02ca00000003")
    frame = probe.arp_request_frame(
        mac, ipaddress.IPv4Address("192.0.2.3"), ipaddress.IPv4Address("192.0.2.100")
    )
    assert len(frame) == 42 and frame[:6] == b"\xff" * 6
    claim = parse_claim(frame)
    # it binds our own address to our MAC, never the VIP
    assert claim is not None and str(claim.vip) == "192.0.2.3" and claim.mac == mac
