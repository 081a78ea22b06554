"""Daemon commands: run, status, reload, stop, explain, detach."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carom.daemon import control

if TYPE_CHECKING:
    from carom.config.limits import Limits
    from carom.config.schema import Config


class _Refused(Exception):
    """Printed as `carom: MESSAGE`; the command exits with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _load(path: str) -> Config:
    """The config, or _Refused with its file:line messages (exit 2, as check)."""
    from carom.config.load import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise _Refused(f"invalid configuration, nothing was done:\n{exc}", 2) from None


def _socket(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.config:
        from carom.daemon.app import socket_of

        return socket_of(_load(args.config))
    return control.default_socket()


def _refusals(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a refusal into one message on stderr and an exit code, never a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _Refused as exc:
            print(f"carom: {exc}", file=sys.stderr)
            return exc.code

    return run


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="config file (to find the daemon's socket)")
    p.add_argument("--socket", help="control socket path (default /run/carom/default.sock)")


def _ask(args: argparse.Namespace, command: str, **kw: Any) -> dict[str, Any] | None:
    try:
        reply = control.request(_socket(args), command, **kw)
    except (ConnectionError, OSError) as exc:
        print(f"carom: {exc}", file=sys.stderr)
        return None
    if not reply.get("ok"):
        print(f"carom: {reply.get('error')}", file=sys.stderr)
        return None
    return reply


def cmd_run(args: argparse.Namespace) -> int:
    from carom.daemon import logs
    from carom.daemon.app import run

    logs.setup(args.log_format, args.verbose)
    try:
        # the daemon checks the socket path right after reading the config,
        # before anything is loaded (parsing it twice cost 2.4 s at 4096 services)
        return run(args.config)
    except control.SocketPathError as exc:
        print(f"carom: {exc}", file=sys.stderr)
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    from carom.config.limits import format_bytes
    from carom.config.load import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    warnings = cfg.warnings()
    if not args.no_routes:
        from carom.config.load import located
        from carom.net import egress

        routes = egress.route_interfaces(egress.remote_reals(cfg))
        problems = egress.egress_problems(cfg, routes)
        if problems:
            print(located(args.config, problems), file=sys.stderr)
            return 2
        warnings += egress.egress_warnings(cfg, routes)
    for w in warnings:
        print(f"warning: {w}")
    print(f"{args.config}: valid ({len(cfg.services)} services)")
    print(render_memory(cfg.limits))
    total = sum(m.bytes for m in cfg.limits.memory())
    ram = _mem_total()
    if ram and total > ram // 2:
        print(
            f"warning: the maps need {format_bytes(total)}, more than half of this "
            f"machine's {format_bytes(ram)} of memory"
        )
    return 0


def render_memory(limits: Limits) -> str:
    """The kernel memory the maps will take: allocated in full at start."""
    from carom.config.limits import format_bytes

    maps = limits.memory()
    total = sum(m.bytes for m in maps)
    lines = [f"kernel memory for the maps: {format_bytes(total)} (allocated at start)"]
    for m in maps:
        shape = f"  ({m.shape})" if m.shape else ""
        lines.append(
            f"  {m.name:<14} {m.entries:>11} entries x {m.entry_bytes:>4} B = "
            f"{format_bytes(m.bytes):>10}{shape}"
        )
    return "\n".join(lines)


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.1f}TiB"


def render_health(h: dict[str, Any]) -> str:
    """One probe: `check http :80 via vip: up since 12:00:01, 1.2 ms: HTTP 200`."""
    import time

    since = h.get("since")
    when = f" since {time.strftime('%H:%M:%S', time.localtime(since))}" if since else ""
    held = " (held: flapping)" if h.get("held") else ""
    last = f", {h['latency_ms']} ms: {h['last']}" if "last" in h else ""
    return f"check {h['check']}: {h['state']}{held}{when}{last}"


def render_status(st: dict[str, Any]) -> str:
    ifaces = ", ".join(f"{i['name']} ({i['mode']})" for i in st["interfaces"]) or "none"
    lines = [
        f"carom instance {st['instance']} (pid {st['pid']}, up {st['uptime_s']}s, "
        f"role {st['role']}{', adopted a running data plane' if st['adopted'] else ''})",
        f"XDP on: {ifaces}    Maglev table: {st['maglev_size']} slots    "
        f"connections: {st['connections'] if st['connections'] is not None else 'n/a'}",
        "",
    ]
    totals: dict[int, dict[str, Any]] = {}
    view = (st.get("cluster") or {}).get("health_view") or {}
    following = view.get("tables_from", "own checks") != "own checks"
    for s in st["services"]:
        persist = f", persistence {s['persistence_timeout']}s" if s["persistence_timeout"] else ""
        ports = s.get("ports", s["port"])
        lines.append(
            f"service {s['name']}  {s['vip']}:{ports}/{s['protocol']}{persist}  "
            f"table {s['fingerprint']}  {s['packets']} pkts {_fmt_bytes(s['bytes'])}  "
            f"{s.get('new_flows', 0)} new flows {s.get('conn_hits', 0)} conn hits"
        )
        if s.get("held"):
            lines.append(f"  HELD: fewer reals in rotation than min_healthy {s['min_healthy']}")
        for r in s["reals"]:
            totals[r["real_id"]] = r
            mac = r["mac"] or "-"
            detail = f"  ({r['detail']})" if r["state"] != "up" and r["detail"] else ""
            lines.append(f"  {r['address']:<22} w={r['weight']:<4} {r['state']:<10} {mac}{detail}")
            if r.get("health"):
                local = "local " if following else ""  # the tables follow the active's view
                lines.append(f"    {local}{render_health(r['health'])}")
        if not s["reals"]:
            lines.append("  (no reals: new connections are dropped)")
    if totals:
        lines.append("")
        lines.append("real servers (traffic over all services):")
        for r in sorted(totals.values(), key=lambda r: r["real_id"]):
            lines.append(
                f"  {r['address']:<22} {r['packets']:>10} pkts {_fmt_bytes(r['bytes']):>9}  "
                f"{r.get('new_flows', 0):>8} new flows {r.get('conn_hits', 0):>10} conn hits"
            )
    for o in st.get("overrides") or []:
        unused = "" if o["in_config"] else " (no such real in the config now)"
        lines.append(f"override: {o['address']} {o['text']}{unused}")
    if st["draining"]:
        lines.append("")
        lines.append("draining (removed from the config, established flows continue):")
        for d in st["draining"]:
            lines.append(f"  {d['address']}  {d['packets']} pkts")
    lines.append("")
    lines.append("counters: " + "  ".join(f"{k}={v}" for k, v in st["counters"].items() if v))
    lr = st.get("last_reload") or {}
    if lr:
        state = "ok" if lr.get("ok") else f"FAILED: {lr.get('error')}"
        lines.append(f"last apply: {state}, {lr.get('writes', 0)} map writes")
    if st.get("trace"):
        t = st["trace"]
        lines.append(f"carom trace running: one decision in {t['sample']}")
    if st.get("cluster"):
        from carom.cli.cluster_view import render_cluster

        lines += ["", *render_cluster(st["cluster"])]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(args, "status")
    if reply is None:
        return 1
    if args.json:
        print(json.dumps(reply["status"], indent=2))
    else:
        print(render_status(reply["status"]))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    reply = _ask(args, "reload")
    if reply is None:
        return 1
    print(f"reloaded: {reply['writes']} map writes in {reply['seconds'] * 1000:.1f} ms")
    for w in reply.get("warnings", []):
        print(f"warning: {w}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    reply = _ask(args, "stop", detach=args.detach)
    if reply is None:
        return 1
    if args.detach:
        print("stopping: XDP will be detached and maps unpinned")
    else:
        print("stopping the daemon; the data plane keeps forwarding")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    """Remove a data plane whose daemon is not running."""
    from carom.bpf import loader
    from carom.daemon.app import pin_dir_of, socket_of

    cfg = _load(args.config)
    sock = socket_of(cfg)
    if control.alive(sock):
        raise _Refused(
            f"a carom daemon is running for instance {cfg.instance} (it answers on {sock}); "
            "detach only removes an orphaned data plane: use `carom stop --detach`"
        )
    for ifname in cfg.interfaces:
        try:
            found = loader.detach(ifname)
            print(f"{ifname}: {'detached' if found else 'no carom program attached'}")
        except OSError as exc:
            print(f"{ifname}: {exc}", file=sys.stderr)
    loader.unpin(pin_dir_of(cfg))
    print(f"unpinned {pin_dir_of(cfg)}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    reply = _ask(args, "explain", client=args.client, service=args.service, syn=args.syn)
    if reply is None:
        return 1
    print(json.dumps(reply["explain"], indent=2) if args.json else reply["text"])
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the daemon with a config file")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--log-format", choices=["logfmt", "json"], default="logfmt")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("check", help="validate a config file without applying it")
    p.add_argument("-c", "--config", required=True)
    p.add_argument(
        "--no-routes",
        action="store_true",
        help="skip checking each real's route against the interfaces (on another host)",
    )
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("status", help="services, reals and live counters")
    _add_target(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_refusals(cmd_status))

    p = sub.add_parser("reload", help="re-read the config and apply the difference")
    _add_target(p)
    p.set_defaults(handler=_refusals(cmd_reload))

    p = sub.add_parser("stop", help="stop the daemon (the data plane keeps forwarding)")
    _add_target(p)
    p.add_argument(
        "--detach",
        action="store_true",
        help="also detach XDP and unpin the maps (interrupts traffic)",
    )
    p.set_defaults(handler=_refusals(cmd_stop))

    p = sub.add_parser("detach", help="remove the data plane when no daemon runs")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(handler=_refusals(cmd_detach))

    p = sub.add_parser("explain", help="which real server a flow goes to, and why")
    _add_target(p)
    p.add_argument("client", help="CLIENT:PORT (IPv6: [ADDR]:PORT)")
    p.add_argument("service", help="VIP:PORT/PROTO, e.g. 192.0.2.100:80/tcp")
    p.add_argument("--syn", action="store_true", help="explain a new connection (TCP SYN)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_refusals(cmd_explain))
