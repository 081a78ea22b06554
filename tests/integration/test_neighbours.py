"""Neighbour resolution on a real kernel: dynamic entries get resolved, static
ones are read and never disturbed."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

PROBE = """
import ipaddress, time
from carom.net.neighbours import NeighbourTable
nt = NeighbourTable()
addrs = [ipaddress.ip_address(a) for a in ("192.0.2.11", "192.0.2.12", "192.0.2.99")]
# wait for the kernel to settle: .11 answers ARP, .99 never does
deadline = time.monotonic() + 20
while True:
    found = nt.lookup_many(addrs)
    settled = found[addrs[0]].mac is not None and found[addrs[2]].state in ("failed", "incomplete")
    if settled and found[addrs[0]].state == "reachable" or time.monotonic() > deadline:
        break
    time.sleep(0.05)
for a in addrs:
    n = found[a]
    print(a, n.state, n.mac.hex() if n.mac else "-")
"""


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    d, r = f"carom-nbd-{tag}", f"carom-nbr-{tag}"
    try:
        for ns in (d, r):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(
            [
                "ip",
                "-n",
                d,
                "link",
                "add",
                "carom0",
                "type",
                "veth",
                "peer",
                "name",
                "carom0",
                "netns",
                r,
            ],
            check=True,
        )
        subprocess.run(["ip", "-n", d, "addr", "add", "192.0.2.2/24", "dev", "carom0"], check=True)
        subprocess.run(["ip", "-n", r, "addr", "add", "192.0.2.11/24", "dev", "carom0"], check=True)
        for ns in (d, r):
            subprocess.run(["ip", "-n", ns, "link", "set", "carom0", "up"], check=True)
        yield d, r
    finally:
        for ns in (d, r):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_dynamic_resolved_static_kept_missing_failed(pair: tuple[str, str]) -> None:
    d, _ = pair
    subprocess.run(
        [
            "ip",
            "-n",
            d,
            "neigh",
            "replace",
            "192.0.2.12",
            "lladdr",
            "02:00:00:00:00:12",
            "dev",
            "carom0",
            "nud",
            "permanent",
        ],
        check=True,
    )
    out = subprocess.run(
        ["ip", "netns", "exec", d, sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert lines["192.0.2.11"][0] == "reachable"  # resolved by ARP, nothing else sent
    assert lines["192.0.2.12"] == ["reachable", "020000000012"]  # static entry read as is
    assert lines["192.0.2.99"][0] in ("failed", "incomplete")
    neigh = subprocess.run(
        ["ip", "-n", d, "neigh", "show", "192.0.2.12"], capture_output=True, text=True, check=True
    ).stdout
    assert "PERMANENT" in neigh, f"the static entry was disturbed: {neigh}"


EVENTS = """
import asyncio, ipaddress, subprocess, sys
from carom.net.neighbours import NeighbourEvents, NeighbourTable, updated
a = ipaddress.ip_address("192.0.2.11")
# the synchronous table runs a loop of its own: outside ours (the daemon uses a thread)
first = NeighbourTable().lookup_many([a])[a]
async def main():
    events = NeighbourEvents()
    await events.open()
    known = first
    print("start", known.state, known.mac.hex() if known.mac else "-", flush=True)
    subprocess.run(["ip", "neigh", "replace", "192.0.2.11", "lladdr", "02:00:00:00:00:99",
                    "dev", "carom0", "nud", "reachable"], check=True)
    async def first_change():
        nonlocal known
        async for ev in events.events():
            if ev.address == a:
                known = updated(known, ev)  # ARP may answer first: wait for ours
                if known.mac == bytes.fromhex("020000000099"):
                    return known
    new = await asyncio.wait_for(first_change(), 5)
    print("event", new.state, new.mac.hex())
    await events.close()
asyncio.run(main())
"""


def test_mac_change_arrives_as_an_event(pair: tuple[str, str]) -> None:
    """No polling: a changed entry reaches the daemon's follower as a kernel event."""
    d, _ = pair
    out = subprocess.run(
        ["ip", "netns", "exec", d, sys.executable, "-c", EVENTS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}
    assert lines["event"] == ["reachable", "020000000099"], out.stdout
