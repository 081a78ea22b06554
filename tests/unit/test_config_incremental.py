"""The incremental loader (config/incremental.py) is a shortcut, never a second
opinion: for every file it returns what the full loader returns, and every
error comes from the full loader, word for word and line for line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from carom.config.incremental import ConfigCache, split_services
from carom.config.load import ConfigError, load_config, parse_config

CASES = Path(__file__).parent / "config_cases"
BAD = sorted((CASES / "bad").glob("*.yaml"))
GOOD = sorted((CASES / "good").glob("*.yaml"))


def big(n: int = 40, **top: object) -> dict[str, object]:
    services = [
        {
            "name": f"s{i}",
            "vip": "192.0.2.100",
            "port": 1000 + i,
            "reals": [{"address": f"10.0.{i % 3}.{k + 1}", "weight": k + 1} for k in range(3)],
        }
        for i in range(n)
    ]
    return {"interfaces": ["eth0"], "services": services, **top}


def text_of(cfg: dict[str, object], indent_items: bool = True) -> str:
    text = yaml.safe_dump(cfg, sort_keys=False)
    if indent_items:  # PyYAML writes items at column 0; people often indent them
        lines = []
        inside = False
        for line in text.splitlines(keepends=True):
            if line.startswith("services:"):
                inside = True
            elif inside and not line.startswith(("-", " ")):
                inside = False
            lines.append("  " + line if inside and not line.startswith("services:") else line)
        text = "".join(lines)
    return text


def primed(text: str) -> ConfigCache:
    cache = ConfigCache()
    cache.remember(text, parse_config(text, "c.yaml"))
    return cache


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_files_give_what_the_full_loader_gives(path: Path) -> None:
    text = path.read_text()
    cold = ConfigCache().fast(text)  # nothing cached: every item is parsed
    assert cold is None or cold == load_config(path)
    assert primed(text).load(path) == load_config(path)


def test_the_plain_shape_takes_the_fast_path() -> None:
    assert ConfigCache().fast((CASES / "good" / "full.yaml").read_text()) is not None
    assert split_services((CASES / "good" / "anchors.yaml").read_text()) is None


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_files_give_the_full_loaders_errors(path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as full:
        load_config(path)
    cache = ConfigCache()
    with pytest.raises(ConfigError) as fast:
        cache.load(path)
    assert fast.value.errors == full.value.errors
    # and after a valid file whose items the bad one shares
    good = tmp_path / "good.yaml"
    good.write_text(text_of(big()))
    cache.load(good)
    with pytest.raises(ConfigError) as again:
        cache.load(path)
    assert again.value.errors == full.value.errors


@pytest.mark.parametrize("indent", [True, False])
def test_one_changed_service_is_the_only_one_parsed(indent: bool) -> None:
    cfg = big(limits={"max_services": 64})
    cache = primed(text_of(cfg, indent))
    cfg["services"][7]["reals"][1]["address"] = "10.0.9.9"  # type: ignore[index]
    text = text_of(cfg, indent)
    assert cache.fast(text) == parse_config(text)
    assert cache.last_changed == 1
    # moved, removed, renamed: still one new item at most, same result
    services = cfg["services"]
    assert isinstance(services, list)
    services.insert(0, services.pop(30))
    del services[5]
    services[2]["name"] = "renamed"
    text = text_of(cfg, indent)
    assert cache.fast(text) == parse_config(text)
    assert cache.last_changed == 1


def test_comments_blank_lines_and_keys_after_the_services() -> None:
    text = (
        "interfaces: [eth0]\n"
        "services:   # the list\n"
        "\n"
        "# first\n"
        "  - vip: 192.0.2.1\n"
        "    port: 80\n"
        "# a comment at column 0 between items\n"
        "\n"
        "  - vip: 192.0.2.1\n"
        "    port: 81\n"
        "    reals:\n"
        "    - address: 10.0.0.1\n"
        "timeouts: {tcp_idle: 60}\n"
        "limits:\n"
        "  max_services: 8\n"
    )
    parts = split_services(text)
    assert parts is not None and len(parts.items) == 2
    assert "timeouts" in parts.head and "10.0.0.1" not in parts.head
    got = ConfigCache().fast(text)
    assert got is not None and got == parse_config(text)
    assert got.timeouts.tcp_idle == 60 and got.limits.max_services == 8


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        # a rule across services, between a cached item and a changed one
        (lambda s: s.replace("port: 1003", "port: 1002"), "duplicate of services[2]"),
        # a duplicate key inside one item: the YAML constructor alone would keep the last
        (
            lambda s: s.replace("  - name: s4\n", "  - name: s4\n    name: s44\n"),
            "duplicate key 'name'",
        ),
        # a limit the cached services no longer fit
        (lambda s: "limits: {max_services: 16}\n" + s, "limits.max_services is 16"),
        # top-level problems
        (lambda s: s.replace("interfaces:", "interface:"), "did you mean 'interfaces'"),
        (lambda s: s + "services:\n  - vip: 192.0.2.1\n    port: 1\n", "duplicate key"),
    ],
)
def test_a_change_that_breaks_the_file_reports_like_the_full_loader(
    change: object, fragment: str, tmp_path: Path
) -> None:
    text = text_of(big())
    cache = primed(text)
    assert callable(change)
    bad = tmp_path / "bad.yaml"
    bad.write_text(change(text))
    with pytest.raises(ConfigError) as full:
        load_config(bad)
    with pytest.raises(ConfigError) as fast:
        cache.load(bad)
    assert fast.value.errors == full.value.errors
    assert any(fragment in e for e in fast.value.errors), fast.value.errors


def test_many_changes_go_to_the_full_loader() -> None:
    cfg = big(100, limits={"max_services": 128})
    cache = primed(text_of(cfg))
    for svc in cfg["services"]:  # type: ignore[attr-defined]
        svc["reals"][0]["weight"] = 9
    assert cache.fast(text_of(cfg)) is None  # 100 > max_changed: not on the fast path
