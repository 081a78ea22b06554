"""`carom real drain|undrain|weight`: manual overrides of a real at runtime.

They ask the daemon (daemon/overrides.py holds the logic); an override lasts
across reloads and restarts until `carom real undrain` removes it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from carom.cli.daemon_cmds import _add_target, _ask, _refusals


def _weight(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range; use 0 to 65535")
    return value


def cmd_real(args: argparse.Namespace) -> int:
    kw: dict[str, Any] = {"address": args.address}
    if args.service:
        kw["service"] = args.service
    if args.action == "weight":
        kw["weight"] = args.weight
    reply = _ask(args, f"real-{args.action}", **kw)
    if reply is None:
        return 1
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        applied = "" if reply.get("applied") else " (recorded; the apply failed: see the log)"
        print(f"{reply['text']}{applied}")
        if reply.get("note"):
            print(f"note: {reply['note']}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("real", help="drain, undrain or reweight a real at runtime")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    helps = {
        "drain": "no new flows to the real (established flows go on)",
        "undrain": "back to the configured state (removes drain and weight overrides)",
        "weight": "replace the real's configured weight until undrained",
    }
    for action, text in helps.items():
        a = actions.add_parser(action, help=text, description=text)
        _add_target(a)
        a.add_argument("address", help="the real's address")
        if action == "weight":
            a.add_argument("weight", type=_weight, help="0-65535")
        a.add_argument("--service", help="only in this service (by name); default: all")
        a.add_argument("--json", action="store_true")
        a.set_defaults(handler=_refusals(cmd_real))
