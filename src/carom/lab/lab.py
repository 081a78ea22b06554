"""The lab as one object: bring it up, run things in it, look at it, tear it down.

    with Lab() as lab:                      # up() on entry, down() on exit
        r = lab.exec("client1", ["curl", "-s", "http://192.0.2.11/"])
        assert r.stdout == "served-by carom-real1\\n"

`up()` is idempotent (an existing lab is torn down and rebuilt) and a failed
`up()` leaves nothing behind. `down()` is safe to run any number of times and
after a crash: it works from the topology's list of namespaces, not from
anything `up()` recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from carom.lab import daemons, nodes, services
from carom.lab import topology as t
from carom.lab.nodes import LabError

log = logging.getLogger("carom.lab")


@dataclass(frozen=True)
class NodeStatus:
    """One node as the system shows it right now."""

    node: t.Node
    present: bool  # its namespace exists
    addresses: dict[str, list[str]]  # interface -> global addresses (and VIPs on lo)
    service: services.ServiceState | None  # None for nodes without services
    xdp_on_port: bool | None  # directors: the bridge port runs xdp_pass; else None

    @property
    def healthy(self) -> bool:
        return self.present and (self.service is None or self.service.running)


@dataclass(frozen=True)
class LabStatus:
    """The whole lab as the system shows it right now."""

    switch_present: bool  # the switch namespace exists
    nodes: tuple[NodeStatus, ...]
    vip_owners: tuple[str, ...]  # nodes the router resolves a VIP to (ARP/NDP answers)

    @property
    def up(self) -> bool:
        return self.switch_present and all(n.healthy for n in self.nodes)

    @property
    def absent(self) -> bool:
        return not self.switch_present and not any(n.present for n in self.nodes)


class Lab:
    """The network-namespace lab described by `carom.lab.topology`."""

    def __init__(self, state_dir: str | Path = t.DEFAULT_STATE_DIR, *, xdp: bool = True) -> None:
        self.state_dir = Path(state_dir)  # pid files, logs, ready files
        if not self.state_dir.name.startswith(t.PREFIX):
            raise LabError(f"state dir {self.state_dir}: its name must start with {t.PREFIX!r}")
        self.xdp = xdp  # attach xdp_pass to the directors' bridge ports
        self._lock_path = self.state_dir.with_name(f"{self.state_dir.name}.lock")

    # --- lifecycle ----------------------------------------------------------------

    def up(self) -> bool:
        """Build the lab; returns True if an existing lab was torn down first."""
        with self._locked():
            existed = bool(nodes.existing_namespaces())
            if existed:
                log.info("lab: an existing lab was found; rebuilding it")
                self._down()
            try:
                self._build()
            except BaseException:
                log.error("lab: build failed; removing what was built")
                self._down()
                raise
        return existed

    def down(self) -> list[str]:
        """Remove everything; returns warnings (processes left in namespaces)."""
        with self._locked():
            return self._down()

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def _build(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.xdp:
            nodes.xdp_pass_object()  # fail before building anything if it is missing
        nodes.build_switch()
        for node in t.NODES:
            nodes.build_node(node)
        if self.xdp:
            for d in t.DIRECTORS:
                nodes.attach_xdp_pass(d.main)
        # Every node serves the VIPs as a real server, directors included (field
        # note 3): VIPs on lo, ARP never answered for them by the kernel. Only a
        # running carom daemon on a director answers ARP/NDP for the VIPs (its
        # XDP responder), so without one nobody owns them.
        for node in (*t.DIRECTORS, *t.REALS):
            nodes.realserver_up(node)
        for node in t.SERVICE_NODES:
            services.start(node, self.state_dir)
        services.wait_ready([n.name for n in t.SERVICE_NODES], self.state_dir)
        log.info("lab: up (%d nodes)", len(t.NODES))

    def _down(self) -> list[str]:
        warnings: list[str] = []
        services.stop(self.state_dir, [n.name for n in t.SERVICE_NODES])
        daemons.stop_daemons(self.state_dir)
        for ns in nodes.existing_namespaces():
            others = services.stop_strays(ns)
            if others:
                # Deleting the name does not end them; they keep the namespace
                # (and its veths) alive until they exit. Not ours to kill.
                procs = ", ".join(services.describe(p) for p in others)
                warnings.append(f"{ns}: processes still inside, namespace lingers: {procs}")
            nodes.del_netns(ns)
        if self.state_dir.is_dir():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if os.path.ismount(t.LAB_BPFFS):
            subprocess.run(["umount", "-l", t.LAB_BPFFS], check=False)
        if os.path.isdir(t.LAB_BPFFS):
            os.rmdir(t.LAB_BPFFS)
        for w in warnings:
            log.warning("lab: %s", w)
        return warnings

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One lab operation at a time on this machine."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- running things in nodes --------------------------------------------------

    @staticmethod
    def namespace(node: str) -> str:
        """A node name (with or without "carom-", or "lan") as its namespace."""
        try:
            return t.namespace(node)
        except KeyError as exc:
            raise LabError(str(exc.args[0])) from None

    def argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside a node: for callers that spawn it themselves."""
        return nodes.netns_exec_argv(self.namespace(node), argv)

    def exec(
        self,
        node: str,
        argv: Sequence[str],
        *,
        check: bool = False,
        capture: bool = True,
        timeout: float | None = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a node and wait for it. With capture=False its
        stdio is the caller's (what `carom lab exec` uses)."""
        return subprocess.run(
            self.argv(node, argv),
            check=check,
            capture_output=capture,
            text=True,
            timeout=timeout,
            input=input,
        )

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command in a node without waiting (kwargs go to Popen)."""
        return subprocess.Popen(self.argv(node, argv), **kwargs)

    # --- looking at it --------------------------------------------------------------

    def status(self) -> LabStatus:
        rows = []
        router_up = nodes.netns_exists(t.ROUTER.name)
        macs = set(nodes.vip_neighbours(t.ROUTER.name).values()) if router_up else set()
        owners = [n.name for n in t.NODES if n.main.mac in macs]
        for node in t.NODES:
            present = nodes.netns_exists(node.name)
            addrs = nodes.addresses(node.name) if present else {}
            svc = services.state(self.state_dir, node.name) if node.runs_services else None
            xdp = None
            if node.role is t.Role.DIRECTOR:
                xdp = nodes.netns_exists(t.SWITCH_NS) and nodes.xdp_attached(
                    t.SWITCH_NS, node.main.port
                )
            rows.append(NodeStatus(node, present, addrs, svc, xdp))
        return LabStatus(
            switch_present=nodes.netns_exists(t.SWITCH_NS),
            nodes=tuple(rows),
            vip_owners=tuple(owners),
        )
