"""The `cluster` section: a good one loads; each mistake an operator makes gets
its own file:line message with the fix, and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from carom.config.load import ConfigError, load_config


def _key(tmp_path: Path, data: bytes = b"s" * 32, mode: int = 0o600) -> Path:
    key = tmp_path / "cluster.key"
    key.write_bytes(data)
    key.chmod(mode)
    return key


def _write(tmp_path: Path, key: Path | str, members: str, node: str = "dir1") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"interfaces: [eth0]\ncluster:\n  node: {node}\n  key_file: {key}\n  members:\n" + members
    )
    return cfg


TWO = (
    "    - {name: dir1, id: 1, priority: 200, addresses: [192.0.2.2]}\n"
    "    - {name: dir2, id: 2, priority: 100, addresses: [192.0.2.3, 198.51.100.3]}\n"
)


def test_a_good_cluster_loads(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, _key(tmp_path), TWO))
    assert cfg.cluster is not None
    assert cfg.cluster.me.name == "dir1" and [p.name for p in cfg.cluster.peers] == ["dir2"]
    assert cfg.cluster.key() == b"s" * 32
    assert (cfg.cluster.heartbeat_ms, cfg.cluster.dead_after, cfg.cluster.preempt) == (
        100,
        3,
        False,
    )


def _errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.errors


def test_key_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    (e,) = _errors(_write(tmp_path, missing, TWO))
    assert e.startswith(f"{tmp_path}/c.yaml:4: cluster.key_file: {missing} does not exist")
    assert "head -c 32 /dev/urandom" in e
    (e,) = _errors(_write(tmp_path, _key(tmp_path, mode=0o644), TWO))
    assert "readable by others (mode 644); chmod 600" in e
    (e,) = _errors(_write(tmp_path, _key(tmp_path, data=b"short"), TWO))
    assert "holds 5 bytes of key; use at least 16" in e
    (e,) = _errors(_write(tmp_path, "relative.key", TWO))
    assert "expected an absolute path" in e


def test_member_problems_point_at_their_lines(tmp_path: Path) -> None:
    members = (
        "    - {name: dir1, id: 1, priority: 100, addresses: [192.0.2.2]}\n"
        "    - {name: dir2, id: 1, priority: 100, addresses: [192.0.2.2]}\n"
    )
    errors = _errors(_write(tmp_path, _key(tmp_path), members))
    assert errors == [
        f"{tmp_path}/c.yaml:7: cluster.members[1].id: 1 is also members[0].id; every "
        "member needs its own id",
        f"{tmp_path}/c.yaml:7: cluster.members[1].priority: 100 is also members[0].priority; "
        "every member needs its own priority",
        f"{tmp_path}/c.yaml:7: cluster.members[1].addresses: 192.0.2.2 is also an address "
        "of members[0]",
    ]


def test_unknown_node_and_lonely_cluster(tmp_path: Path) -> None:
    (e,) = _errors(_write(tmp_path, _key(tmp_path), TWO, node="dir9"))
    assert e == f"{tmp_path}/c.yaml:3: cluster.node: 'dir9' is not a member (members: dir1, dir2)"
    one = "    - {name: dir1, id: 1, addresses: [192.0.2.2]}\n"
    (e,) = _errors(_write(tmp_path, _key(tmp_path), one))
    assert "cluster.members: a cluster needs at least two directors" in e


def test_timer_ranges(tmp_path: Path) -> None:
    cfg = _write(tmp_path, _key(tmp_path), TWO)
    cfg.write_text(cfg.read_text() + "  heartbeat_ms: 5\n  dead_after: 1\n")
    errors = _errors(cfg)
    assert any("cluster.heartbeat_ms: 5 is out of range; use 10 to 10000 ms" in e for e in errors)
    assert any("cluster.dead_after: 1 is out of range; use 2 to 50" in e for e in errors)
