"""Lab commands: up, down, exec, status (the network-namespace lab, docs/lab.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from carom.lab import Lab, LabError, LabStatus, nodes
from carom.lab import topology as t


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(args.state_dir)


def _need_root() -> bool:
    if os.geteuid() != 0:
        print("carom lab: needs root (network namespaces)", file=sys.stderr)
        return False
    return True


def cmd_up(args: argparse.Namespace) -> int:
    if not _need_root():
        return 1
    try:
        rebuilt = _lab(args).up()
    except LabError as exc:
        print(f"carom lab up: {exc}", file=sys.stderr)
        return 1
    if rebuilt:
        print("carom lab: an existing lab was found and rebuilt")
    print(render_status(_lab(args).status()))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not _need_root():
        return 1
    try:
        warnings = _lab(args).down()
    except LabError as exc:
        print(f"carom lab down: {exc}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print("carom lab: down")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("carom lab exec: no command given (carom lab exec NODE -- CMD...)", file=sys.stderr)
        return 2
    lab = _lab(args)
    try:
        ns = lab.namespace(args.node)
    except LabError as exc:
        print(f"carom lab exec: {exc}", file=sys.stderr)
        return 2
    if not nodes.netns_exists(ns):
        print(f"carom lab exec: {ns} does not exist (is the lab up?)", file=sys.stderr)
        return 1
    return lab.exec(ns, argv, capture=False, timeout=None).returncode


def cmd_demo(args: argparse.Namespace) -> int:
    from carom.lab.demo import run_demo

    return run_demo(keep=args.keep)


def cmd_failover(args: argparse.Namespace) -> int:
    from carom.lab.failover import run_failover

    if not _need_root():
        return 1
    return run_failover(keep=args.keep)


def cmd_status(args: argparse.Namespace) -> int:
    st = _lab(args).status()
    if args.json:
        print(json.dumps(status_dict(st), indent=2))
    else:
        print(render_status(st))
    return 0 if st.up else 1


def status_dict(st: LabStatus) -> dict[str, Any]:
    return {
        "up": st.up,
        "switch": {"namespace": t.SWITCH_NS, "present": st.switch_present},
        "vips": [str(v) for v in t.VIPS],
        "vip_owners": list(st.vip_owners),
        "nodes": [
            {
                "name": n.node.name,
                "role": str(n.node.role),
                "present": n.present,
                "addresses": n.addresses,
                "services": None
                if n.service is None
                else {
                    "pid": n.service.pid,
                    "running": n.service.running,
                    "ports": [t.HTTP_PORT, t.BANNER_PORT],
                    "log": str(n.service.log),
                },
                "xdp_on_bridge_port": n.xdp_on_port,
            }
            for n in st.nodes
        ],
    }


def render_status(st: LabStatus) -> str:
    if st.absent:
        return "lab: down (no carom lab namespaces)"
    owners = ", ".join(st.vip_owners) or "nobody"
    vips = " ".join(str(v) for v in t.VIPS)
    lines = [
        f"lab: {'up' if st.up else 'DEGRADED'}    switch {t.SWITCH_NS}: "
        f"{'present' if st.switch_present else 'MISSING'}    VIPs {vips} answered by "
        f"{owners}",
        "",
        f"{'node':<14} {'role':<9} {'state':<8} {'services':<26} addresses",
    ]
    for n in st.nodes:
        if n.service is None:
            svc = "-"
        elif n.service.running:
            svc = f"http:{t.HTTP_PORT} banner:{t.BANNER_PORT} pid {n.service.pid}"
        else:
            svc = "STOPPED"
        if n.xdp_on_port is False:
            svc += " (no xdp on port)"
        addrs = "; ".join(f"{ifn} {' '.join(a)}" for ifn, a in n.addresses.items())
        state = "up" if n.present else "MISSING"
        lines.append(f"{n.node.name:<14} {n.node.role:<9} {state:<8} {svc:<26} {addrs}")
    return "\n".join(lines)


def register(sub: Any) -> None:
    p = sub.add_parser("lab", help="the network-namespace lab (router, directors, reals, clients)")
    p.add_argument(
        "--state-dir",
        default=t.DEFAULT_STATE_DIR,
        help=f"pid files and logs (default {t.DEFAULT_STATE_DIR})",
    )
    lab_sub = p.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    lab_sub.required = True

    up = lab_sub.add_parser("up", help="build the lab (rebuilds an existing one)")
    up.set_defaults(handler=cmd_up)

    down = lab_sub.add_parser("down", help="remove the lab; safe to repeat and after a crash")
    down.set_defaults(handler=cmd_down)

    ex = lab_sub.add_parser(
        "exec",
        help="run a command in a node: carom lab exec NODE -- CMD...",
        description="Run CMD inside NODE's namespace; its exit code is passed through. "
        f"NODE is one of: {', '.join(n.short for n in t.NODES)}, lan "
        "(with or without the 'carom-' prefix).",
    )
    ex.add_argument("node", help="node name, e.g. client1 or carom-real2")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    ex.set_defaults(handler=cmd_exec)

    demo = lab_sub.add_parser(
        "demo", help="lab up, carom on the director, real HTTP traffic, and what happened"
    )
    demo.add_argument("--keep", action="store_true", help="leave the lab and daemon running")
    demo.set_defaults(handler=cmd_demo)
    fo = lab_sub.add_parser(
        "failover",
        help="two directors as a cluster: kill, return, switchover under real TCP load",
    )
    fo.add_argument("--keep", action="store_true", help="leave the lab running")
    fo.set_defaults(handler=cmd_failover)
    st = lab_sub.add_parser("status", help="nodes, addresses, services; exit 1 unless all up")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(handler=cmd_status)
