"""The lab's topology as data: every name, address and MAC in one place.

Pure: nothing here touches the system. `nodes.py` builds what this describes,
`lab.py` orchestrates, tests and the CLI import the constants from here.

Addresses come from the documentation ranges (RFC 5737, RFC 3849), so nothing
in the lab can ever collide with a real network.

    clients 198.51.100.0/24, 2001:db8:1::/64  --  router  --  servers 192.0.2.0/24,
                                                              2001:db8:2::/64 (+ VIPs)
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

# Every namespace, link and file the lab creates starts with this, so a
# clean-up can never reach anything that is not ours.
PREFIX = "carom"

# The namespace that plays the switch: it holds the bridges, and the
# bridge-port end of every veth.
SWITCH_NS = "carom-lan"

# Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
IFNAME_MAX = 15

# The services every server node runs (see carom.lab.servers).
HTTP_PORT = 80
BANNER_PORT = 2525  # "server speaks first", SMTP-like

# Where `lab up` keeps pid files and logs; one lab per machine.
DEFAULT_STATE_DIR = "/run/carom-lab"
# A bpffs for the lab's directors' pins; `lab down` unmounts it.
LAB_BPFFS = "/run/carom-lab-bpffs"

# The VIPs live inside the server segment: the router reaches them by ARP/NDP,
# and whichever director carries them on its segment interface receives them.
VIP4 = IPv4("192.0.2.100")
VIP6 = IPv6("2001:db8:2::100")
VIPS: tuple[IPv4 | IPv6, ...] = (VIP4, VIP6)


class Role(enum.StrEnum):
    """What a node is for; decides what `lab up` does to it."""

    ROUTER = "router"  # forwards between the client and the server segment
    DIRECTOR = "director"  # runs carom; also a real server (field note 3)
    REAL = "real"  # real server: VIPs on loopback, answers from the VIP
    CLIENT = "client"  # traffic source behind the router


@dataclass(frozen=True)
class Segment:
    """One layer-2 broadcast domain: a bridge in the switch namespace."""

    name: str  # short name for humans: "servers", "clients"
    bridge: str  # bridge device in SWITCH_NS
    net4: ipaddress.IPv4Network  # IPv4 subnet on this segment
    net6: ipaddress.IPv6Network  # IPv6 subnet on this segment
    index: int  # small number used in MACs

    def addr4(self, host: int) -> IPv4:
        return self.net4[host]

    def addr6(self, host: int) -> IPv6:
        return self.net6[host]


SERVER_SEGMENT = Segment(
    name="servers",
    bridge="carom-br0",
    net4=ipaddress.IPv4Network("192.0.2.0/24"),
    net6=ipaddress.IPv6Network("2001:db8:2::/64"),
    index=0,
)
CLIENT_SEGMENT = Segment(
    name="clients",
    bridge="carom-br1",
    net4=ipaddress.IPv4Network("198.51.100.0/24"),
    net6=ipaddress.IPv6Network("2001:db8:1::/64"),
    index=1,
)
SEGMENTS: tuple[Segment, ...] = (SERVER_SEGMENT, CLIENT_SEGMENT)


@dataclass(frozen=True)
class Interface:
    """A node's attachment to a segment: one veth pair."""

    node: str  # namespace the inner end lives in
    ifname: str  # inner end's name inside the node ("carom0", "carom1")
    segment: Segment  # the bridge the other end is enslaved to
    host4: int  # IPv4 host number: .11 is 11
    host6: int  # IPv6 interface id: ::11 is 0x11

    @property
    def addr4(self) -> IPv4:
        return self.segment.addr4(self.host4)

    @property
    def addr6(self) -> IPv6:
        return self.segment.addr6(self.host6)

    @property
    def port(self) -> str:
        """The bridge-port end's name in SWITCH_NS: node name + interface number."""
        return f"{self.node}-{self.ifname.removeprefix(PREFIX)}"

    @property
    def mac(self) -> str:
        """Fixed, locally administered MAC: 02:ca:00:SEGMENT:HOST6 (two bytes)."""
        return f"02:ca:00:{self.segment.index:02x}:{self.host6 >> 8:02x}:{self.host6 & 0xFF:02x}"


@dataclass(frozen=True)
class Node:
    """One network namespace playing one host."""

    name: str  # namespace name, always "carom-..."
    role: Role
    interfaces: tuple[Interface, ...]  # the first one is the node's main interface
    runs_services: bool  # runs the HTTP and speaks-first servers

    @property
    def short(self) -> str:
        return self.name.removeprefix(f"{PREFIX}-")

    @property
    def main(self) -> Interface:
        return self.interfaces[0]


def _node(name: str, role: Role, *attach: tuple[Segment, int, int]) -> Node:
    ifaces = tuple(
        Interface(node=name, ifname=f"{PREFIX}{i}", segment=seg, host4=h4, host6=h6)
        for i, (seg, h4, h6) in enumerate(attach)
    )
    return Node(
        name=name,
        role=role,
        interfaces=ifaces,
        runs_services=role in (Role.DIRECTOR, Role.REAL),
    )


ROUTER = _node("carom-router", Role.ROUTER, (SERVER_SEGMENT, 1, 0x1), (CLIENT_SEGMENT, 1, 0x1))
DIR1 = _node("carom-dir1", Role.DIRECTOR, (SERVER_SEGMENT, 2, 0x2))
DIR2 = _node("carom-dir2", Role.DIRECTOR, (SERVER_SEGMENT, 3, 0x3))
REAL1 = _node("carom-real1", Role.REAL, (SERVER_SEGMENT, 11, 0x11))
REAL2 = _node("carom-real2", Role.REAL, (SERVER_SEGMENT, 12, 0x12))
REAL3 = _node("carom-real3", Role.REAL, (SERVER_SEGMENT, 13, 0x13))
CLIENT1 = _node("carom-client1", Role.CLIENT, (CLIENT_SEGMENT, 10, 0x10))
CLIENT2 = _node("carom-client2", Role.CLIENT, (CLIENT_SEGMENT, 11, 0x11))

NODES: tuple[Node, ...] = (ROUTER, DIR1, DIR2, REAL1, REAL2, REAL3, CLIENT1, CLIENT2)
DIRECTORS: tuple[Node, ...] = tuple(n for n in NODES if n.role is Role.DIRECTOR)
REALS: tuple[Node, ...] = tuple(n for n in NODES if n.role is Role.REAL)
CLIENTS: tuple[Node, ...] = tuple(n for n in NODES if n.role is Role.CLIENT)
SERVICE_NODES: tuple[Node, ...] = tuple(n for n in NODES if n.runs_services)

# The director the demo and the tests run carom on: it owns the VIPs (answers
# ARP/NDP for them) only while its daemon runs.
ACTIVE_DIRECTOR = DIR1

# Every namespace the lab defines: what `lab down` deletes, and nothing else.
NAMESPACES: tuple[str, ...] = (SWITCH_NS, *(n.name for n in NODES))


def gateway4(segment: Segment) -> IPv4:
    """The router's address on a segment: every other host's default route."""
    return next(i.addr4 for i in ROUTER.interfaces if i.segment is segment)


def gateway6(segment: Segment) -> IPv6:
    return next(i.addr6 for i in ROUTER.interfaces if i.segment is segment)


def node(name: str) -> Node:
    """Look a node up by namespace name, with or without the "carom-" prefix."""
    full = name if name.startswith(f"{PREFIX}-") else f"{PREFIX}-{name}"
    for n in NODES:
        if n.name == full:
            return n
    known = ", ".join(n.short for n in NODES)
    raise KeyError(f"no lab node {name!r} (known: {known}, lan)")


def namespace(name: str) -> str:
    """A node name, or the switch ("lan"), as its namespace name."""
    full = name if name.startswith(f"{PREFIX}-") else f"{PREFIX}-{name}"
    if full == SWITCH_NS:
        return full
    return node(full).name


def _check() -> None:
    """Names must fit the kernel's limits and carry the prefix; checked at import."""
    names = [*NAMESPACES, *(s.bridge for s in SEGMENTS)]
    names += [x for n in NODES for i in n.interfaces for x in (i.port, i.ifname)]
    for name in names:
        if not name.startswith(PREFIX) or len(name) > IFNAME_MAX:
            raise ValueError(f"lab name {name!r}: must start with {PREFIX!r}, <= 15 bytes")
    if not all(v in SERVER_SEGMENT.net4 or v in SERVER_SEGMENT.net6 for v in VIPS):
        raise ValueError("the VIPs must be inside the server segment")


_check()
