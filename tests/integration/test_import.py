"""An imported keepalived.conf runs: `carom import` output, with only the lab's
pin and socket paths added, serves real HTTP over DSR from every real server."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from carom.config.load import load_config
from carom.lab import Lab
from carom.lab import topology as t
from carom.lab.director import Director, lab_config
from carom.lab.traffic import curl

pytestmark = [pytest.mark.root, pytest.mark.integration]

R1, R2, R3 = t.REALS
KEEPALIVED_CONF = f"""\
! the lab's VIPs as an operator's keepalived would balance them
virtual_server {t.VIP4} 80 {{
    delay_loop 6
    lb_algo wrr
    lb_kind DR
    protocol TCP
    real_server {R1.main.addr4} 80 {{
        weight 1
        TCP_CHECK {{
            connect_timeout 3
        }}
    }}
    real_server {R2.main.addr4} 80 {{
        weight 1
    }}
    real_server {R3.main.addr4} 80 {{
        weight 2
    }}
}}
virtual_server {t.VIP6} 80 {{
    lb_algo rr
    lb_kind DR
    protocol TCP
    real_server {R1.main.addr6} 80 {{
    }}
    real_server {R2.main.addr6} 80 {{
    }}
    real_server {R3.main.addr6} 80 {{
    }}
}}
virtual_server {t.VIP4} 2525 {{
    lb_kind NAT
    real_server 10.0.0.1 2525 {{
    }}
}}
"""


def test_imported_keepalived_config_serves(lab: Lab, tmp_path: Path) -> None:
    src = tmp_path / "keepalived.conf"
    src.write_text(KEEPALIVED_CONF)
    out = tmp_path / "imported.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "carom", "import", "keepalived", str(src), "--interface",
         "carom0", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "lb_kind NAT: carom forwards by Direct Server Return (DR) only" in run.stderr
    assert "TCP_CHECK" not in run.stderr  # converted: a tcp check of real1
    imported = load_config(out).model_dump(mode="json")
    r1 = next(r for r in imported["services"][0]["reals"] if r["address"] == str(R1.main.addr4))
    assert r1["check"]["kind"] == "tcp", r1
    assert (r1["check"]["interval"], r1["check"]["timeout"]) == (6.0, 3.0), r1
    assert imported["interfaces"] == ["carom0"]
    assert len(imported["services"]) == 2

    director = Director(lab, "carom-dir1")
    director.remove()
    director.start(lab_config(services=imported["services"]))
    try:
        # 40 each: with three equal reals, 12 requests left one out in ~2% of runs
        served4 = Counter(curl(lab, "client1", f"http://{t.VIP4}/", 40))
        served6 = Counter(curl(lab, "client2", f"http://[{t.VIP6}]/", 40))
        status = director.status()
    finally:
        director.remove()
    names = {n.name for n in t.REALS}
    assert sum(served4.values()) == 40 and set(served4) == names, served4
    assert sum(served6.values()) == 40 and set(served6) == names, served6
    weights = {
        r["address"]: r["weight"] for s in status["services"] for r in s["reals"] if s["port"] == 80
    }
    assert weights[str(R3.main.addr4)] == 2
    checked = {
        r["address"]: r.get("health")
        for s in status["services"]
        for r in s["reals"]
        if s["port"] == 80
    }
    assert checked[str(R1.main.addr4)] is not None, checked  # the daemon runs the check
    assert checked[str(R2.main.addr4)] is None, checked
