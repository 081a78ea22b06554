"""`carom trace [FILTER]`: sampled forwarding decisions of the running data
plane, printed one per line and optionally written as pcap (carom.ops.trace).

The daemon switches tracing on for as long as this command keeps its control
connection alive (it renews its lease every second) and off when it goes, so a
trace never stays on by accident (daemon/trace_task.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import IO, Any

from carom.cli.daemon_cmds import _add_target, _refusals, _Refused, _socket
from carom.daemon import control


def cmd_trace(args: argparse.Namespace) -> int:
    from carom.ops import trace

    try:
        filt = trace.parse_filter(args.filter)
    except ValueError as exc:
        raise _Refused(str(exc), 2) from None
    if args.sample < 1:
        raise _Refused("--sample N: one decision in N, N of 1 or more", 2)
    pcap_file: IO[bytes] | None = None
    pcap: trace.PcapWriter | None = None
    if args.pcap:
        try:
            pcap_file = open(args.pcap, "wb")  # noqa: SIM115 (closed in finally)
        except OSError as exc:
            raise _Refused(f"cannot write {args.pcap}: {exc.strerror}") from None
        pcap = trace.PcapWriter(pcap_file)
    deadline = time.monotonic() + args.duration if args.duration else None
    shown = 0
    stats: dict[str, Any] = {}
    replies = control.stream(_socket(args), "trace", sample=args.sample, **filt.kernel_args())
    try:
        for msg in replies:
            if "ok" in msg and not msg["ok"]:
                raise _Refused(str(msg.get("error")))
            if "trace" in msg:
                print(_started(msg["trace"], args), file=sys.stderr, flush=True)
            elif "stats" in msg:
                stats = msg["stats"]
            elif "record" in msg:
                rec = trace.TraceRecord.from_json(msg["record"])
                if not filt.matches(rec):
                    continue
                shown += 1
                if pcap is not None:
                    pcap.write(rec)
                if args.json:
                    print(json.dumps(msg["record"]), flush=True)
                elif pcap is None or args.print:
                    print(trace.render(rec), flush=True)
                if args.count and shown >= args.count:
                    break
            if deadline is not None and time.monotonic() >= deadline:
                break
        else:
            print("carom: the daemon ended the trace (it stopped?)", file=sys.stderr)
    except ConnectionError as exc:
        raise _Refused(str(exc)) from None
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            replies.close()  # the daemon switches tracing off
        if pcap_file is not None:
            pcap_file.close()
    if not stats:  # ended (--count, --duration) before the daemon's first batch report
        print(f"{shown} shown", file=sys.stderr)
        return 0
    lost = stats.get("dropped", "?")
    print(
        f"{shown} shown; the data plane sampled {stats.get('sampled', '?')} decisions, "
        f"{lost} lost"
        + (
            " (the trace ring was full: raise --sample or narrow the filter)"
            if isinstance(lost, int) and lost
            else ""
        ),
        file=sys.stderr,
    )
    return 0


def _started(t: dict[str, Any], args: argparse.Namespace) -> str:
    what = [f"one decision in {t['sample']}"]
    if t.get("host"):
        what.append(f"host {t['host']}")
    if t.get("port"):
        what.append(f"port {t['port']}")
    out = "tracing " + ", ".join(what)
    if args.pcap:
        out += f", writing {args.pcap}"
    return out + " (Ctrl-C stops)"


def register(sub: Any) -> None:
    from carom.ops.trace import FILTER_HELP

    p = sub.add_parser(
        "trace",
        help="stream sampled forwarding decisions from the data plane (and write pcap)",
        description="Sampled decisions of the running data plane: tuple, verdict, "
        "reason, service and real, one per line; --pcap writes the frames as they "
        "left XDP (tcpdump cannot see XDP-forwarded frames). Tracing is on only "
        f"while this runs. FILTER: {FILTER_HELP}.",
    )
    _add_target(p)
    p.add_argument(
        "--sample",
        type=int,
        default=1,
        metavar="N",
        help="record one matching decision in N (default 1: all; on a busy director "
        "use e.g. 1000, or a host/port filter)",
    )
    p.add_argument("--pcap", "-w", metavar="FILE", help="write the frames to a pcap file")
    p.add_argument("--print", action="store_true", help="with --pcap: print the lines too")
    p.add_argument("--json", action="store_true", help="one JSON object per record")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N records")
    p.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds")
    p.add_argument("filter", nargs="*", help="e.g. host 198.51.100.10 and port 80")
    p.set_defaults(handler=_refusals(cmd_trace))
