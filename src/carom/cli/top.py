"""`carom top`: a live view of services and reals, refreshed from the daemon's
status (the control socket, like `carom status`), drawn with rich.

Rates are differences between two status reads divided by the time between
them, so they need no state in the daemon. The view works over SSH (plain
terminal escape codes, the alternate screen) and leaves the terminal as it
found it on q, Ctrl-C or an error."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from carom.daemon import control

_DROPS = "drop_"
_STATE_STYLE = {"up": "green", "local": "cyan", "drained": "yellow", "draining": "yellow"}


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic() of the read
    status: Mapping[str, Any]


def _rate(new: float, old: float | None, dt: float) -> float | None:
    if old is None or dt <= 0 or new < old:  # a restart resets counters
        return None
    return (new - old) / dt


def human(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23M'; None (no rate yet) -> '-'."""
    if n is None:
        return "-"
    for suffix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            text = f"{n:.0f}" if suffix == "" else f"{n:.2f}"
            return f"{text}{suffix}{unit}"
        n /= 1000
    return f"{n:.1f}P{unit}"


def rates(new: Sample, old: Sample | None) -> dict[str, Any]:
    """Per-second figures between two samples: services, reals and the totals."""
    dt = new.at - old.at if old else 0.0
    ost = old.status if old else {}
    old_svc = {s["name"]: s for s in ost.get("services", [])}
    old_real = {r["address"]: r for s in ost.get("services", []) for r in s["reals"]}
    old_c: Mapping[str, int] = ost.get("counters", {})
    out: dict[str, Any] = {"services": {}, "reals": {}, "counters": {}}
    for s in new.status["services"]:
        o = old_svc.get(s["name"])
        out["services"][s["name"]] = {
            "pps": _rate(s["packets"], o["packets"] if o else None, dt),
            "bps": _rate(s["bytes"] * 8, o["bytes"] * 8 if o else None, dt),
            "fps": _rate(s.get("new_flows", 0), o.get("new_flows", 0) if o else None, dt),
        }
        for r in s["reals"]:
            o = old_real.get(r["address"])
            out["reals"][r["address"]] = {
                "pps": _rate(r["packets"], o["packets"] if o else None, dt),
                "bps": _rate(r["bytes"] * 8, o["bytes"] * 8 if o else None, dt),
                "fps": _rate(r.get("new_flows", 0), o.get("new_flows", 0) if o else None, dt),
            }
    for name, value in new.status["counters"].items():
        out["counters"][name] = _rate(value, old_c.get(name) if old else None, dt)
    drops_new = sum(v for k, v in new.status["counters"].items() if k.startswith(_DROPS))
    drops_old = sum(v for k, v in old_c.items() if k.startswith(_DROPS)) if old else None
    out["drops"] = _rate(drops_new, drops_old, dt)
    return out


def _sync_lag(st: Mapping[str, Any]) -> str:
    """The cluster's sync lag, once the daemon reports one (status['sync'])."""
    sync = st.get("sync") or {}
    lag = sync.get("lag_ms") if isinstance(sync, dict) else None
    return f"{lag:.0f} ms" if isinstance(lag, int | float) else "n/a"


def render(new: Sample, old: Sample | None) -> Group:
    st, r = new.status, rates(new, old)
    c = r["counters"]
    ifaces = ", ".join(f"{i['name']} ({i['mode']})" for i in st["interfaces"]) or "none"
    conns = st.get("connections")
    header = Text.assemble(
        ("carom top", "bold"),
        f"  instance {st['instance']}  role ",
        (str(st["role"]), "bold magenta"),
        f"  up {st['uptime_s']:.0f}s  XDP {ifaces}  sync lag {_sync_lag(st)}\n",
        f"rx {human(c.get('rx'), 'pps')}  new flows {human(c.get('new_flow'), '/s')}  "
        f"conn hits {human(c.get('conn_hit'), '/s')}  drops {human(r['drops'], '/s')}  "
        f"loops {st['counters'].get('drop_loop', 0)}  connections "
        f"{conns if conns is not None else 'n/a'}",
    )
    table = Table(expand=True, pad_edge=False, box=None, header_style="bold")
    for col, justify in (
        ("SERVICE / REAL", "left"),
        ("STATE", "left"),
        ("WEIGHT", "right"),
        ("PKT/S", "right"),
        ("BIT/S", "right"),
        ("FLOWS/S", "right"),
        ("PACKETS", "right"),
        ("BYTES", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for s in st["services"]:
        sr = r["services"][s["name"]]
        table.add_row(
            Text(f"{s['name']}  {s['vip']}:{s['port']}/{s['protocol']}", style="bold"),
            "",
            "",
            human(sr["pps"]),
            human(sr["bps"]),
            human(sr["fps"]),
            human(s["packets"]),
            human(s["bytes"], "B"),
        )
        for real in s["reals"]:
            rr = r["reals"][real["address"]]
            table.add_row(
                f"  {real['address']}",
                Text(real["state"], style=_STATE_STYLE.get(real["state"], "red")),
                str(real["weight"]),
                human(rr["pps"]),
                human(rr["bps"]),
                human(rr["fps"]),
                human(real["packets"]),
                human(real["bytes"], "B"),
            )
    footer = Text(
        "a real's rows count its traffic over all services (the data plane counts per "
        "real)    q or Ctrl-C: quit",
        style="dim",
    )
    return Group(header, Text(""), table, Text(""), footer)


def fetch(socket_path: str) -> Sample:
    reply = control.request(socket_path, "status", timeout=10)
    if not reply.get("ok"):
        raise ConnectionError(str(reply.get("error")))
    return Sample(time.monotonic(), reply["status"])


@contextlib.contextmanager
def keys() -> Iterator[int | None]:
    """stdin in cbreak mode (keys arrive one by one, no echo), restored on exit;
    None when stdin is not a terminal (then only Ctrl-C ends the view)."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_key(fd: int | None, timeout: float) -> str | None:
    if fd is None:
        time.sleep(timeout)
        return None
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 32).decode(errors="replace") if ready else None


def cmd_top(args: argparse.Namespace) -> int:
    from carom.cli.daemon_cmds import _socket

    if not 0.1 <= args.interval <= 3600:
        print("carom: --interval must be 0.1 to 3600 seconds", file=sys.stderr)
        return 2
    sock = _socket(args)
    console = Console()
    try:
        old, new = None, fetch(sock)
        if args.once:  # two reads, one frame: for scripts and logs
            time.sleep(args.interval)
            old, new = new, fetch(sock)
            console.print(render(new, old))
            return 0
        with keys() as fd, Live(render(new, old), console=console, screen=True) as live:
            while True:
                key = wait_key(fd, args.interval)
                if key is not None and key.lower().startswith("q"):
                    return 0
                old, new = new, fetch(sock)
                live.update(render(new, old))
    except KeyboardInterrupt:
        return 0
    except (ConnectionError, OSError) as exc:
        print(f"carom: {exc}", file=sys.stderr)
        return 1


def register(sub: Any) -> None:
    from carom.cli.daemon_cmds import _refusals

    p = sub.add_parser("top", help="live view of services and reals (q to quit)")
    p.add_argument("-c", "--config", help="config file (to find the daemon's socket)")
    p.add_argument("--socket", help="control socket path (default /run/carom/default.sock)")
    p.add_argument("-n", "--interval", type=float, default=1.0, help="seconds between updates")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(handler=_refusals(cmd_top))
