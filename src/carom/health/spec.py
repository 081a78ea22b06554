"""What a health check is, independent of how it was configured.

These frozen dataclasses are the runtime definitions: hashable, so that the
scheduler can run one probe per (target, definition) however many services
share it. `carom.config.checks` validates the YAML and builds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

IPAddress = IPv4Address | IPv6Address

# Size caps: a check never buffers more than this, whatever the server sends.
HTTP_HEAD_CAP = 16 * 1024  # status line + headers
HTTP_BODY_CAP = 64 * 1024  # bytes of body searched for `body`
UDP_REPLY_CAP = 64 * 1024  # one datagram
AGENT_LINE_CAP = 1024  # the agent's one line
EXEC_OUTPUT_CAP = 8 * 1024  # stdout + stderr kept for the reason


@dataclass(frozen=True)
class Timing:
    """When to probe and how many results change the state."""

    interval: float = 1.0  # seconds between probe starts while the state is steady
    timeout: float = 0.6  # seconds a probe may take, connect to verdict; <= interval
    rise: int = 2  # consecutive successes that bring a down real up
    fall: int = 3  # consecutive failures that take an up real down
    fast_interval: float = 0.3  # seconds between probes while a change is pending


@dataclass(frozen=True)
class Via:
    """How a probe takes the VIP path (carom.health.vip_path): its socket is made
    in the probe namespace and marked so that it routes to one real's MAC."""

    netns: str  # the probe namespace, under /run/netns
    mark: int  # SO_MARK that selects the real's routing table


@dataclass(frozen=True)
class Target:
    """Where a probe goes. `address` is what the socket connects to: the real's
    own address, or the VIP when `via` sends it along the VIP path."""

    address: IPAddress  # destination address of the probe
    port: int  # destination port (0 for exec, which has none)
    real: IPAddress  # the real server this probe is about (for logs and exec env)
    via: Via | None = None  # None: the ordinary route to `address`


@dataclass(frozen=True)
class TcpCheck:
    """A TCP connect: up when the handshake completes."""

    timing: Timing = field(default_factory=Timing)
    port: int | None = None  # None: the service's port

    kind = "tcp"


@dataclass(frozen=True)
class SynCheck:
    """TCP half-open: up on SYN-ACK; the kernel's RST ends the handshake, so the
    server's application never sees a connection (IPv4, needs CAP_NET_RAW)."""

    timing: Timing = field(default_factory=Timing)
    port: int | None = None

    kind = "syn"


@dataclass(frozen=True)
class HttpCheck:
    """An HTTP/1.0 request (or HTTPS when `tls`): up when the status is expected
    and, if `body` is set, the first HTTP_BODY_CAP bytes of the body contain it."""

    timing: Timing = field(default_factory=Timing)
    port: int | None = None
    tls: bool = False  # https
    method: str = "GET"
    path: str = "/"
    host: str | None = None  # Host header and TLS server name; None: the target address
    expect_status: tuple[int, ...] = ()  # empty: any 2xx or 3xx
    body: bytes | None = None  # substring the body must contain
    tls_verify: bool = False  # verify the certificate chain and name (system CAs)

    @property
    def kind(self) -> str:
        return "https" if self.tls else "http"


@dataclass(frozen=True)
class UdpCheck:
    """A datagram out, a datagram back that contains `expect` (any reply if empty)."""

    timing: Timing = field(default_factory=Timing)
    port: int | None = None
    send: bytes = b""
    expect: bytes = b""

    kind = "udp"


@dataclass(frozen=True)
class DnsCheck:
    """A DNS query over UDP or TCP: up when the answer has the expected rcode."""

    timing: Timing = field(default_factory=Timing)
    port: int | None = None
    query: str = "."
    query_type: str = "SOA"
    transport: str = "udp"  # udp or tcp
    expect_rcode: str = "NOERROR"

    kind = "dns"


@dataclass(frozen=True)
class ExecCheck:
    """A command, run without a shell: up when it exits 0 within the timeout.
    The target is given in the environment (CAROM_REAL, CAROM_ADDRESS, CAROM_PORT),
    never interpolated into argv."""

    timing: Timing = field(default_factory=Timing)
    port: int | None = None
    command: tuple[str, ...] = ()

    kind = "exec"


@dataclass(frozen=True)
class AgentCheck:
    """HAProxy's agent-check protocol: connect, optionally send `send`, read one
    line of words (up, down, drain, maint, ready, stopped, fail, NN%)."""

    timing: Timing = field(default_factory=Timing)
    port: int | None = None
    send: bytes = b""

    kind = "agent"


CheckSpec = TcpCheck | SynCheck | HttpCheck | UdpCheck | DnsCheck | ExecCheck | AgentCheck


@dataclass(frozen=True)
class ProbeKey:
    """One probe: a check definition aimed at a target. Services that share a
    real and a definition share the key, hence the probe and its state."""

    target: Target
    check: CheckSpec

    def __post_init__(self) -> None:
        # the key is hashed on every status lookup: hash the nested fields once
        object.__setattr__(self, "_hash", hash((self.target, self.check)))

    def __hash__(self) -> int:
        return self.__dict__["_hash"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one probe. `reason` says why in words, for logs and status."""

    ok: bool
    reason: str  # "connected", "HTTP 503 not in [200]", "timed out after 0.6 s", ...
    elapsed: float = 0.0  # seconds the probe took
    weight_percent: int | None = None  # agent: the weight the real asked for
    drain: bool = False  # agent: the real asked for no new flows (still up)


def fail(reason: str) -> CheckResult:
    return CheckResult(ok=False, reason=reason)


def passed(reason: str) -> CheckResult:
    return CheckResult(ok=True, reason=reason)
