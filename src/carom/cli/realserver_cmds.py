"""`carom realserver up|down|check --vip ADDR [...]`: DSR real-server setup."""

from __future__ import annotations

import argparse
import ipaddress
import json
from typing import Any

from carom.net import realserver as rs


def _vips(args: argparse.Namespace) -> list[rs.Address]:
    return [ipaddress.ip_address(v) for v in args.vip]


def cmd_up(args: argparse.Namespace) -> int:
    changed = rs.up(_vips(args), args.state)
    problems = [f for f in rs.evaluate(rs.snapshot(), _vips(args)) if f.severity == "error"]
    if args.json:
        print(json.dumps({"changed": changed, "problems": rs.findings_json(problems)}))
    else:
        print("\n".join(changed) if changed else "already a DSR real server: nothing to change")
        for f in problems:
            print(f"error: {f.message}\n  fix: {f.fix}")
    return 1 if problems else 0


def cmd_down(args: argparse.Namespace) -> int:
    changed = rs.down(_vips(args), args.state)
    if args.json:
        print(json.dumps({"changed": changed}))
    else:
        print("\n".join(changed) if changed else "nothing to undo")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    found = rs.evaluate(rs.snapshot(), _vips(args))
    if args.json:
        print(json.dumps({"ok": not found, "findings": rs.findings_json(found)}))
    elif not found:
        print(f"ok: this host is a DSR real server for {', '.join(args.vip)}")
    else:
        for f in found:
            print(f"{f.severity}: [{f.interface}] {f.message}\n  fix: {f.fix}")
    return 1 if found else 0


def register(sub: Any) -> None:
    p = sub.add_parser("realserver", help="set up / check this host as a DSR real server")
    rsub = p.add_subparsers(dest="action", metavar="ACTION")
    rsub.required = True
    for name, fn, text in (
        ("up", cmd_up, "VIPs on lo /32 (/128), ARP and rp_filter settings; idempotent"),
        ("down", cmd_down, "undo `up`: restore what was there"),
        ("check", cmd_check, "report every deviation; exit 1 if any"),
    ):
        q = rsub.add_parser(name, help=text)
        q.add_argument("--vip", action="append", required=True, help="a VIP (repeatable)")
        q.add_argument("--state", default=rs.DEFAULT_STATE, help="where `up` records changes")
        q.add_argument("--json", action="store_true")
        q.set_defaults(handler=fn)
