"""DNS check: a query over UDP or TCP, up when the answer's rcode is the expected one.

dnspython encodes the query and decodes the answer (and says whether the answer
belongs to the query); the sockets are ours, so a DNS probe can take the VIP
path like the others. UDP answers are cut at one datagram, TCP answers are
bounded by their 16-bit length prefix."""

from __future__ import annotations

import asyncio

import dns.message
import dns.rcode
import dns.rdatatype

from carom.health.spec import UDP_REPLY_CAP, CheckResult, DnsCheck, Target
from carom.health.tcp import abort, open_stream
from carom.health.udp import open_datagram


async def _over_udp(wire: bytes, target: Target) -> bytes:
    transport, protocol = await open_datagram(target)
    try:
        transport.sendto(wire)
        return await protocol.reply  # a stray datagram is judged (and fails) below
    finally:
        transport.abort()


async def _over_tcp(wire: bytes, target: Target) -> bytes:
    reader, writer = await open_stream(target, limit=UDP_REPLY_CAP)
    try:
        writer.write(len(wire).to_bytes(2, "big") + wire)
        size = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(size)
    finally:
        abort(writer)


async def probe(check: DnsCheck, target: Target) -> CheckResult:
    query = dns.message.make_query(check.query, dns.rdatatype.from_text(check.query_type))
    wire = query.to_wire()
    try:
        if check.transport == "tcp":
            data = await _over_tcp(wire, target)
        else:
            data = await _over_udp(wire, target)
    except asyncio.IncompleteReadError:
        return CheckResult(ok=False, reason="server closed before a whole answer")
    answer = dns.message.from_wire(data)
    if not query.is_response(answer):
        return CheckResult(ok=False, reason="the answer does not match the query (id or question)")
    rcode = dns.rcode.to_text(answer.rcode())
    if rcode != check.expect_rcode:
        return CheckResult(ok=False, reason=f"rcode {rcode}, expected {check.expect_rcode}")
    return CheckResult(ok=True, reason=f"rcode {rcode}, {len(answer.answer)} answer rrsets")
