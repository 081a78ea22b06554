"""`carom cluster ...`: the directors' cluster, seen from one of them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from carom.cli.cluster_view import render_cluster
from carom.cli.daemon_cmds import _add_target, _ask, _refusals
from carom.cluster.roles import VRRP_STATES


def cmd_switchover(args: argparse.Namespace) -> int:
    reply = _ask(args, "switchover")
    if reply is None:
        return 1
    print(f"resigned the active role; taking over: {', '.join(reply['to'])}")
    return 0


def cmd_vrrp(args: argparse.Namespace) -> int:
    reply = _ask(args, "vrrp", state=args.state)
    if reply is None:
        return 1
    print(f"VRRP state {reply['vrrp']}: carom is {reply['role']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(args, "status")
    if reply is None:
        return 1
    c = reply["status"].get("cluster")
    if c is None:
        print("no cluster: this director runs alone")
        return 0
    print(json.dumps(c, indent=2) if args.json else "\n".join(render_cluster(c)))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("cluster", help="the directors' cluster: status, switchover")
    csub = p.add_subparsers(dest="cluster_command", metavar="COMMAND")
    csub.required = True
    q = csub.add_parser(
        "switchover", help="planned switchover: the active director hands over and resigns"
    )
    _add_target(q)
    q.set_defaults(handler=_refusals(cmd_switchover))
    q = csub.add_parser(
        "vrrp",
        help="keepalived mode: report the VRRP state (for notify_master/backup/fault scripts)",
    )
    _add_target(q)
    q.add_argument("state", choices=VRRP_STATES)
    q.set_defaults(handler=_refusals(cmd_vrrp))
    q = csub.add_parser("status", help="role, peers, sync and bulk resync state")
    _add_target(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=_refusals(cmd_status))
