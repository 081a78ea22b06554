"""HAProxy's agent-check protocol: the real says how it is, in one line.

The agent answers a connection with one line of words separated by spaces,
commas or tabs; text after '#' is a comment. Words (case-insensitive):
`up` or `ready` (serving), `down`, `fail` or `stopped` (not serving),
`maint` (out for maintenance: not serving), `drain` (up, but no new flows),
`NN%` (the weight it wants, as a percentage of the configured weight)."""

from __future__ import annotations

import asyncio
import re

from carom.health.spec import AGENT_LINE_CAP, AgentCheck, CheckResult, Target
from carom.health.tcp import abort, open_stream

_DOWN = {"down", "fail", "stopped", "maint"}
_UP = {"up", "ready"}


def parse_agent_line(line: bytes) -> CheckResult:
    """The verdict of one agent line. Pure, so that the protocol is tested on its own."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return CheckResult(ok=False, reason="agent sent non-ASCII bytes")
    text = text.split("#", 1)[0].strip().lower()
    words = [w for w in re.split(r"[\s,]+", text) if w]
    if not words:
        return CheckResult(ok=False, reason="agent sent an empty line")
    ok = True
    drain = False
    weight: int | None = None
    state = "up"
    for word in words:
        if word in _DOWN:
            ok, state = False, word
        elif word in _UP:
            state = word if ok else state
        elif word == "drain":
            drain = True
        elif re.fullmatch(r"\d{1,3}%", word):
            weight = int(word[:-1])
            if weight > 256:  # HAProxy's limit for a relative weight
                return CheckResult(ok=False, reason=f"agent weight {word} is over 256%")
        else:
            return CheckResult(ok=False, reason=f"agent sent an unknown word {word[:32]!r}")
    parts = [f"agent: {state}"]
    if drain:
        parts.append("drain")
    if weight is not None:
        parts.append(f"weight {weight}%")
    return CheckResult(ok=ok, reason=", ".join(parts), weight_percent=weight, drain=drain)


async def probe(check: AgentCheck, target: Target) -> CheckResult:
    reader, writer = await open_stream(target, limit=AGENT_LINE_CAP)
    try:
        if check.send:
            writer.write(check.send)
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return CheckResult(ok=False, reason="agent closed without a line")
            line = exc.partial  # a last line without newline still counts
        except asyncio.LimitOverrunError:
            return CheckResult(ok=False, reason=f"agent line longer than {AGENT_LINE_CAP} bytes")
        return parse_agent_line(line)
    finally:
        abort(writer)
