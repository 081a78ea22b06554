"""DNS check: a query over UDP or TCP, up when the answer's rcode is the expected one.

dnspython encodes the query, checks that the answer matches it (id, question)
and bounds TCP answers by their 16-bit length prefix."""

from __future__ import annotations

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype

from carom.health.spec import CheckResult, DnsCheck, Target


async def probe(check: DnsCheck, target: Target) -> CheckResult:
    query = dns.message.make_query(check.query, dns.rdatatype.from_text(check.query_type))
    where = str(target.address)
    # The outer timeout (probe.run_check) bounds the whole exchange; dnspython's
    # own timeout is set to the same value so it never waits on its own longer.
    timeout = check.timing.timeout
    if check.transport == "tcp":
        answer = await dns.asyncquery.tcp(query, where, timeout=timeout, port=target.port)
    else:
        answer = await dns.asyncquery.udp(
            query, where, timeout=timeout, port=target.port, raise_on_truncation=False
        )
    rcode = dns.rcode.to_text(answer.rcode())
    if rcode != check.expect_rcode:
        return CheckResult(ok=False, reason=f"rcode {rcode}, expected {check.expect_rcode}")
    return CheckResult(ok=True, reason=f"rcode {rcode}, {len(answer.answer)} answer rrsets")
