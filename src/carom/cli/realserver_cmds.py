"""`carom realserver up|down|check`: this host as a DSR real server (docs/realserver.md).

Runs in the current network namespace; `ip netns exec NS carom realserver ...`
configures another one. Exit codes: 0 clean / done, 1 problems found or a change
failed, 2 usage."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from carom.net import realserver as rs


def parse_vip(text: str) -> rs.Address:
    """An argparse type: one VIP address, rejecting ones no client can reach."""
    try:
        vip = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    if vip.is_multicast or vip.is_unspecified or vip.is_loopback or vip.is_link_local:
        raise argparse.ArgumentTypeError(f"{text} cannot be a VIP (multicast, loopback, ...)")
    return vip


def _unique(vips: Sequence[rs.Address] | None) -> list[rs.Address] | None:
    return None if vips is None else list(dict.fromkeys(vips))


def _finding_json(f: rs.Finding) -> dict[str, Any]:
    return {**asdict(f), "severity": str(f.severity)}


def render_findings(findings: Sequence[rs.Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.severity:<8} {f.interface or '-':<10} {f.message}")
        lines.append(f"{'':<8} {'':<10} fix: {f.fix}")
    return "\n".join(lines)


def render_interfaces(views: Sequence[rs.InterfaceView]) -> str:
    """Effective sysctl values per interface, with the two values they come from."""

    def cell(e: rs.Effective, name: str) -> str:
        return f"{e.effective} (all {e.all}, {name} {e.interface})"

    rows = [("interface", "arp_ignore", "arp_announce", "rp_filter")]
    for v in views:
        no_arp = "no ARP"
        rows.append(
            (
                v.name,
                cell(v.arp_ignore, v.name) if v.arp else no_arp,
                cell(v.arp_announce, v.name) if v.arp else no_arp,
                cell(v.rp_filter, v.name),
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _summary(findings: Sequence[rs.Finding], vips: Sequence[rs.Address]) -> str:
    names = ", ".join(str(v) for v in vips)
    if not findings:
        return f"ok: this host is a DSR real server for {names}"
    errors = sum(f.severity is rs.Severity.ERROR for f in findings)
    warnings = len(findings) - errors
    return (
        f"{len(findings)} problem{'s' * (len(findings) != 1)} ({errors} error"
        f"{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}) "
        f"as a DSR real server for {names}:"
    )


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    if args.json:
        print(json.dumps({"error": str(exc)}, indent=2))
    print(f"carom realserver {args.action}: {exc}", file=sys.stderr)
    return 1


def _result_json(result: rs.Result) -> dict[str, Any]:
    return {
        "changed": result.changed,
        "steps": [asdict(s) for s in result.steps],
        "state": result.state_path,
        "state_written": result.state_written,
        "state_removed": result.state_removed,
    }


def _vips_or_recorded(args: argparse.Namespace) -> list[rs.Address]:
    """--vip values, or the VIPs recorded in the state file when none were given."""
    vips = _unique(args.vip)
    if vips:
        return vips
    state = rs.load_state(Path(args.state))
    if state is None or not state.vips:
        raise rs.RealServerError(f"no --vip given and no VIPs recorded in {args.state}")
    return list(state.vips)


def cmd_up(args: argparse.Namespace) -> int:
    vips = _unique(args.vip) or []
    try:
        result = rs.up(vips, Path(args.state))
    except (rs.RealServerError, OSError) as exc:
        return _fail(args, exc)
    if args.json:
        out = _result_json(result)
        out["clean"] = not result.findings
        out["findings"] = [_finding_json(f) for f in result.findings]
        print(json.dumps(out, indent=2))
    else:
        for step in result.steps:
            print(step.message)
        if result.state_written:
            print(f"recorded in {result.state_path} (`carom realserver down` undoes it)")
        print(_summary(result.findings, vips))
        if result.findings:
            print(render_findings(result.findings))
    return 1 if result.findings else 0


def cmd_down(args: argparse.Namespace) -> int:
    try:
        result = rs.down(_unique(args.vip), Path(args.state))
    except (rs.RealServerError, OSError) as exc:
        return _fail(args, exc)
    if args.json:
        print(json.dumps(_result_json(result), indent=2))
    else:
        for step in result.steps:
            print(step.message)
        if result.state_removed:
            print(f"removed {result.state_path}: this host is no longer set up as a real server")
        elif result.state_written:
            print(f"updated {result.state_path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        vips = _vips_or_recorded(args)
        snapshot = rs.read_snapshot()
    except (rs.RealServerError, OSError) as exc:
        return _fail(args, exc)
    findings = rs.evaluate(snapshot, vips)
    views = rs.interface_views(snapshot)
    if args.json:
        out = {
            "clean": not findings,
            "vips": [str(v) for v in vips],
            "interfaces": [asdict(v) for v in views],
            "findings": [_finding_json(f) for f in findings],
        }
        print(json.dumps(out, indent=2))
    else:
        print(_summary(findings, vips))
        if findings:
            print(render_findings(findings))
        if views and any(v.version == 4 for v in vips):
            print("\neffective values (the kernel uses the larger of `all` and the interface):")
            print(render_interfaces(views))
    return 1 if findings else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "realserver",
        help="set up, undo or check this host as a DSR real server",
        description="Configure the current network namespace as a Direct Server Return real "
        "server: VIPs on lo with host masks, ARP never answered or announced for them, "
        "reverse-path filtering that does not drop DSR traffic.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    leaves = (
        ("up", cmd_up, True, "add the VIPs to lo and set ARP/rp_filter sysctls (idempotent)"),
        ("down", cmd_down, False, "undo exactly what `up` did (all recorded VIPs by default)"),
        ("check", cmd_check, False, "report every deviation; exit 1 if there is any"),
    )
    for name, handler, vip_required, text in leaves:
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument(
            "--vip",
            action="append",
            type=parse_vip,
            required=vip_required,
            metavar="ADDR",
            help="a VIP, IPv4 or IPv6 (repeatable)"
            + ("" if vip_required else "; default: the VIPs recorded in the state file"),
        )
        q.add_argument(
            "--state",
            default=str(rs.DEFAULT_STATE),
            metavar="FILE",
            help=f"where `up` records what it changed (default {rs.DEFAULT_STATE})",
        )
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(handler=handler)
