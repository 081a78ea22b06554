"""`carom doctor`: check the network around this director and say how to fix
what is wrong (src/carom/ops/doctor). Exit 0: no findings; 1: findings; 2: the
config cannot be read."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any


def cmd_doctor(args: argparse.Namespace) -> int:
    from carom.cli.daemon_cmds import _load
    from carom.daemon.app import socket_of
    from carom.ops.doctor import probes

    cfg = _load(args.config)
    if os.geteuid() != 0:
        print(
            "carom: doctor sends ARP and TCP probes on raw sockets; run it as root", file=sys.stderr
        )
        return 2
    report = probes.run(cfg, args.socket or socket_of(cfg))
    if args.json:
        print(
            json.dumps(
                {
                    "findings": [asdict(f) for f in report.findings],
                    "passed": report.passed,
                    "skipped": report.skipped,
                },
                indent=2,
            )
        )
    else:
        print(report.render())
    return 1 if report.findings else 0


def register(sub: Any) -> None:
    from carom.cli.daemon_cmds import _refusals

    p = sub.add_parser(
        "doctor", help="check the network around this director; exit 1 on any finding"
    )
    p.add_argument("-c", "--config", required=True, help="the daemon's config file")
    p.add_argument("--socket", help="control socket path (default: from the config)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_refusals(cmd_doctor))
