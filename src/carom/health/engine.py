"""TCP connect and plain HTTP probes without a coroutine: non-blocking sockets
on one epoll set, driven by callbacks, and reused from probe to probe.

These two kinds run every second for every real, so their cost is the cost of
health checking (issue: 1,000 reals x 2 checks on at most 10% of a core). A
coroutine per probe costs a task, a timeout context, a future per socket wait
and several event-loop round trips; here a probe is one small object, and one
timer tick every TICK seconds (while probes are in flight) reads the events of
all of them from one epoll set and ends those past their timeout. The tick is
on the same TICK boundaries as the scheduler's timing wheel, so one wake-up of
the process serves starts, events and timeouts together: 50 wake-ups a second
however many probes run, instead of one per event. The price is that a probe's
result (and its measured time) is known up to TICK late. TICK is 20 ms: 10 ms
cost 15-20% more CPU at 2,000 probes a second (every wake-up starts on cold
caches, docs/health.md#cost), and 20 ms keeps the worst detection within 3 s.

System calls per probe (benchmarks/health_checks.py measures the effect):
- a socket is not closed after its probe but disconnected, `connect()` with
  AF_UNSPEC (tcp_disconnect: the kernel sends RST, as a close with SO_LINGER 0
  does, and frees the source port), and kept in a pool for the next probe with
  the same family and path. Each probe is still a new connection (new source
  port, new handshake); what is saved is socket(), setsockopt(SO_LINGER),
  epoll_ctl(ADD) and close(), and the kernel's allocation and teardown of a
  socket. Only a socket whose probe passed is kept; after a failure (its path
  may be gone: a probe namespace made anew) it is closed with RST, and the
  scheduler empties the pool at every update (a reload);
- sockets stay in the epoll set, edge-triggered for both directions, so an HTTP
  probe needs no epoll_ctl(MOD) between its request and its reply (an event for
  an idle pooled socket is ignored: the kernel reports the state at delivery
  time, so a late event never speaks for a finished probe);
- a connect is judged by the event: EPOLLOUT without EPOLLERR/EPOLLHUP is a
  completed handshake, so getsockopt(SO_ERROR) runs only on failure.
That leaves connect and disconnect for a TCP probe, plus send and recv for HTTP.

Segments: an HTTP socket has TCP_DEFER_ACCEPT set once (it survives the
disconnect), which on a connecting socket makes the kernel hold the
handshake's last ACK back until data goes out (at most 200 ms), so it rides on
the request, as a client with data ready would send it anyway. Counted with
tcpdump in the benchmark: 7 segments per HTTP probe instead of 9 (SYN, SYN-ACK,
request with the ACK, the server's ACK, reply, FIN, RST: with the request sent
this soon after the SYN-ACK, the kernel also leaves the reply and the FIN to be
acknowledged by the RST). A TCP connect probe keeps the plain handshake (4
segments): its ACK is what makes the server accept the connection. Setting
TCP_QUICKACK off before each request was tried too: no fewer segments, one
more system call.

Semantics are those of tcp.probe and http._probe_plain (same reasons, same
caps): connect, for HTTP send the request and read the head (at most
HTTP_HEAD_CAP bytes) and, if `body` is set, up to HTTP_BODY_CAP bytes of body;
every connection ends with RST."""

from __future__ import annotations

import _socket
import asyncio
import collections
import ctypes
import errno
import math
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
    Via,
)
from carom.health.tcp import _LINGER_ZERO
from carom.health.vip_path import socket_in

_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_TCP = socket.IPPROTO_TCP
_DEFER_ACCEPT = socket.TCP_DEFER_ACCEPT
TICK = 0.02  # seconds between ticks: events, timeouts and starts are served in batches
POOL_MAX = 1024  # idle sockets kept per engine, at most (more in flight are closed)
Done = Callable[[CheckResult], None]
_EPOLLOUT = select.EPOLLOUT
_EPOLLIN = select.EPOLLIN
_FAILED = select.EPOLLERR | select.EPOLLHUP
_WATCH = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
_HTTP_REASONS: dict[int, str] = {}  # "HTTP 200", made once per status code seen
_REASONS = {errno.ECONNRESET: "connection reset", errno.ECONNREFUSED: "connection refused"}
_libc = ctypes.CDLL(None, use_errno=True)
_UNSPEC = ctypes.create_string_buffer(16)  # a struct sockaddr with sa_family AF_UNSPEC (0)
# connect() to _UNSPEC resets the socket's connection (RST if it had one) and
# makes it unconnected again, ready for another connect() (see _release)
_disconnect = _libc.connect
_EINPROGRESS = errno.EINPROGRESS
_READ = 8192  # bytes asked of one recv (a reply is read until EAGAIN: this is not a cap)
# a socket's address family, path, and whether it is set up for HTTP (the
# handshake's ACK held back for the request)
PoolKey = tuple[int, Via | None, bool]


def handles(key: ProbeKey) -> bool:
    """Whether this engine runs the key's probe (else the coroutine path does)."""
    check = key.check
    return isinstance(check, TcpCheck) or (isinstance(check, HttpCheck) and not check.tls)


def _reason(err: int) -> str:
    return _REASONS.get(err) or os.strerror(err).lower()


class Route:
    """What every probe of one key needs, worked out once per key (the scheduler
    keeps it): where to connect, the HTTP request, the socket pool, the timeout."""

    __slots__ = ("pool", "request", "sockaddr", "timeout")

    def __init__(self, key: ProbeKey) -> None:
        target, check = key.target, key.check
        self.sockaddr = (str(target.address), target.port)
        self.request = build_request(check, target) if isinstance(check, HttpCheck) else None
        self.pool: PoolKey = (_family(key), target.via, self.request is not None)
        self.timeout = key.check.timing.timeout


class SocketProbe:
    """One probe in flight: its socket, what it has read, and whom to tell."""

    __slots__ = (
        "batch",
        "buf",
        "deadline",
        "done",
        "fd",
        "key",
        "reading",
        "route",
        "sock",
        "started",
        "status",
    )

    def __init__(self, key: ProbeKey, route: Route, done: Done, started: float, batch: int) -> None:
        self.key = key
        self.route = route
        self.done: Done | None = done  # None once finished
        self.started = started
        self.deadline = started + route.timeout
        self.batch = batch  # the engine's epoll read count when it started
        self.sock: _socket.socket | None = None
        self.fd = -1
        self.reading = False  # HTTP: the request is sent, events are the reply
        self.buf: bytes | bytearray = b""  # HTTP: the reply so far, when it came in parts
        self.status = 0  # HTTP status once the head passed, while the body is read


class SocketEngine:
    """Runs SocketProbes on one epoll set registered with the running loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        self._ep = select.epoll()
        self._by_fd: dict[int, SocketProbe] = {}  # probes in flight
        self._pools: dict[PoolKey, list[_socket.socket]] = {}  # idle sockets
        self._idle = 0
        # probes in start order per timeout: each queue's deadlines only grow
        self._deadlines: dict[float, collections.deque[SocketProbe]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._polls = 0  # epoll reads so far: a probe started after read N ignores N's events

    @property
    def in_flight(self) -> int:
        return len(self._by_fd)

    @property
    def idle(self) -> int:
        """Sockets kept for the next probes."""
        return self._idle

    def start(self, key: ProbeKey, done: Done, route: Route | None = None) -> SocketProbe:
        """Start a probe; `done` gets its result exactly once (maybe before this
        returns, for a connection refused at once), unless it is aborted.
        `route` may be given worked out in advance (the scheduler does, once
        per key)."""
        if route is None:
            route = Route(key)
        p = SocketProbe(key, route, done, self._clock(), self._polls)
        socks = self._pools.get(route.pool)
        if socks:
            self._idle -= 1
            sock = socks.pop()
        else:
            try:
                sock = self._new(route.pool)
            except OSError as exc:
                self._finish(p, False, describe_error(exc))
                return p
        p.sock = sock
        p.fd = fd = sock.fileno()
        self._by_fd[fd] = p
        err = sock.connect_ex(route.sockaddr)
        if err == _EINPROGRESS:
            self._watch(p)
        elif err == 0:
            self._watch(p)
            self._connected(p)
        else:
            self._finish(p, False, _reason(err))
        return p

    def abort(self, p: SocketProbe) -> None:
        """Drop a probe without a result (its key was removed, or closing)."""
        p.done = None
        self._release(p, keep=False)

    def close(self) -> None:
        for p in list(self._by_fd.values()):
            p.done = None
            self._close(p.sock)
            p.sock = None
        self._by_fd.clear()
        for socks in self._pools.values():
            for sock in socks:
                sock.close()
        self._pools.clear()
        self._idle = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ep.close()

    # --- sockets -----------------------------------------------------------------
    def _new(self, pool: PoolKey) -> _socket.socket:
        """A new socket for this family and path, in the epoll set (none idle)."""
        family, via, http = pool
        sock: _socket.socket
        if via is not None:
            sock = socket_in(via, family, socket.SOCK_STREAM)
        else:
            # the C socket type: socket.socket's Python layer (its __init__,
            # its close bookkeeping) is a tenth of a probe's own cost
            sock = _socket.socket(family, _STREAM_NONBLOCK)
        try:
            if http:  # the handshake's ACK waits for the request (module docstring)
                sock.setsockopt(_TCP, _DEFER_ACCEPT, 1)
            self._ep.register(sock.fileno(), _WATCH)
        except OSError:
            sock.close()
            raise
        return sock

    def drop_idle(self) -> None:
        """Close every pooled socket (after a reload: a probe namespace made anew
        must not be reached through sockets made in the old one)."""
        for socks in self._pools.values():
            for sock in socks:
                sock.close()
        self._pools.clear()
        self._idle = 0

    def _release(self, p: SocketProbe, keep: bool) -> None:
        """End the probe's connection with RST; keep its socket for the next
        probe only if this one worked (a socket that failed, maybe because its
        path is gone, is closed: the next probe gets a new one)."""
        sock, p.sock = p.sock, None
        if sock is None:
            return
        self._by_fd.pop(p.fd, None)
        if keep and self._idle < POOL_MAX and _disconnect(p.fd, _UNSPEC, 16) == 0:
            pool = p.route.pool
            socks = self._pools.get(pool)
            if socks is None:
                self._pools[pool] = [sock]
            else:
                socks.append(sock)
            self._idle += 1
        else:
            self._close(sock)

    @staticmethod
    def _close(sock: _socket.socket | None) -> None:
        """Close with RST: no TIME_WAIT, no wait for a peer that never answers a
        FIN. Closing the only descriptor also takes it out of the epoll set."""
        if sock is None:
            return
        try:  # noqa: SIM105 (not a context manager: cheaper, and this is rare now)
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_ZERO)
        except OSError:
            pass
        sock.close()

    # --- events ------------------------------------------------------------------
    def _poll(self) -> None:
        by_fd = self._by_fd
        while True:
            self._polls += 1
            batch = self._polls
            events = self._ep.poll(0, 512)
            for fd, mask in events:
                p = by_fd.get(fd)
                if p is None or p.done is None:
                    continue  # an idle pooled socket: its disconnect woke it
                if p.batch == batch:
                    # started while this batch is handled (a waiting probe, on a
                    # pooled socket): the event was read before, in the socket's
                    # idle state; the probe's own events come with the next poll
                    continue
                if p.reading:
                    self._read(p)
                elif mask & _FAILED:
                    assert p.sock is not None
                    err = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    self._finish(p, False, _reason(err) if err else "connection closed")
                elif mask & _EPOLLOUT:
                    self._connected(p)
                # else: a late event of the socket's previous probe, reported in
                # this one's state (connecting: nothing to say yet)
            if len(events) < 512:
                return

    def _connected(self, p: SocketProbe) -> None:
        request = p.route.request
        if request is None:
            self._finish(p, True, "connected")
            return
        sock = p.sock
        assert sock is not None
        try:
            sent = sock.send(request)
        except OSError as exc:
            self._finish(p, False, describe_error(exc))
            return
        if sent != len(request):  # a fresh socket takes a few hundred bytes at once
            self._finish(p, False, "request not sent whole")
            return
        # edge-triggered on both directions: the reply's arrival is a new event,
        # delivered at a later poll (this thread runs both), no epoll_ctl needed
        p.reading = True

    def _read(self, p: SocketProbe) -> None:
        sock = p.sock
        assert sock is not None
        check = p.key.check
        assert isinstance(check, HttpCheck)
        while True:
            try:
                chunk = sock.recv(_READ)
            except BlockingIOError:
                return
            except OSError as exc:
                self._finish(p, False, describe_error(exc))
                return
            if p.status:  # reading the body for check.body
                assert check.body is not None
                p.buf += chunk
                buf = p.buf
                if not chunk or check.body in buf or len(buf) >= HTTP_BODY_CAP:
                    body = bytes(buf[:HTTP_BODY_CAP])
                    self._judged(p, judge_body(check, p.status, body))
                    return
                continue
            if not chunk:
                what = "no response" if not p.buf else "a truncated response head"
                self._finish(p, False, f"server closed after {what}")
                return
            # the whole head in one read (nearly always): no copy into a buffer
            data = p.buf + chunk if p.buf else chunk
            end = _head_end(data)
            if end < 0:
                if len(data) > HTTP_HEAD_CAP:
                    what = "headers" if b"\n" in data else "line"
                    self._finish(p, False, f"response {what} longer than {HTTP_HEAD_CAP} bytes")
                    return
                p.buf = data if isinstance(data, bytearray) else bytearray(data)
                continue
            status = judge_head(check, bytes(data[:end]))
            if isinstance(status, CheckResult):
                self._judged(p, status)
                return
            if check.body is None:
                reason = _HTTP_REASONS.get(status)
                if reason is None:
                    reason = _HTTP_REASONS[status] = f"HTTP {status}"
                self._finish(p, True, reason)
                return
            p.status = status
            p.buf = bytearray(data[end:])
            if check.body in p.buf or len(p.buf) >= HTTP_BODY_CAP:
                self._judged(p, judge_body(check, status, bytes(p.buf[:HTTP_BODY_CAP])))
                return

    # --- timeouts ------------------------------------------------------------------
    # --- the tick ------------------------------------------------------------------
    def _watch(self, p: SocketProbe) -> None:
        timeout = p.route.timeout
        queue = self._deadlines.get(timeout)
        if queue is None:
            queue = self._deadlines[timeout] = collections.deque()
        queue.append(p)
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        """The next tick, at the next multiple of TICK on the loop's clock (where
        the scheduler's wheel serves its slots: one wake-up does both)."""
        at = (math.floor(self._loop.time() / TICK) + 1) * TICK
        self._timer = self._loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._poll()
        now = self._clock()
        for timeout, queue in list(self._deadlines.items()):
            while queue and (queue[0].done is None or queue[0].deadline <= now):
                p = queue.popleft()  # finished (dropped lazily), or timed out
                if p.done is not None:
                    self._finish(p, False, f"timed out after {timeout:g} s")
            if not queue:
                del self._deadlines[timeout]
        if self._by_fd and self._timer is None:
            self._arm()

    # --- the end -------------------------------------------------------------------
    def _judged(self, p: SocketProbe, result: CheckResult) -> None:
        self._finish(p, result.ok, result.reason)

    def _finish(self, p: SocketProbe, ok: bool, reason: str) -> None:
        done, p.done = p.done, None
        if p.sock is not None:
            self._release(p, ok)
        if done is not None:
            # tcp and http results carry no agent fields: one result, with its time
            done(CheckResult(ok, reason, self._clock() - p.started))


def _family(key: ProbeKey) -> int:
    return socket.AF_INET6 if key.target.address.version == 6 else socket.AF_INET
