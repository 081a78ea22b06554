"""A multi-port service in the lab (seed 003, `ipvsadm -A -f 100 -p`): HTTP and
the server-speaks-first banner protocol on one VIP as one service with
persistence, real TCP from two clients. Each client's connections, on either
port, reach one real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from carom.lab import Lab
from carom.lab import topology as t
from carom.lab.director import BPFFS, Director, lab_config
from carom.lab.traffic import curl

pytestmark = [pytest.mark.root, pytest.mark.integration]

BANNER = (
    "import socket, sys\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    s = socket.create_connection((sys.argv[1], 2525), timeout=3)\n"
    "    print(s.makefile().readline().split()[1]); s.close()\n"
)


@pytest.fixture(scope="module")
def director(lab: Lab) -> Iterator[Director]:
    reals = [{"address": str(n.main.addr4)} for n in t.REALS]
    mail = {
        "name": "mail",
        "vip": str(t.VIP4),
        "ports": [80, 2525],
        "persistence_timeout": 300,
        "reals": reals,
    }
    with Director(lab, "carom-dir1").running(lab_config(services=[mail])) as d:
        yield d


def banner(lab: Lab, client: str, n: int) -> list[str]:
    out = lab.exec(client, [sys.executable, "-c", BANNER, str(t.VIP4), str(n)], check=True)
    return out.stdout.split()


def test_a_clients_connections_on_every_port_reach_one_real(lab: Lab, director: Director) -> None:
    st = director.status()
    (svc,) = st["services"]
    assert svc["ports"] == "80,2525" and svc["persistence_timeout"] == 300
    seen = {}
    for client in ("client1", "client2"):
        served = curl(lab, client, f"http://{t.VIP4}/", 5) + banner(lab, client, 5)
        assert len(served) == 10, served
        assert len(set(served)) == 1, f"{client} was spread over {set(served)}"
        seen[client] = served[0]
    assert set(seen.values()) <= {n.name for n in t.REALS}
    # One persistence entry per client, for the service's one id, whatever the
    # port: two services (one per port) would have left two entries per client.
    st = director.status()
    (svc,) = st["services"]
    assert svc["packets"] > 0
    assert st["counters"].get("persist_hit", 0) >= 18  # every connection after each first
    pinned = os.path.join(BPFFS, "carom", "dir1", "persist_table")
    dump = subprocess.run(
        ["bpftool", "-j", "map", "dump", "pinned", pinned],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = json.loads(dump.stdout)
    ids = [int.from_bytes(bytes(int(b, 16) for b in e["key"][16:20]), "little") for e in entries]
    assert ids == [svc["id"]] * 2, entries
