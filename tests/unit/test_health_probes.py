"""Every check kind against real servers on 127.0.0.1: the good answers pass, and
every bad server (silent, endless, garbage, wrong answer) fails with a reason,
within the timeout, without holding the event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from carom.health import engine
from carom.health.agent import parse_agent_line
from carom.health.probe import run_check
from carom.health.spec import (
    AgentCheck,
    CheckResult,
    CheckSpec,
    DnsCheck,
    ExecCheck,
    HttpCheck,
    ProbeKey,
    SynCheck,
    Target,
    TcpCheck,
    Timing,
    UdpCheck,
)
from tests.unit.health_servers import (
    _Handler,
    dns_server,
    endless,
    free_port,
    http_server,
    say,
    silent_listener,
    stream_server,
    target,
    tls_server_context,
    udp_server,
)

T = Timing(interval=2.0, timeout=1.0)


def check(spec: CheckSpec, port: int) -> CheckResult:
    return asyncio.run(acheck(spec, port))


async def on_engine(key: ProbeKey) -> CheckResult:
    """The probe through the socket engine (what the scheduler runs for tcp/http)."""
    got: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    eng = engine.SocketEngine()
    try:
        eng.start(key, got.set_result)
        return await got
    finally:
        eng.close()


def _kind(reason: str) -> str:
    """A reason without what a garbage server sent: its bytes are random each
    time (they may even hold a blank line, which ends a head early)."""
    if reason.startswith(("not an HTTP response", "response headers longer")):
        return "garbage"
    return reason


async def acheck(spec: CheckSpec, port: int) -> CheckResult:
    """run_check's verdict; for the kinds the engine runs, the engine's too, which
    must be the same (two implementations of one probe, like model and BPF)."""
    key = ProbeKey(target=target(port), check=spec)
    if not engine.handles(key):
        return await run_check(key)
    result, fast = await asyncio.gather(run_check(key), on_engine(key))
    assert fast.ok == result.ok and _kind(fast.reason) == _kind(result.reason), (fast, result)
    assert fast.elapsed <= spec.timing.timeout + 0.2, fast
    return result


# --- TCP --------------------------------------------------------------------


def test_tcp_connect_passes_on_a_listener_and_fails_on_a_closed_port() -> None:
    with silent_listener() as port:
        good = check(TcpCheck(timing=T), port)
    assert good.ok and good.reason == "connected"
    bad = check(TcpCheck(timing=T), free_port())
    assert not bad.ok and bad.reason == "connection refused"
    assert bad.elapsed < T.timeout


# --- HTTP -------------------------------------------------------------------


def test_http_status_body_and_host_header() -> None:
    async def main() -> None:
        async with http_server() as port:
            ok = await acheck(HttpCheck(timing=T, body=b"carom ok", host="web.test"), port)
            assert ok.ok, ok.reason
            assert ok.reason == "HTTP 200"
            assert _Handler.seen_hosts[-1] == "web.test"
            down = await acheck(HttpCheck(timing=T, path="/down"), port)
            assert not down.ok and down.reason == "HTTP 503, expected 2xx or 3xx"
            wanted = await acheck(HttpCheck(timing=T, path="/down", expect_status=(503,)), port)
            assert wanted.ok
            redirect = await acheck(
                HttpCheck(timing=T, path="/redirect", expect_status=(200,)), port
            )
            assert not redirect.ok and redirect.reason == "HTTP 302, expected [200]"
            nobody = await acheck(HttpCheck(timing=T, body=b"not there"), port)
            assert not nobody.ok and "lack b'not there'" in nobody.reason
            head = await acheck(HttpCheck(timing=T, method="HEAD"), port)
            assert head.ok

    asyncio.run(main())


def test_https_with_and_without_verification() -> None:
    ctx, _ca = tls_server_context("web.test")

    async def main() -> None:
        async with http_server(tls=ctx) as port:
            unverified = await acheck(HttpCheck(timing=T, tls=True, body=b"carom ok"), port)
            assert unverified.ok, unverified.reason
            # verification against the system CAs: the test CA is not one of them
            verified = await acheck(
                HttpCheck(timing=T, tls=True, tls_verify=True, host="web.test"), port
            )
            assert not verified.ok
            assert verified.reason.startswith("TLS: CERTIFICATE_VERIFY_FAILED"), verified.reason
            plain = await acheck(HttpCheck(timing=T), port)  # http to an https port
            assert not plain.ok

    asyncio.run(main())


def test_https_verification_passes_with_a_trusted_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """tls_verify uses the default trust store: point it at the test CA."""
    ctx, ca = tls_server_context("web.test")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        from carom.health import http

        monkeypatch.setitem(http._CONTEXTS, True, http.tls_context(True))

        async def main() -> None:
            async with http_server(tls=ctx) as port:
                good = await acheck(
                    HttpCheck(timing=T, tls=True, tls_verify=True, host="web.test"), port
                )
                assert good.ok, good.reason
                wrong_name = await acheck(
                    HttpCheck(timing=T, tls=True, tls_verify=True, host="other.test"), port
                )
                assert not wrong_name.ok and "TLS" in wrong_name.reason

        asyncio.run(main())


def test_the_engine_reuses_sockets_and_judges_each_probe_on_its_own() -> None:
    """The socket of a passing probe is disconnected (RST) and reused, not
    closed; a failing probe's is closed. Mixed passes and failures (refusal,
    timeout, error reply) each get their own verdict (no late event of a
    socket's previous probe leaks in), and a server sees a new connection (a
    new source port) every time."""
    short = Timing(interval=1.0, timeout=0.3)

    async def main() -> None:
        async with http_server() as web:
            with silent_listener() as silent:
                plan: list[tuple[CheckSpec, int, str]] = [
                    (TcpCheck(timing=T), web, "connected"),
                    (TcpCheck(timing=T), free_port(), "connection refused"),
                    (HttpCheck(timing=short), silent, "timed out after 0.3 s"),
                    (HttpCheck(timing=T), web, "HTTP 200"),
                    (HttpCheck(timing=T, path="/down"), web, "HTTP 503, expected 2xx or 3xx"),
                    (HttpCheck(timing=T, body=b"carom ok"), web, "HTTP 200"),
                ]
                eng = engine.SocketEngine()
                loop = asyncio.get_running_loop()
                seen = len(_Handler.peers)
                try:
                    fds = []
                    for spec, port, want in plan * 3:
                        got: asyncio.Future[CheckResult] = loop.create_future()
                        p = eng.start(ProbeKey(target=target(port), check=spec), got.set_result)
                        fds.append(p.fd)
                        result = await got
                        assert result.reason == want, (spec, result)
                        assert eng.in_flight == 0
                    assert eng.idle == 1  # the last probe passed: its socket is kept
                    # a probe after a pass of the same kind (refused after connected,
                    # 503 after 200) reuses its socket; tcp and http sockets are
                    # pooled apart (an http socket holds the handshake's ACK back)
                    steps = plan * 3
                    passed = [
                        i
                        for i, (spec, _, w) in enumerate(steps[:-1])
                        if w in ("connected", "HTTP 200") and type(steps[i + 1][0]) is type(spec)
                    ]
                    assert len(passed) == 3 * 2, passed
                    assert all(fds[i + 1] == fds[i] for i in passed), fds
                    # all at once: each gets its own socket, all come back to the pool
                    futures = []
                    for spec, port, _ in plan:
                        got = loop.create_future()
                        eng.start(ProbeKey(target=target(port), check=spec), got.set_result)
                        futures.append(got)
                    results = await asyncio.gather(*futures)
                    assert [r.reason for r in results] == [want for _, _, want in plan]
                    assert eng.idle == 3  # the three that passed
                    eng.drop_idle()  # what the scheduler does at every update
                    assert eng.idle == 0
                finally:
                    eng.close()
        peers = _Handler.peers[seen:]
        assert len(peers) == 4 * 3 and len(set(peers)) == len(peers), peers

    asyncio.run(main())


def _segments_in(sock: socket.socket) -> int:
    """Segments the kernel has received on this TCP socket (tcp_info.tcpi_segs_in)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 140)[0])


def test_an_http_probe_sends_the_handshake_ack_with_its_request() -> None:
    """The engine's HTTP socket holds the handshake's last ACK back until the
    request (TCP_DEFER_ACCEPT): the server receives one segment fewer before the
    request than from a client that connects, then sends. Counted by the
    server's kernel, compared with a plain client in the same run."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[int] = []

    def serve(n: int) -> None:
        for _ in range(n):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(2.0)
                conn.recv(4096)
                seen.append(_segments_in(conn))
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nok")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = loop.run_in_executor(None, serve, 3)
        with socket.create_connection(("127.0.0.1", port)) as plain:
            await asyncio.sleep(0.05)  # the handshake's ACK has gone on its own
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            await loop.run_in_executor(None, plain.recv, 4096)
        eng = engine.SocketEngine()
        try:
            for _ in range(2):  # a new socket, then the same one from the pool
                got: asyncio.Future[CheckResult] = loop.create_future()
                eng.start(ProbeKey(target(port), HttpCheck(timing=T)), got.set_result)
                assert (await got).reason == "HTTP 200"
            assert eng.idle == 1
        finally:
            eng.close()
        await server

    try:
        asyncio.run(main())
    finally:
        listener.close()
    plain, *probes = seen
    assert probes == [plain - 1, plain - 1], seen


def test_a_pooled_socket_taken_mid_batch_ignores_its_idle_event() -> None:
    """A pooled socket has an event pending from its disconnect (read in its idle
    state: ERR|HUP). If a probe takes that socket while the batch holding the
    event is being handled (a waiting probe started by another's result), the
    event must not count for the new probe: here it would have failed a probe
    that actually times out with `connection closed`."""
    short = Timing(interval=1.0, timeout=0.5)

    class Spy:
        """The engine's epoll set, with a hook run right after a read."""

        def __init__(self, real: Any) -> None:
            self.real, self.hook, self.seen = real, None, []  # type: ignore[var-annotated]

        def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
            events = self.real.poll(timeout, most)
            hook, self.hook = self.hook, None
            if hook is not None:
                self.seen = list(events)
                hook()
            return events  # type: ignore[no-any-return]

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with silent_listener() as silent, silent_listener() as other:
            eng = engine.SocketEngine()
            spy = Spy(eng._ep)
            eng._ep = spy  # type: ignore[assignment]
            try:
                first: asyncio.Future[CheckResult] = loop.create_future()
                p = eng.start(ProbeKey(target(other), TcpCheck(timing=T)), first.set_result)
                assert (await first).ok and eng.idle == 1
                pooled = p.fd
                second: asyncio.Future[CheckResult] = loop.create_future()
                key = ProbeKey(target(silent), HttpCheck(timing=short))
                spy.hook = lambda: eng.start(key, second.set_result)
                # a probe of another family (another pool) makes the next tick
                third: asyncio.Future[CheckResult] = loop.create_future()
                with socket.socket(socket.AF_INET6) as six:
                    six.bind(("::1", 0))
                    six.listen(8)
                    local6 = IPv6Address("::1")
                    tick = ProbeKey(
                        Target(address=local6, port=six.getsockname()[1], real=local6),
                        TcpCheck(timing=T),
                    )
                    eng.start(tick, third.set_result)
                    assert (await third).ok
                result = await second
                assert any(fd == pooled for fd, _ in spy.seen), spy.seen  # the race ran
                assert result.reason == "timed out after 0.5 s", result
            finally:
                eng.close()

    asyncio.run(main())


# --- hostile servers ----------------------------------------------------------


def test_hanging_server_and_stalled_tls_handshake_time_out() -> None:
    with silent_listener() as port:
        for spec in (
            HttpCheck(timing=T),
            HttpCheck(timing=T, tls=True),
            AgentCheck(timing=T),
        ):
            result = check(spec, port)
            assert not result.ok
            assert result.reason == "timed out after 1 s"
            assert T.timeout <= result.elapsed < T.timeout + 0.5


def test_endless_and_garbage_responses_are_cut_at_the_caps() -> None:
    async def main() -> None:
        cases: list[tuple[CheckSpec, object, str]] = [
            # a gigabyte and more of one header line: the line cap stops it
            (HttpCheck(timing=T), lambda r, w: endless(r, w, b"x" * 65536), "longer than"),
            # endless small header lines: the head cap stops it
            (
                HttpCheck(timing=T),
                lambda r, w: endless(r, w, b"HTTP/1.0 200 OK\r\nX: y\r\n" + b"X: y\r\n" * 4000),
                "headers longer than",
            ),
            # a valid head then an endless body without the expected text
            (
                HttpCheck(timing=T, body=b"carom ok"),
                lambda r, w: endless(r, w, b"HTTP/1.0 200 OK\r\n\r\n" + b"z" * 65536),
                "first 65536 bytes lack",
            ),
            # garbage
            (HttpCheck(timing=T), lambda r, w: say(w, os.urandom(300) + b"\n\n"), ""),
            (AgentCheck(timing=T), lambda r, w: endless(r, w, b"u" * 65536), "longer than"),
            (AgentCheck(timing=T), lambda r, w: say(w, b"\xff\xfe garbage\n"), "non-ASCII"),
            (AgentCheck(timing=T), lambda r, w: say(w, b"banana\n"), "unknown word"),
        ]
        for spec, handler, reason in cases:
            async with stream_server(handler) as port:  # type: ignore[arg-type]
                result = await acheck(spec, port)
            assert not result.ok, (spec, result)
            assert reason in result.reason, result.reason
            assert result.elapsed < T.timeout  # cut at the cap, not by the timeout

    asyncio.run(main())


def test_bad_probes_run_together_without_blocking_the_loop() -> None:
    """Hostile servers and commands, all at once: each ends within its timeout and
    a ticker keeps running meanwhile (the loop is never held)."""

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        flood = lambda r, w: endless(r, w, os.urandom(65536))  # noqa: E731
        with silent_listener() as quiet:
            async with stream_server(flood) as noisy:
                tick = asyncio.create_task(ticker())
                start = time.monotonic()
                results = await asyncio.gather(
                    acheck(HttpCheck(timing=T), quiet),
                    acheck(HttpCheck(timing=T, tls=True), quiet),
                    acheck(HttpCheck(timing=T, body=b"x"), noisy),
                    acheck(ExecCheck(timing=T, command=("yes",)), 0),
                    acheck(ExecCheck(timing=T, command=("sleep", "30")), 0),
                    acheck(AgentCheck(timing=T), noisy),
                )
                took = time.monotonic() - start
                tick.cancel()
        assert all(not r.ok for r in results), results
        assert all(r.reason for r in results)
        assert took < T.timeout + 1.0
        assert ticks > 20  # 100 a second when free; 2 shared cores leave far fewer

    asyncio.run(main())


# --- UDP ----------------------------------------------------------------------


def test_udp_reply_expected_missing_and_refused() -> None:
    async def main() -> None:
        async with udp_server(lambda d: b"PONG " + d if d.startswith(b"PING") else None) as port:
            good = await acheck(UdpCheck(timing=T, send=b"PING 1", expect=b"PONG"), port)
            assert good.ok and good.reason == "reply of 11 bytes"
            wrong = await acheck(UdpCheck(timing=T, send=b"PING", expect=b"HELLO"), port)
            assert not wrong.ok and "lacks b'HELLO'" in wrong.reason
            silent = await acheck(UdpCheck(timing=T, send=b"nothing"), port)
            assert not silent.ok and silent.reason == "timed out after 1 s"
        refused = await acheck(UdpCheck(timing=T, send=b"PING"), free_port(socket.SOCK_DGRAM))
        assert not refused.ok and refused.reason == "connection refused"

    asyncio.run(main())


# --- DNS ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_rcode(transport: str) -> None:
    async def main() -> None:
        async with dns_server() as port:
            good = await acheck(
                DnsCheck(timing=T, query="www.example.test", query_type="A", transport=transport),
                port,
            )
            assert good.ok and good.reason.startswith("rcode NOERROR"), good.reason
            refused = await acheck(DnsCheck(timing=T, query="other.", transport=transport), port)
            assert not refused.ok and refused.reason == "rcode REFUSED, expected NOERROR"
            nx = await acheck(
                DnsCheck(
                    timing=T,
                    query="missing.example.test",
                    transport=transport,
                    expect_rcode="NXDOMAIN",
                ),
                port,
            )
            assert nx.ok

    asyncio.run(main())


def test_dns_garbage_and_silence() -> None:
    async def main() -> None:
        async with udp_server(lambda d: os.urandom(40)) as port:
            garbage = await acheck(DnsCheck(timing=T), port)
        assert not garbage.ok and garbage.reason  # a decoding error, with its name
        async with stream_server(lambda r, w: endless(r, w, b"\xff" * 4096)) as port:
            tcp = await acheck(DnsCheck(timing=T, transport="tcp"), port)
        assert not tcp.ok and tcp.reason

    asyncio.run(main())


# --- exec ---------------------------------------------------------------------


def test_exec_exit_status_environment_and_no_shell() -> None:
    ok = check(ExecCheck(timing=T, command=("/bin/sh", "-c", 'test "$CAROM_PORT" = 8080')), 8080)
    assert ok.ok, ok.reason
    bad = check(ExecCheck(timing=T, command=("/bin/sh", "-c", "echo sick; exit 3")), 80)
    assert not bad.ok and bad.reason == "exit 3: sick"
    # argv is passed as given: no shell sees '$(...)' or ';'
    literal = check(ExecCheck(timing=T, command=("echo", "$(id); rm -rf /")), 80)
    assert literal.ok and literal.reason == "exit 0: $(id); rm -rf /"
    missing = check(ExecCheck(timing=T, command=("/nonexistent/check",)), 80)
    assert not missing.ok and missing.reason == "no such file or directory"


def test_exec_through_the_vip_path_command_line_and_missing_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """via: vip: a fixed script joins the real's cgroup and nsenter enters the
    probe namespace; the configured argv follows as arguments, untouched. Without
    the path set up the probe fails with the reason, it never runs unmarked."""
    from carom.health import exec_path
    from carom.health.spec import Target, Via

    via = Via(netns="carom-hc-x", mark=1001)
    cgroup = tmp_path / "carom-hc-x" / "1001"
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.procs").write_text("")
    monkeypatch.setattr(exec_path, "cgroup_of", lambda v: str(cgroup) if v == via else None)
    argv = exec_path.argv(via, ("echo", "$(id); rm -rf /"))
    assert argv == [
        "/bin/sh",
        "-c",
        'echo 0 > "$0" && exec "$@"',
        str(cgroup / "cgroup.procs"),
        "nsenter",
        "--net=/run/netns/carom-hc-x",
        "--",
        "echo",
        "$(id); rm -rf /",
    ]
    vip = IPv4Address("192.0.2.100")
    for missing in (Via(netns="", mark=0), Via(netns="carom-hc-x", mark=1002)):
        key = ProbeKey(
            Target(address=vip, port=80, real=vip, via=missing),
            ExecCheck(timing=T, command=("/bin/true",)),
        )
        result = asyncio.run(run_check(key))
        assert not result.ok and "exec via: vip" in result.reason, result


def test_exec_timeout_kills_the_whole_process_group() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pidfile = Path(tmp) / "pid"
        script = f"sleep 30 & echo $! > {pidfile}; wait"
        result = check(ExecCheck(timing=T, command=("/bin/sh", "-c", script)), 80)
        assert not result.ok and result.reason == "timed out after 1 s"
        child = int(pidfile.read_text())
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.02)
        assert not _alive(child), "the command's child survived the timeout"


def test_exec_that_prints_forever_is_bounded() -> None:
    result = check(ExecCheck(timing=T, command=("yes", "spam")), 80)
    assert not result.ok and result.reason == "timed out after 1 s"
    quick = check(ExecCheck(timing=T, command=("head", "-c", "1000000", "/dev/zero")), 80)
    assert quick.ok and "(1000000 bytes of output, kept 8192)" in quick.reason


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead


# --- agent --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "ok", "drain", "weight", "reason"),
    [
        (b"up\n", True, False, None, "agent: up"),
        (b"ready 75%\r\n", True, False, 75, "agent: ready, weight 75%"),
        (b"drain\n", True, True, None, "agent: up, drain"),
        (b"50%,drain # busy\n", True, True, 50, "agent: up, drain, weight 50%"),
        (b"down # disk full\n", False, False, None, "agent: down"),
        (b"maint\n", False, False, None, "agent: maint"),
        (b"up stopped\n", False, False, None, "agent: stopped"),
        (b"UP\n", True, False, None, "agent: up"),
        (b"\n", False, False, None, "agent sent an empty line"),
        (b"300%\n", False, False, None, "agent weight 300% is over 256%"),
    ],
)
def test_agent_line(line: bytes, ok: bool, drain: bool, weight: int | None, reason: str) -> None:
    result = parse_agent_line(line)
    assert (result.ok, result.drain, result.weight_percent, result.reason) == (
        ok,
        drain,
        weight,
        reason,
    )


def test_agent_over_tcp_with_send_string() -> None:
    async def main() -> None:
        async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            asked = await reader.readline()
            writer.write(b"up 40%\n" if asked == b"status\n" else b"down\n")
            await writer.drain()

        async with stream_server(agent) as port:
            result = await acheck(AgentCheck(timing=T, send=b"status\n"), port)
            assert result.ok and result.weight_percent == 40
        async with stream_server(lambda r, w: say(w, b"drain")) as port:  # no newline, then EOF
            result = await acheck(AgentCheck(timing=T), port)
            assert result.ok and result.drain
        async with stream_server(lambda r, w: None) as port:  # closes at once
            result = await acheck(AgentCheck(timing=T), port)
            assert not result.ok and result.reason == "agent closed without a line"

    asyncio.run(main())


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("Linux only", allow_module_level=True)


# --- TCP half-open (syn) ------------------------------------------------------


@pytest.mark.root
def test_syn_half_open_never_completes_a_connection() -> None:
    """SYN-ACK from a listener: up, and the listener's application never accepts
    a connection (the kernel's RST ends the handshake). A closed port: RST."""

    async def main() -> None:
        accepted = 0

        def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1

        async with stream_server(count) as port:
            results = [await acheck(SynCheck(timing=T), port) for _ in range(5)]
            await asyncio.sleep(0.2)
        assert all(r.ok and r.reason == "SYN-ACK" for r in results), results
        assert accepted == 0
        closed = await acheck(SynCheck(timing=T), free_port())
        assert not closed.ok and closed.reason == "RST: port closed"

    asyncio.run(main())


@pytest.mark.root
def test_syn_half_open_over_ipv6() -> None:
    """The same on ::1: the IPv6 raw socket sees no IP header, the filter works
    on the TCP header and the source is checked on receipt."""
    loop6 = IPv6Address("::1")

    async def main() -> None:
        accepted = 0

        async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        server = await asyncio.start_server(count, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            key = ProbeKey(Target(address=loop6, port=port, real=loop6), SynCheck(timing=T))
            results = [await run_check(key) for _ in range(3)]
            await asyncio.sleep(0.2)
        finally:
            server.close()
        assert all(r.ok and r.reason == "SYN-ACK" for r in results), results
        assert accepted == 0
        with socket.socket(socket.AF_INET6) as s:  # a port nothing listens on
            s.bind(("::1", 0))
            closed_port = s.getsockname()[1]
        key = ProbeKey(Target(address=loop6, port=closed_port, real=loop6), SynCheck(timing=T))
        closed = await run_check(key)
        assert not closed.ok and closed.reason == "RST: port closed", closed

    asyncio.run(main())


def test_syn_segment_checksum_golden_ipv6() -> None:
    """IPv6 pseudo-header (RFC 8200 8.1): addresses, 32-bit length, next header."""
    from carom.health.syn import RST, checksum, syn_segment

    src, dst = "2001:db8::2", "2001:db8::11"
    seg = syn_segment(src, dst, 40000, 80, 7)
    pseudo = IPv6Address(src).packed + IPv6Address(dst).packed + bytes([0, 0, 0, 24, 0, 0, 0, 6])
    assert checksum(pseudo + seg) == 0
    rst = syn_segment(src, dst, 40000, 80, 8, flags=RST)  # the RST sent on the VIP path
    assert len(rst) == 20 and rst[13] == RST and rst[4:8] == bytes.fromhex("00000008")
    pseudo = pseudo[:35] + bytes([20]) + pseudo[36:]
    assert checksum(pseudo + rst) == 0


def test_syn_segment_checksum_golden() -> None:
    """A SYN built here, checked against the RFC 1071 sum: the checksum over the
    pseudo-header and the segment (with its checksum) folds to zero."""
    from carom.health.syn import checksum, syn_segment

    seg = syn_segment("192.0.2.2", "192.0.2.11", 40000, 80, 0x01020304)
    assert seg[:4] == bytes.fromhex("9c400050") and seg[4:8] == bytes.fromhex("01020304")
    assert seg[13] == 0x02 and len(seg) == 24
    pseudo = bytes([192, 0, 2, 2, 192, 0, 2, 11, 0, 6, 0, 24])
    assert checksum(pseudo + seg) == 0
