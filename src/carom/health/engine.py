"""TCP connect and plain HTTP probes without a coroutine: non-blocking sockets
on one epoll set, driven by callbacks.

These two kinds run every second for every real, so their cost is the cost of
health checking (issue: 1,000 reals x 2 checks on at most 10% of a core). A
coroutine per probe costs a task, a timeout context, a future per socket wait
and several event-loop round trips; here a probe is one small object, its
socket's events arrive in batches through one epoll fd registered with the
event loop, and timeouts share one timer that fires at most every TICK seconds.

Semantics are those of tcp.probe and http._probe_plain (same reasons, same
caps): connect, for HTTP send the request and read the head (at most
HTTP_HEAD_CAP bytes) and, if `body` is set, up to HTTP_BODY_CAP bytes of body;
every socket is closed with RST."""

from __future__ import annotations

import _socket
import asyncio
import errno
import functools
import heapq
import itertools
import os
import select
import socket
import time
from collections.abc import Callable

from carom.health.http import _head_end, build_request, judge_body, judge_head
from carom.health.probe import describe_error
from carom.health.spec import (
    HTTP_BODY_CAP,
    HTTP_HEAD_CAP,
    CheckResult,
    HttpCheck,
    ProbeKey,
    TcpCheck,
)
from carom.health.tcp import _LINGER_ZERO
from carom.health.vip_path import socket_in

_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
TICK = 0.005  # seconds: timeouts are checked at most this often (batched)
Done = Callable[[CheckResult], None]
_EPOLLOUT = select.EPOLLOUT
_EPOLLIN = select.EPOLLIN
_REASONS = {errno.ECONNRESET: "connection reset", errno.ECONNREFUSED: "connection refused"}


def handles(key: ProbeKey) -> bool:
    """Whether this engine runs the key's probe (else the coroutine path does)."""
    check = key.check
    return isinstance(check, TcpCheck) or (isinstance(check, HttpCheck) and not check.tls)


def _reason(err: int) -> str:
    return _REASONS.get(err) or os.strerror(err).lower()


class SocketProbe:
    """One probe in flight: its socket, what it has read, and whom to tell."""

    __slots__ = (
        "buf",
        "deadline",
        "done",
        "fd",
        "key",
        "reading",
        "request",
        "sock",
        "started",
        "status",
    )

    def __init__(self, key: ProbeKey, done: Done, started: float) -> None:
        self.key = key
        self.done: Done | None = done  # None once finished
        self.started = started
        self.deadline = started + key.check.timing.timeout
        self.sock: _socket.socket | None = None
        self.fd = -1
        check = key.check
        self.request = _request(key) if isinstance(check, HttpCheck) else None
        self.reading = False  # HTTP: the request is sent, events are the reply
        self.buf = bytearray()
        self.status = 0  # HTTP status once the head passed, while the body is read


class SocketEngine:
    """Runs SocketProbes on one epoll set registered with the running loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        self._ep = select.epoll()
        self._loop.add_reader(self._ep.fileno(), self._ready)
        self._by_fd: dict[int, SocketProbe] = {}
        self._deadlines: list[tuple[float, int, SocketProbe]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @property
    def in_flight(self) -> int:
        return len(self._by_fd)

    def start(
        self, key: ProbeKey, done: Done, sockaddr: tuple[str, int] | None = None
    ) -> SocketProbe:
        """Start a probe; `done` gets its result exactly once (maybe before this
        returns, for a connection refused at once), unless it is aborted."""
        p = SocketProbe(key, done, self._clock())
        target = key.target
        sock: _socket.socket
        try:
            if target.via is not None:
                sock = socket_in(target.via, _family(key), socket.SOCK_STREAM)
            else:
                # the C socket type: socket.socket's Python layer (its __init__,
                # its close bookkeeping) is a tenth of a probe's own cost
                sock = _socket.socket(_family(key), _STREAM_NONBLOCK)
        except OSError as exc:
            self._finish(p, CheckResult(ok=False, reason=describe_error(exc)))
            return p
        p.sock, p.fd = sock, sock.fileno()
        err = sock.connect_ex(sockaddr or (str(target.address), target.port))
        if err == 0:
            self._connected(p)
        elif err == errno.EINPROGRESS:
            self._by_fd[p.fd] = p
            self._ep.register(p.fd, _EPOLLOUT)
            self._watch(p)
        else:
            self._finish(p, CheckResult(ok=False, reason=_reason(err)))
        return p

    def abort(self, p: SocketProbe) -> None:
        """Drop a probe without a result (its key was removed, or closing)."""
        p.done = None
        self._release(p)

    def close(self) -> None:
        for p in list(self._by_fd.values()):
            self.abort(p)
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._ep.fileno())
        self._ep.close()

    # --- events ------------------------------------------------------------------
    def _ready(self) -> None:
        while True:
            events = self._ep.poll(0, 512)
            for fd, _ in events:
                p = self._by_fd.get(fd)
                if p is not None and p.done is not None:
                    self._event(p)
            if len(events) < 512:
                return

    def _event(self, p: SocketProbe) -> None:
        assert p.sock is not None
        if p.reading:
            self._read(p)
            return
        err = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._finish(p, CheckResult(ok=False, reason=_reason(err)))
        else:
            self._connected(p)

    def _connected(self, p: SocketProbe) -> None:
        assert p.sock is not None
        if p.request is None:
            self._finish(p, CheckResult(ok=True, reason="connected"))
            return
        try:
            sent = p.sock.send(p.request)
        except OSError as exc:
            self._finish(p, CheckResult(ok=False, reason=describe_error(exc)))
            return
        if sent != len(p.request):  # a fresh socket takes a few hundred bytes at once
            self._finish(p, CheckResult(ok=False, reason="request not sent whole"))
            return
        p.reading = True
        if p.fd in self._by_fd:
            self._ep.modify(p.fd, _EPOLLIN)
        else:
            self._by_fd[p.fd] = p
            self._ep.register(p.fd, _EPOLLIN)
            self._watch(p)

    def _read(self, p: SocketProbe) -> None:
        assert p.sock is not None
        check = p.key.check
        assert isinstance(check, HttpCheck)
        while True:
            try:
                chunk = p.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self._finish(p, CheckResult(ok=False, reason=describe_error(exc)))
                return
            if p.status:  # reading the body for check.body
                assert check.body is not None
                p.buf += chunk
                if not chunk or check.body in p.buf or len(p.buf) >= HTTP_BODY_CAP:
                    body = bytes(p.buf[:HTTP_BODY_CAP])
                    self._finish(p, judge_body(check, p.status, body))
                    return
                continue
            if not chunk:
                what = "no response" if not p.buf else "a truncated response head"
                self._finish(p, CheckResult(ok=False, reason=f"server closed after {what}"))
                return
            p.buf += chunk
            end = _head_end(p.buf)
            if end < 0:
                if len(p.buf) > HTTP_HEAD_CAP:
                    what = "headers" if b"\n" in p.buf else "line"
                    reason = f"response {what} longer than {HTTP_HEAD_CAP} bytes"
                    self._finish(p, CheckResult(ok=False, reason=reason))
                    return
                continue
            status = judge_head(check, bytes(p.buf[:end]))
            if isinstance(status, CheckResult):
                self._finish(p, status)
                return
            if check.body is None:
                self._finish(p, CheckResult(ok=True, reason=f"HTTP {status}"))
                return
            p.status = status
            p.buf = bytearray(p.buf[end:])
            if check.body in p.buf or len(p.buf) >= HTTP_BODY_CAP:
                self._finish(p, judge_body(check, status, bytes(p.buf[:HTTP_BODY_CAP])))
                return

    # --- timeouts ------------------------------------------------------------------
    def _watch(self, p: SocketProbe) -> None:
        heapq.heappush(self._deadlines, (p.deadline, next(self._seq), p))
        self._arm(p.deadline)

    def _arm(self, at: float) -> None:
        at = max(at, self._clock())
        if self._timer is not None and self._timer_at <= at:
            return  # an earlier wake-up will see this deadline
        if self._timer is not None:
            self._timer.cancel()
        # batched: one wake-up serves every deadline of the next TICK
        self._timer_at = at + TICK
        self._timer = self._loop.call_later(self._timer_at - self._clock(), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._clock()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, p = heapq.heappop(heap)
            if p.done is not None:
                timeout = p.key.check.timing.timeout
                self._finish(p, CheckResult(ok=False, reason=f"timed out after {timeout:g} s"))
        while heap and heap[0][2].done is None:  # finished early: drop lazily
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])

    # --- the end -------------------------------------------------------------------
    def _finish(self, p: SocketProbe, result: CheckResult) -> None:
        done, p.done = p.done, None
        self._release(p)
        if done is not None:
            elapsed = self._clock() - p.started
            # tcp and http results carry no agent fields: only the time is added
            done(CheckResult(ok=result.ok, reason=result.reason, elapsed=elapsed))

    def _release(self, p: SocketProbe) -> None:
        sock, p.sock = p.sock, None
        if sock is None:
            return
        # no unregister: closing the only descriptor of a socket takes it out of
        # the epoll set (one system call less per probe)
        self._by_fd.pop(p.fd, None)
        try:  # noqa: SIM105 (hot path: no context manager) RST, no TIME_WAIT
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_ZERO)
        except OSError:
            pass
        sock.close()


@functools.lru_cache(maxsize=65536)
def _request(key: ProbeKey) -> bytes:
    """A key's HTTP request: the same bytes every second, built once."""
    assert isinstance(key.check, HttpCheck)
    return build_request(key.check, key.target)


def _family(key: ProbeKey) -> int:
    return socket.AF_INET6 if key.target.address.version == 6 else socket.AF_INET
