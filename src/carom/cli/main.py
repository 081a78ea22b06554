"""The `carom` command. Each concern registers its own subcommands, so this file
stays a table of contents."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from carom import __version__

# Modules that contribute subcommands: each has register(subparsers).
_COMMAND_MODULES = (
    "carom.cli.daemon_cmds",
    "carom.cli.real_cmds",
    "carom.cli.realserver_cmds",
    "carom.cli.lab_cmds",
    "carom.cli.bench_cmds",
    "carom.cli.import_cmds",
    "carom.cli.top",
    "carom.cli.doctor_cmds",
    "carom.cli.cluster_cmds",
    "carom.cli.trace_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carom", description="carom: XDP layer-4 load balancer (Direct Server Return)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"carom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not written yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
