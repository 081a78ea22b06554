"""`carom import keepalived|ipvsadm FILE`: an existing IPVS setup as a carom config.

Writes the YAML (to -o FILE, or stdout), prints a warning for every construct
that was not carried over, then validates what it wrote exactly as `carom check`
does. Exit codes: 0 written and valid, 1 written but carom rejects it, 2 the
input could not be read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from carom.importers import ipvsadm, keepalived
from carom.importers.common import ImportFailure, ImportResult, parse_fwmark_map


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def cmd_import(args: argparse.Namespace) -> int:
    from carom.config.load import ConfigError, parse_config

    path = Path(args.file)
    try:
        text = sys.stdin.read() if args.file == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"carom import: {args.file}: cannot read: {exc}", file=sys.stderr)
        return 2
    source = "<stdin>" if args.file == "-" else path.name
    try:
        fwmarks = parse_fwmark_map(args.fwmark or [])
        convert = keepalived.convert if args.format == "keepalived" else ipvsadm.convert
        result: ImportResult = convert(
            text,
            source,
            interfaces=args.interface or (),
            fwmarks=fwmarks,
            local=args.local or (),
        )
    except (ImportFailure, ValueError) as exc:
        print(f"carom import: {exc}", file=sys.stderr)
        return 2
    yaml_text = result.to_yaml(source)
    for note in result.notes:
        print(f"warning: {note.render(source)}", file=sys.stderr)
    reals = sum(len(s.reals) for s in result.services)
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.force:
            print(f"carom import: {out} exists; use --force to overwrite it", file=sys.stderr)
            return 2
        try:
            out.write_text(yaml_text, encoding="utf-8")
        except OSError as exc:
            print(f"carom import: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        written = str(out)
    else:
        sys.stdout.write(yaml_text)
        written = "<stdout>"
    print(
        f"converted {_count(len(result.services), 'service')} with "
        f"{_count(reals, 'real')} to {written}; {_count(len(result.notes), 'warning')}",
        file=sys.stderr,
    )
    try:
        cfg = parse_config(yaml_text, written)
    except ConfigError as exc:
        print(f"carom check {written}: INVALID", file=sys.stderr)
        print(exc, file=sys.stderr)
        return 1
    for w in cfg.warnings():
        print(f"carom check: warning: {w}", file=sys.stderr)
    print(f"carom check {written}: valid ({len(cfg.services)} services)", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "import", help="convert a keepalived.conf or ipvsadm-save output to a carom config"
    )
    p.add_argument("format", choices=["keepalived", "ipvsadm"], help="what FILE is")
    p.add_argument("file", metavar="FILE", help="the file to convert (- for stdin)")
    p.add_argument("-o", "--output", help="write the config here (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument(
        "--interface",
        action="append",
        metavar="IFNAME",
        help="interface that receives the VIP traffic (repeatable; default: the "
        "vrrp_instance interfaces of a keepalived.conf, else eth0)",
    )
    p.add_argument(
        "--fwmark",
        action="append",
        metavar="MARK=VIP[/udp][@PORTS]",
        help="convert firewall-mark service MARK to a multi-port service on PORTS of "
        "VIP (25,143,5222-5223), or to every port of VIP without @PORTS (repeatable)",
    )
    p.add_argument(
        "--local",
        action="append",
        metavar="ADDR",
        help="this node's own address: its reals get local: true (repeatable)",
    )
    p.set_defaults(handler=cmd_import)
