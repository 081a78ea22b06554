"""keepalived's health checkers as carom checks (docs/config.md `check`).

keepalived checks a real with a checker block inside its `real_server`
(TCP_CHECK, HTTP_GET, ...) and times it with `delay_loop` (the virtual_server's,
or the real's own), the checker's `connect_timeout`, `retry` and
`delay_before_retry`. carom has one check per real with `interval`, `timeout`,
`fall` and `fast_interval`: this module maps one onto the other and says what
it could not carry (a second checker, an MD5 digest, ...). Why carry the timing
over rather than use carom's faster defaults: the operator chose how often a
real may be probed (a MISC_CHECK script can be expensive); they can drop the
fields to get carom's 1 s default."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from carom.importers.kaconf import Stmt

# carom's limits for the timing fields (docs/config.md `check`)
INTERVAL_MAX = 3600.0
TIMEOUT_DEFAULT = 5.0  # keepalived's connect_timeout when none is given
FALL_MAX = 100

KINDS: Mapping[str, str] = {
    "TCP_CHECK": "tcp",
    "HTTP_GET": "http",
    "SSL_GET": "https",
    "MISC_CHECK": "exec",
    "DNS_CHECK": "dns",
    "UDP_CHECK": "udp",
    "SMTP_CHECK": "tcp",
}
NOT_CONVERTED: Mapping[str, str] = {
    "PING_CHECK": "carom has no ICMP echo check (it would not test the service anyway)",
    "FILE_CHECK": "carom has no file-watching check: use an exec check that tests the file",
    "BFD_CHECK": "carom has no BFD",
}
# checker keywords consumed here; any other is named in a warning
_HANDLED = {
    "connect_port",
    "connect_timeout",
    "retry",
    "nb_get_retry",
    "delay_before_retry",
    "url",
    "virtualhost",
    "misc_path",
    "misc_timeout",
    "type",
    "name",
    "payload",
    "require_reply",
    "warmup",
}

Note = Callable[[int, str], None]


@dataclass(frozen=True)
class Timing:
    """The keepalived timing that applies to a real's checkers."""

    delay_loop: float | None = None  # seconds between checks (virtual_server or real_server)
    connect_timeout: float | None = None  # a real_server/virtual_server level default
    virtualhost: str | None = None  # the virtual_server's HTTP Host header


def _number(stmt: Stmt | None) -> float | None:
    if stmt is None or not stmt.args:
        return None
    try:
        return float(stmt.args[0])
    except ValueError:
        return None


def timing_of(block: Stmt, outer: Timing | None = None) -> Timing:
    """The timing a virtual_server (outer None) or a real_server block sets."""
    base = outer or Timing()
    delay = _number(block.first("delay_loop"))
    timeout = _number(block.first("connect_timeout"))
    host = block.first("virtualhost")
    return Timing(
        delay_loop=delay if delay is not None else base.delay_loop,
        connect_timeout=timeout if timeout is not None else base.connect_timeout,
        virtualhost=host.args[0] if host is not None and host.args else base.virtualhost,
    )


def check_of(check: Stmt, timing: Timing, where: str, note: Note) -> dict[str, Any] | None:
    """The carom check for one keepalived checker block, or None (with a note)."""
    kw = check.keyword
    if kw in NOT_CONVERTED:
        note(
            check.line,
            f"{where}: {kw} not carried over: {NOT_CONVERTED[kw]}; the real "
            "has no check in carom (always considered up)",
        )
        return None
    out: dict[str, Any] = {"kind": KINDS[kw]}
    port = _number(check.first("connect_port"))
    if port is not None and 1 <= port <= 65535:
        out["port"] = int(port)
    if kw in ("HTTP_GET", "SSL_GET"):
        _http(check, timing, out, where, note)
    elif kw == "MISC_CHECK":
        path = check.first("misc_path")
        argv = shlex.split(" ".join(path.args)) if path is not None and path.args else []
        if not argv:
            note(check.line, f"{where}: MISC_CHECK without misc_path not carried over")
            return None
        out = {"kind": "exec", "command": argv}
        if check.first("misc_dynamic") is not None:
            note(
                check.line,
                f"{where}: MISC_CHECK misc_dynamic not carried over: the exit "
                "status only says up (0) or down; use an agent check to set weights",
            )
    elif kw == "DNS_CHECK":
        qtype, name = check.first("type"), check.first("name")
        if qtype is not None and qtype.args:
            out["query_type"] = qtype.args[0].upper()
        if name is not None and name.args:
            out["query"] = name.args[0]
    elif kw == "UDP_CHECK":
        payload = check.first("payload")
        if payload is not None and payload.args:
            try:
                out["send"] = bytes.fromhex("".join(payload.args)).decode("latin-1")
            except ValueError:
                note(payload.line, f"{where}: UDP_CHECK payload is not hex: not carried over")
        note(
            check.line,
            f"{where}: UDP_CHECK converted to a udp check, which needs a "
            "reply datagram (keepalived passes on silence unless require_reply is set)",
        )
    elif kw == "SMTP_CHECK":
        note(
            check.line,
            f"{where}: SMTP_CHECK converted to a TCP connect check: the "
            "greeting and HELO exchange are not checked",
        )
    _timing(check, timing, out, where, note)
    for sub in check.block or ():
        if sub.keyword not in _HANDLED and not (
            kw == "MISC_CHECK" and sub.keyword == "misc_dynamic"
        ):
            note(sub.line, f"{where}: {kw} {sub.keyword} not carried over: carom has no equivalent")
    return out


def _http(check: Stmt, timing: Timing, out: dict[str, Any], where: str, note: Note) -> None:
    urls = check.children("url")
    if urls:
        url = urls[0]
        path = url.first("path")
        if path is not None and path.args:
            out["path"] = path.args[0] if path.args[0].startswith("/") else "/" + path.args[0]
        status = url.first("status_code")
        codes = [int(a) for a in (status.args if status else ()) if a.isdigit()]
        if codes:
            out["expect_status"] = codes
        if url.first("digest") is not None:
            note(
                url.line,
                f"{where}: {check.keyword} digest not carried over: carom matches "
                "the status (and optionally a body substring), not an MD5 of the body",
            )
        if len(urls) > 1:
            note(
                urls[1].line,
                f"{where}: {check.keyword} has {len(urls)} urls: only the "
                "first is checked in carom",
            )
    host = check.first("virtualhost")
    host_name = host.args[0] if host is not None and host.args else timing.virtualhost
    if host_name:
        out["host"] = host_name


def _timing(check: Stmt, timing: Timing, out: dict[str, Any], where: str, note: Note) -> None:
    interval = timing.delay_loop
    if interval is not None:
        interval = min(max(interval, 0.1), INTERVAL_MAX)
        out["interval"] = interval
    timeout = _number(check.first("connect_timeout", "misc_timeout"))
    if timeout is None:
        timeout = timing.connect_timeout
    if timeout is None and interval is not None:
        timeout = TIMEOUT_DEFAULT
    if timeout is not None:
        limit = interval if interval is not None else 1.0  # carom's default interval
        if timeout > limit:
            note(
                check.line,
                f"{where}: timeout {timeout:g} s is longer than the interval "
                f"{limit:g} s: carom needs timeout <= interval, wrote {limit:g}",
            )
            timeout = limit
        out["timeout"] = max(timeout, 0.05)
    retry = _number(check.first("retry", "nb_get_retry"))
    if retry is not None:
        out["fall"] = min(int(retry) + 1, FALL_MAX)  # keepalived retries, then fails
    delay = _number(check.first("delay_before_retry"))
    if delay is not None:
        limit = interval if interval is not None else 1.0
        out["fast_interval"] = min(max(delay, 0.05), limit)
