"""Attaching and detaching as steps of an apply, each with its undo, so a reload
that fails at an interface leaves the maps and the interfaces as they were."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from carom.bpf import libbpf, loader
from carom.bpf.loader import Dataplane
from carom.config.schema import Config
from carom.daemon.image import Transaction

log = logging.getLogger("carom.daemon")

_FLAGS = {"native": libbpf.XDP_FLAGS_DRV_MODE, "generic": libbpf.XDP_FLAGS_SKB_MODE}


class InterfaceError(Exception):
    """An interface step failed or cannot be done."""

    def __init__(self, message: str, step: str = "attach") -> None:
        super().__init__(message)
        self.step = step


def check_xdp_mode(dp: Dataplane, old: Config, new: Config) -> None:
    """A changed xdp_mode is applied (interfaces added now attach in it; running
    ones already satisfy it) or refused with the reason: the kernel cannot move
    a program between native and generic mode atomically, so switching a running
    interface would open a gap in which packets bypass carom."""
    if new.xdp_mode == old.xdp_mode:
        return
    for ifname in set(old.interfaces) & set(new.interfaces):
        att = dp.attachments.get(ifname)
        if att is None or new.xdp_mode == "auto" or att.mode == new.xdp_mode:
            continue
        raise InterfaceError(
            f"xdp_mode {old.xdp_mode} -> {new.xdp_mode}: {ifname} runs in {att.mode} mode, "
            f"and the kernel cannot switch a program to {new.xdp_mode} mode without a gap "
            "in which packets bypass carom; keep xdp_mode, or `carom stop --detach` and "
            "start again in the new mode (interrupts traffic)",
            "xdp_mode",
        )
    log.info(
        "xdp_mode changed; running interfaces already satisfy it",
        extra={"old": old.xdp_mode, "new": new.xdp_mode},
    )


def apply_interfaces(
    dp: Dataplane,
    new: Config,
    old: Config | None,
    tx: Transaction,
    fault: Callable[[str], None] | None,
) -> None:
    """Attach to the interfaces `new` adds (all of them at start) and detach from
    those it drops, recording how to undo each step in `tx`."""
    held: list[int] = []  # fds of replaced programs, kept alive until the end
    try:
        added = [i for i in new.interfaces if old is None or i not in old.interfaces]
        for ifname in added:
            _attach(dp, ifname, new.xdp_mode, tx, held)
        if fault is not None:
            fault("attach")
        removed = [] if old is None else [i for i in old.interfaces if i not in new.interfaces]
        for ifname in removed:
            _detach(dp, ifname, tx)
        if fault is not None:
            fault("detach")
    finally:
        # Undo steps that need a replaced program reopen it by fd now; once the
        # transaction ends nothing may hold it.
        tx.release.append(lambda: _close_all(held))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _attach(dp: Dataplane, ifname: str, mode: str, tx: Transaction, held: list[int]) -> None:
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError as exc:
        raise InterfaceError(f"cannot attach to {ifname}: {exc.strerror}") from exc
    before = loader.current_xdp(ifindex)
    old_fds = {m: libbpf.prog_fd_by_id(pid) for m, pid in before.items()}
    held.extend(old_fds.values())
    prev_att = dp.attachments.get(ifname)
    try:
        att = dp.attach(ifname, mode)
    except (OSError, ValueError) as exc:
        raise InterfaceError(f"attaching to {ifname} failed: {exc}") from exc

    def undo() -> None:
        flags = _FLAGS[att.mode]
        if att.mode in old_fds:  # put the replaced program back, atomically
            libbpf.xdp_attach(ifindex, old_fds[att.mode], flags, old_prog_fd=dp.prog_fd)
        else:
            libbpf.xdp_detach(ifindex, flags)
        if prev_att is not None:
            dp.attachments[ifname] = prev_att
        else:
            dp.attachments.pop(ifname, None)

    tx.undo.append(undo)


def _detach(dp: Dataplane, ifname: str, tx: Transaction) -> None:
    att = dp.attachments.get(ifname)
    try:
        loader.detach(ifname)
    except OSError as exc:
        raise InterfaceError(f"detaching from {ifname} failed: {exc}", "detach") from exc
    dp.attachments.pop(ifname, None)
    mode = att.mode if att is not None else "auto"

    def undo() -> None:
        dp.attach(ifname, mode)

    tx.undo.append(undo)
