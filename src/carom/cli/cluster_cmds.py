"""`carom cluster ...`: the directors' cluster, seen from one of them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from carom.cli.daemon_cmds import _add_target, _ask, _refusals


def render_cluster(c: dict[str, Any]) -> list[str]:
    """The cluster part of `carom status`."""
    sync, bulk = c["sync"], c["bulk"]
    agree = "agree" if c["fingerprints_agree"] else "DIFFER (not ready: compare the configs)"
    lines = [
        f"cluster: node {c['node']} role {c['role']}"
        f"{' (preempts)' if c['preempt'] else ''}  tables {c['fingerprint'][:12]} {agree}",
    ]
    for p in c["peers"]:
        seen = f"{p['last_seen_ms']} ms ago" if p["last_seen_ms"] is not None else "never heard"
        lines.append(
            f"  peer {p['name']:<12} {'alive' if p['alive'] else 'DEAD':<5} "
            f"role {p['role'] or '-':<8} ready {p['ready']}  last heartbeat {seen}"
        )
    lines.append(
        f"  sync ({sync['source']}): sent {sync['sent_records']} records in "
        f"{sync['sent_datagrams']} datagrams, received {sync['received_records']}, "
        f"gaps {sync['gaps']}, rejected {sync['rejected']}, unknown real {sync['unknown_real']}, "
        f"batching <= {sync['batch_delay_ms']:g} ms"
    )
    total = f"/{bulk['records']}" if bulk["state"] == "done" else ""
    lines.append(
        f"  bulk resync: {bulk['state']}{' from ' + bulk['peer'] if bulk['peer'] else ''} "
        f"{bulk['applied']}{total} entries applied, {bulk['skipped_newer']} superseded by the "
        f"stream, {bulk['seconds']} s; snapshots served {bulk['served']}"
        + (f"; error {bulk['error']}" if bulk["error"] else "")
    )
    for t in c["transitions"][-3:]:
        lines.append(f"  {t['from']} -> {t['to']}: {t['reason']}")
    return lines


def cmd_switchover(args: argparse.Namespace) -> int:
    reply = _ask(args, "switchover")
    if reply is None:
        return 1
    print(f"resigned the active role; taking over: {', '.join(reply['to'])}")
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
    q = csub.add_parser("status", help="role, peers, sync and bulk resync state")
    _add_target(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=_refusals(cmd_status))
