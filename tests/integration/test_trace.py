"""`carom trace` as an operator runs it, in the namespace lab: real curl traffic
through the daemon, the command as a subprocess, its lines, its pcap read back
with `tcpdump -r`; tracing switched off when the command ends, dies or freezes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carom.lab import Lab
from carom.lab import topology as t
from carom.lab.director import Director, lab_config
from carom.lab.traffic import curl

pytestmark = [pytest.mark.root, pytest.mark.integration]

DIR1 = t.DIR1.name


@pytest.fixture(scope="module")
def director(lab: Lab) -> Iterator[Director]:
    with Director(lab, DIR1).running(lab_config()) as d:
        yield d


def start_trace(lab: Lab, d: Director, *args: str) -> subprocess.Popen[str]:
    """`carom trace` in the director's namespace, once it says it is tracing."""
    proc = lab.popen(
        DIR1,
        [sys.executable, "-m", "carom", "trace", "-c", str(d.config_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    if not first.startswith("tracing"):
        proc.kill()
        raise AssertionError(f"carom trace did not start: {first}{proc.stderr.read()}")
    return proc


def end(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return out, err


def sampled(d: Director) -> int:
    return int(d.status()["counters"]["trace_sampled"])


def wait_off(d: Director, limit_s: float) -> float:
    """Seconds until the daemon reports no trace (and the data plane stops sampling)."""
    t0 = time.monotonic()
    while d.status().get("trace") is not None:
        assert time.monotonic() - t0 < limit_s, "tracing still on"
        time.sleep(0.2)
    return time.monotonic() - t0


def reals(d: Director) -> dict[str, Any]:
    web = next(s for s in d.status()["services"] if s["name"] == "web")
    return {r["address"]: r for r in web["reals"]}


def test_trace_prints_decisions_and_writes_pcap(
    lab: Lab, director: Director, tmp_path: Path
) -> None:
    pcap = tmp_path / "trace.pcap"
    proc = start_trace(lab, director, "--pcap", str(pcap), "--print", "port", "80")
    served = curl(lab, "client1", f"http://{t.VIP4}/", 6)
    time.sleep(0.5)  # the daemon drains the ring ten times a second
    out, err = end(proc)
    assert len(served) == 6
    lines = [ln for ln in out.splitlines() if " tx_dsr " in ln]
    # every packet of the six connections the director saw (DSR: client to VIP only),
    # at least SYN, ACK, request and FIN each
    assert len(lines) >= 6 * 4, out
    by_real = reals(director)
    for ln in lines:
        # 12:00:01.532 carom0 tcp 10.0.1.10:43120 > 192.0.2.100:80 tx tx_dsr service web
        #   real 10.0.2.11 (id 1)
        assert f" tcp {t.CLIENT1.main.addr4}:" in ln, ln  # the client's own address (DSR)
        assert f" > {t.VIP4}:80 tx tx_dsr service web real " in ln, ln
        assert ln.split(" real ")[1].split()[0] in by_real, ln
    assert "0 lost" in err, err

    # the pcap, read back by tcpdump: the frames as they left XDP, to the reals' MACs
    read = subprocess.run(
        ["tcpdump", "-r", str(pcap), "-nn", "-e"], capture_output=True, text=True, check=True
    )
    frames = read.stdout.splitlines()
    assert len(frames) == len(out.splitlines()), (read.stdout, out)
    macs = {r["mac"] for r in by_real.values()}
    to_vip = [f for f in frames if f"> {t.VIP4}.80:" in f]
    assert len(to_vip) >= 6 * 4, read.stdout
    for f in to_vip:
        assert f.split()[3].rstrip(",") in macs, f  # destination MAC: a real's

    # switched off: the daemon says so, and the data plane samples nothing more
    wait_off(director, 2.0)
    before = sampled(director)
    curl(lab, "client1", f"http://{t.VIP4}/", 2)
    assert sampled(director) == before


def test_sampling_and_a_second_trace_refused(lab: Lab, director: Director) -> None:
    proc = start_trace(lab, director, "--sample", "3", "--json", "host", str(t.VIP4))
    other = director.carom("trace", "-c", str(director.config_path), "--duration", "1")
    assert other.returncode == 1 and "already running" in other.stderr, other.stderr
    before = sampled(director)
    curl(lab, "client1", f"http://{t.VIP4}/", 6)
    time.sleep(0.5)
    out, _ = end(proc)
    records = out.splitlines()
    assert records and all('"reason": "tx_dsr"' in r for r in records)
    # one in three of what the director decided for the VIP: it saw >= 24 packets
    assert 24 // 3 - 1 <= len(records) <= sampled(director) - before


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_tracing_never_outlives_its_client(lab: Lab, director: Director, how: str) -> None:
    proc = start_trace(lab, director)
    assert director.status()["trace"]["sample"] == 1
    if how == "kill":  # the connection closes: off at once
        proc.kill()
        limit = 2.0
    else:  # a frozen client keeps its connection but stops renewing: off within the lease
        proc.send_signal(signal.SIGSTOP)
        limit = 5.0 + 2.0
    try:
        took = wait_off(director, limit)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    before = sampled(director)
    curl(lab, "client1", f"http://{t.VIP4}/", 2)
    assert sampled(director) == before, f"still sampling {took:.1f}s after the client went"
