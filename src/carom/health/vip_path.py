"""Probes through the VIP path: sent to the VIP, delivered to one real's MAC.

A DSR real serves a flow only if it accepts packets addressed to the VIP (VIP on
`lo` with a /32, a listener on it). A probe of the real's own address passes
even when that is broken. These probes take the same path as client traffic
instead: destination address the VIP, destination MAC the real's.

Mechanism (docs/health.md): a probe namespace per carom instance,
`carom-hc-<instance>`, holds a macvlan child of the director's LAN interface with
an address of its own per family (the probes' source; the IPv6 one without
duplicate address detection, so it is usable at once). For each real it has a
routing table with one route per VIP, `VIP/32 via REAL` or `VIP/128 via REAL`
(the kernel resolves REAL's MAC by ARP or NDP, as the data plane does),
selected by a policy rule on the socket's mark: `fwmark N lookup N` (in the
real's family). A probe socket is created in that namespace (setns on the
calling thread, around socket() only) and marked with the real's number, so its
SYN goes to the VIP at the real's MAC and the real's DSR reply (from the VIP)
comes back to the namespace's own address. Unmarked sockets never use the tables.

The director's own address cannot be the source: the director holds the VIPs,
so its own stack would deliver a probe to a VIP locally."""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import socket
import subprocess
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from carom.bpf.libbpf import BpfError
from carom.health.exec_path import ExecMarks
from carom.health.spec import Via

IPAddress = IPv4Address | IPv6Address
log = logging.getLogger("carom.health")

NETNS_DIR = "/run/netns"
PREFIX = "carom-hc-"
IFNAME = "carom-hc0"
RULE_PRIORITY = 1000  # before main (32766); only rules at this priority are ours
TABLE_BASE = 1000  # table and mark of real number n: TABLE_BASE + n
CLONE_NEWNET = 0x40000000
SO_MARK = getattr(socket, "SO_MARK", 36)

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(via: Via, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A non-blocking socket created in `via.netns` and marked with `via.mark`.
    A socket keeps the namespace it was created in; the thread returns to its own
    namespace before this returns (even on error)."""
    if not via.netns:
        raise OSError(errno.ENOENT, "no probe namespace for via: vip (health.probe_source)")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, via.netns), os.O_RDONLY)
        try:
            _setns(target)
            try:
                sock = socket.socket(family, kind, proto)
            finally:
                _setns(home)
        finally:
            os.close(target)
    finally:
        os.close(home)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, via.mark)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


class VipPath:
    """The probe namespace of one carom instance: create, route, remove.

    `routes` maps each real to the VIPs probed through it; `via(real)` gives the
    Via for a probe of that real. A family without a source address has no
    routes (the config rejects via: vip for its services)."""

    def __init__(
        self,
        instance: str,
        parent: str,
        source: IPv4Interface | None,
        source6: IPv6Interface | None = None,
    ) -> None:
        self.netns = PREFIX + instance  # carom-hc-<instance>: at most 24 characters
        self.parent = parent  # the director's LAN interface (the macvlan's lower device)
        self.source = source  # the probes' IPv4 source address and its prefix on the LAN
        self.source6 = source6  # the same for IPv6
        self._numbers: dict[IPAddress, int] = {}
        self._exec: ExecMarks | None = None  # cgroups for exec checks (exec_path.py)
        self.exec_error = ""  # why exec checks cannot take the path, if they cannot

    def up(self) -> None:
        """Create the namespace and its macvlan (idempotent: an existing one is reused)."""
        if not os.path.exists(os.path.join(NETNS_DIR, self.netns)):
            _ip("netns", "add", self.netns)
        try:
            links = json.loads(_ip("-j", "link", "show", netns=self.netns) or "[]")
        except RuntimeError:
            # a name without a namespace behind it: left by a daemon that ran in
            # a mount namespace that is gone (`ip netns exec`); make it anew
            _ip("netns", "del", self.netns, check=False)
            _ip("netns", "add", self.netns)
            links = []
        # IPv6 of a link moved in: no duplicate address detection (the source
        # address is usable at once; its link-local too), no addresses or routes
        # from the LAN's router advertisements (the source stays the configured one)
        v6: tuple[tuple[str, str], ...] = (
            ("accept_dad", "0"),
            ("accept_ra", "0"),
            ("autoconf", "0"),
        )
        if self.source6 is None:
            v6 = ()  # a kernel without IPv6 has no such keys
        for name, value in v6:
            self._sysctl(f"net/ipv6/conf/default/{name}", value)
        if not any(link.get("ifname") == IFNAME for link in links):
            _ip("link", "add", IFNAME, "link", self.parent, "type", "macvlan", "mode", "bridge")
            _ip("link", "set", IFNAME, "netns", self.netns)
        for name, value in v6:
            self._sysctl(f"net/ipv6/conf/{IFNAME}/{name}", value)
        # the namespace answers ARP only for its own address, and takes the real's
        # DSR replies (source: the VIP) although its main table has no route to the
        # VIP (IPv6 has no reverse-path filter to turn off)
        for key in ("all", "default", IFNAME):
            self._sysctl(f"net/ipv4/conf/{key}/rp_filter", "0")
        self._sysctl(f"net/ipv4/conf/{IFNAME}/arp_ignore", "1")
        if self.source is not None:
            _ip("addr", "replace", str(self.source), "dev", IFNAME, netns=self.netns)
        if self.source6 is not None:
            _ip(
                "-6", "addr", "replace", str(self.source6), "dev", IFNAME, "nodad",
                netns=self.netns,
            )  # fmt: skip
        _ip("link", "set", "lo", "up", netns=self.netns)
        _ip("link", "set", IFNAME, "up", netns=self.netns)
        if self._exec is None:
            # only exec checks need it; the other kinds work without it
            try:
                marks = ExecMarks(self.netns)
                marks.up()
                self._exec, self.exec_error = marks, ""
            except (OSError, BpfError) as exc:
                self.exec_error = str(exc).splitlines()[0]
                log.warning(
                    "exec checks cannot take the VIP path; the other kinds can",
                    extra={"netns": self.netns, "error": self.exec_error},
                )

    def _sysctl(self, key: str, value: str) -> None:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "sysctl",
                "-q",
                "-w",
                f"{key.replace('/', '.')}={value}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def sync(self, routes: Mapping[IPAddress, frozenset[IPAddress]]) -> None:
        """Make the tables and rules exactly `routes` (real -> VIPs probed through it).
        A real keeps its number while it stays, so probes in flight keep their path."""
        gone = [n for r, n in self._numbers.items() if r not in routes]
        self._numbers = {r: n for r, n in self._numbers.items() if r in routes}
        for real in sorted(routes, key=str):
            if real not in self._numbers:
                used = set(self._numbers.values())
                self._numbers[real] = next(n for n in range(1, len(used) + 2) if n not in used)
        for family, bits in (("-4", 32), ("-6", 128)):
            # a real's table is flushed in both families: its number may have
            # belonged to a real of the other family before
            batch: list[str] = []
            rules = json.loads(_ip(family, "-j", "rule", "show", netns=self.netns) or "[]")
            for rule in rules:
                if rule.get("priority") == RULE_PRIORITY:
                    batch.append(f"rule del priority {RULE_PRIORITY} table {rule['table']}")
            batch += [f"route flush table {TABLE_BASE + n}" for n in gone]
            for real, n in sorted(self._numbers.items(), key=lambda item: item[1]):
                table = TABLE_BASE + n
                batch.append(f"route flush table {table}")
                if (real.version == 6) != (bits == 128):
                    continue
                batch.append(f"rule add priority {RULE_PRIORITY} fwmark {table} table {table}")
                for vip in sorted(routes[real], key=str):
                    batch.append(
                        f"route replace {vip}/{bits} via {real} dev {IFNAME} table {table}"
                    )
            if batch:
                self._batch(family, batch)
        if self._exec is not None:
            self._exec.sync({TABLE_BASE + n for n in self._numbers.values()})

    def _batch(self, family: str, batch: list[str]) -> None:
        proc = subprocess.run(
            ["ip", family, "-n", self.netns, "-force", "-batch", "-"],
            input="\n".join(batch) + "\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        errors = [
            line
            for line in proc.stderr.splitlines()
            if line.strip() and "Failed to send flush request" not in line
        ]
        if proc.returncode != 0 and errors:
            raise RuntimeError(f"ip {family} -batch in {self.netns}: {'; '.join(errors[:3])}")

    def via(self, real: IPAddress) -> Via:
        """The Via of `real`; before `sync` has given it a table, one that fails
        (an unmarked socket in the namespace would reach the VIP's ARP owner,
        the director, not the real)."""
        n = self._numbers.get(real)
        return Via(netns="", mark=0) if n is None else Via(netns=self.netns, mark=TABLE_BASE + n)

    def down(self) -> None:
        """Remove the namespace (and with it the macvlan, its tables and rules),
        and the cgroups of exec checks."""
        exec_marks, self._exec = self._exec, None
        if exec_marks is not None:
            exec_marks.down()
        if os.path.exists(os.path.join(NETNS_DIR, self.netns)):
            _ip("netns", "del", self.netns)
