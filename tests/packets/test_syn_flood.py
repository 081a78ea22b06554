"""SYN-flood resistance: a flood of spoofed SYNs (one packet per flow, as a
spoofing attacker sends them) must not evict established flows from the LRU
connection table. Run through the compiled program and the model alike."""

from __future__ import annotations

import copy
import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from carom import abi
from carom.abi import Counter as C
from carom.model.forward import decide
from tests.harness.testrun import TestRunner
from tests.packets.cases import DIRECTOR_MAC, ROUTER_MAC, VIP, base_state, flow_key, table_of

ESTABLISHED = 200
FLOOD = 12_000  # three times the test runner's conn_table (4096 entries)


def _frame(client: int, sport: int, flags: str) -> bytes:
    return bytes(
        Ether(src=ROUTER_MAC, dst=DIRECTOR_MAC)
        / IP(src=str(ipaddress.IPv4Address(client)), dst=VIP)
        / TCP(sport=sport, dport=80, flags=flags)
    )


def _flood_frames() -> list[bytes]:
    # distinct spoofed sources and ports; built once from a template (scapy is slow)
    template = bytearray(_frame(0x0A000001, 1024, "S"))
    out = []
    for i in range(FLOOD):
        f = bytearray(template)
        f[26:30] = (0x0B000000 + i).to_bytes(4, "big")
        f[34:36] = (1024 + i % 60000).to_bytes(2, "big")
        # checksums are not checked by the program; the bytes that matter are the tuple
        out.append(bytes(f))
    return out


@pytest.mark.root
def test_syn_flood_keeps_established_flows_on_their_real(bpf_runner: TestRunner) -> None:
    state = base_state()
    bpf_runner.write_state(state)
    flows = [(0x0A000000 + i, 30000 + i) for i in range(ESTABLISHED)]
    for client, sport in flows:  # handshake as the director sees it: SYN, then ACK
        bpf_runner.run(_frame(client, sport, "S"))
        bpf_runner.run(_frame(client, sport, "A"))
    conns = bpf_runner.dp["conn_table"]
    before = {k.to_bytes(): v.real_id for k, v in conns.items()}
    assert len(before) == ESTABLISHED

    for f in _flood_frames():
        assert bpf_runner.run(f)[0] == abi.Verdict.TX
    after = {k.to_bytes(): v.real_id for k, v in conns.items()}
    assert after == before, "the flood changed the connection table"

    # and the established flows still reach their real, even with Maglev changed
    for svc in state.services:
        if svc.svc_id == 0:
            svc.table = table_of([1])
    maglev_row = table_of([1])
    bpf_runner.dp["maglev"].update_batch((i, int(r)) for i, r in enumerate(maglev_row))
    bpf_runner.zero_counters()
    for client, sport in flows:
        frame = _frame(client, sport, "PA")
        _, out, _ = bpf_runner.run(frame)
        real = before[flow_key(frame)]
        assert out[:6] == state.reals[real].mac
    got = bpf_runner.counters()
    assert got[C.CONN_HIT] == ESTABLISHED and got[C.TX_DSR] == ESTABLISHED


def test_syn_flood_model_never_inserts() -> None:
    """The model's side of the same rule: single SYNs only touch pending."""
    state = base_state()
    for client, sport in [(0x0A000000 + i, 30000 + i) for i in range(20)]:
        decide(_frame(client, sport, "S"), state, 10**12)
        decide(_frame(client, sport, "A"), state, 10**12)
    established = copy.deepcopy(state.conns)
    for f in _flood_frames()[:2000]:
        assert decide(f, state, 10**12).reason == C.TX_DSR
    assert state.conns == established
