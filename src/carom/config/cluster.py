"""The `cluster` section: which directors form the cluster, which one this node
is, how they authenticate and how fast they notice each other's death.

Every director gets the same `members` list (copy the file, change `node`), so
a mismatch between nodes is a config difference you can diff, not a surprise.
"""

from __future__ import annotations

import os
import stat
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, Strict, model_validator

from carom.config.fields import ConfigProblems, Int, IPAddress, Loc, StrictModel, fail
from carom.config.fields import int_range as _in

DEFAULT_PORT = 7946
MIN_KEY_BYTES = 16
_fail = fail


def _address(value: Any) -> IPAddress:
    if not isinstance(value, str):
        _fail("expected an IP address as text, for example 192.0.2.2")
    try:
        return ip_address(value)
    except ValueError:
        _fail(f"{value!r} is not an IP address; for example 192.0.2.2 or 2001:db8:2::2")


def _key_file(value: Any) -> Path:
    """The shared HMAC key: must exist, be readable by us and by nobody else,
    and hold enough key material. Checked at load, so a reload with a broken
    key file is refused before anything changes."""
    if not isinstance(value, str) or not value.startswith("/"):
        _fail("expected an absolute path, for example /etc/carom/cluster.key")
    path = Path(value)
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        _fail(
            f"{value} does not exist; create it on every director with the same content, "
            f"e.g. `head -c 32 /dev/urandom > {value} && chmod 600 {value}`"
        )
    except OSError as exc:
        _fail(f"cannot read {value}: {exc.strerror}; make it readable by the carom daemon")
    if not stat.S_ISREG(st.st_mode):
        _fail(f"{value} is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _fail(f"{value} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 {value}")
    if len(data.strip()) < MIN_KEY_BYTES:
        _fail(
            f"{value} holds {len(data.strip())} bytes of key; use at least {MIN_KEY_BYTES} "
            f"(`head -c 32 /dev/urandom > {value}`)"
        )
    return path


Address = Annotated[IPAddress, BeforeValidator(_address)]
KeyFile = Annotated[Path, BeforeValidator(_key_file)]


def _name(value: str) -> str:
    if not value or len(value.encode()) > 63 or not value.isprintable() or " " in value:
        _fail(f"{value!r}: a node name is 1 to 63 printable bytes without spaces, e.g. dir1")
    return value


Name = Annotated[str, Strict(), AfterValidator(_name)]


class Member(StrictModel):
    """One director of the cluster (this node included)."""

    name: Name = Field(description="unique name, shown in logs and status", examples=["dir1"])
    id: Annotated[Int, _in(1, 65535)] = Field(
        description="unique number; the final election tie-break (lower wins)", examples=[1]
    )
    priority: Annotated[Int, _in(1, 255)] = Field(
        default=100, description="higher wins an election; unique in the cluster", examples=[100]
    )
    addresses: tuple[Address, ...] = Field(
        description="where its heartbeats and sync come from and go to; several "
        "addresses are several paths (heartbeats go over all of them)",
        examples=[["192.0.2.2"]],
    )


class Cluster(StrictModel):
    """Active/backup directors that share connection state."""

    node: Name = Field(description="which member this node is", examples=["dir1"])
    members: tuple[Member, ...] = Field(
        description="every director, this one included", examples=[[]]
    )
    key_file: KeyFile = Field(
        description="shared secret for HMAC on every message (same file on every director)",
        examples=["/etc/carom/cluster.key"],
    )
    port: Annotated[Int, _in(1, 65535)] = Field(
        default=DEFAULT_PORT, description="UDP port for heartbeats and sync", examples=[7946]
    )
    heartbeat_ms: Annotated[Int, _in(10, 10000, " ms")] = Field(
        default=100, description="heartbeat interval, milliseconds", examples=[100]
    )
    dead_after: Annotated[Int, _in(2, 50)] = Field(
        default=3,
        description="a peer missing this many heartbeats in a row is dead (100 ms x 3: "
        "a dead active is noticed within 0.3 s)",
        examples=[3],
    )
    election: Literal["builtin", "keepalived"] = Field(
        default="builtin",
        description="who decides the active director: carom's own election (heartbeats, "
        "priority), or keepalived's VRRP, whose notify scripts call `carom cluster vrrp "
        "master|backup|fault` (carom still syncs, resyncs and refuses to go active before "
        "it holds the table)",
        examples=["builtin"],
    )
    preempt: Annotated[bool, Strict()] = Field(
        default=False,
        description="take the active role back from a lower-priority node once this node "
        "is fully synced (default: no preemption, so a returning node never disturbs "
        "a working one)",
        examples=[False],
    )

    @model_validator(mode="after")
    def _check_members(self) -> Cluster:
        problems: list[tuple[Loc, str]] = []
        seen: dict[str, dict[object, int]] = {"name": {}, "id": {}, "priority": {}, "address": {}}
        for i, m in enumerate(self.members):
            for what, value in (("name", m.name), ("id", m.id), ("priority", m.priority)):
                if value in seen[what]:
                    other = seen[what][value]
                    problems.append(
                        (
                            ("members", i, what),
                            f"{value} is also members[{other}].{what}; every member needs "
                            f"its own {what}",
                        )
                    )
                seen[what].setdefault(value, i)
            for a in m.addresses:
                if a in seen["address"]:
                    problems.append(
                        (
                            ("members", i, "addresses"),
                            f"{a} is also an address of members[{seen['address'][a]}]",
                        )
                    )
                seen["address"].setdefault(a, i)
            if not m.addresses:
                problems.append((("members", i, "addresses"), "give at least one address"))
        if self.members and self.node not in seen["name"]:
            known = ", ".join(m.name for m in self.members)
            problems.append((("node",), f"{self.node!r} is not a member (members: {known})"))
        if len(self.members) < 2:
            problems.append((("members",), "a cluster needs at least two directors"))
        if problems:
            raise ConfigProblems(problems)
        return self

    @property
    def me(self) -> Member:
        return next(m for m in self.members if m.name == self.node)

    @property
    def peers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.name != self.node)

    def key(self) -> bytes:
        return self.key_file.read_bytes().strip()


def key_file_mode_ok(path: str) -> bool:
    """For `carom doctor` and tests: 0600-style permissions."""
    return not os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO)
