"""The declarative config: every rule, its message and its line.

The table of bad configs lives in config_cases/bad/: each file marks every line
that must be reported with a trailing `# error: FRAGMENT` comment (several on one
line are allowed). A case passes when each marked line gets an error containing
its fragment, and there are no other errors."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from carom.config.cluster import Cluster, Member
from carom.config.load import ConfigError, load_config, parse_config
from carom.config.ops import Api, Metrics
from carom.config.schema import (
    Config,
    Limits,
    Node,
    Real,
    Service,
    Timeouts,
    is_prime,
    nearest_primes,
)

CASES = Path(__file__).parent / "config_cases"
BAD = sorted((CASES / "bad").glob("*.yaml"))
GOOD = sorted((CASES / "good").glob("*.yaml"))
DOCS = Path(__file__).parents[2] / "docs" / "config.md"
MARK = re.compile(r"# error: (.*?)(?=\s+# error: |$)")


def expected_errors(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        out += [(number, fragment.strip()) for fragment in MARK.findall(line)]
    return out


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.errors


def v4(text: str) -> IPv4Address:
    return IPv4Address(text)


def v6(text: str) -> IPv6Address:
    return IPv6Address(text)


# --- the table of bad configs ------------------------------------------------------


def test_the_table_is_not_empty() -> None:
    assert len(BAD) > 40
    assert all(expected_errors(path) for path in BAD), "every bad case marks its errors"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config(path: Path) -> None:
    errors = errors_of(path)
    expected = expected_errors(path)
    for line, fragment in expected:
        prefix = f"{path}:{line}: "
        assert any(e.startswith(prefix) and fragment in e for e in errors), (
            f"no error at line {line} containing {fragment!r}; got:\n" + "\n".join(errors)
        )
    assert len(errors) == len(expected), "unexpected errors:\n" + "\n".join(errors)


def test_message_names_file_line_path_problem_and_fix(tmp_path: Path) -> None:
    text = """\
instance: default
interfaces: [eth0]
node:
  role: active
  fragments: drop
timeouts:
  tcp_idle: 900
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    reals:
      - address: 192.0.2.11
      - address: x.y
"""
    path = tmp_path / "carom.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:14: services[0].reals[1].address: 'x.y' is not an IP address; "
        "use an IPv4 or IPv6 address such as 192.0.2.11"
    )


def test_all_errors_each_on_its_own_line_in_file_order() -> None:
    text = """\
interfaces: [eth0]
xdp_mode: fast
services:
  - vip: 192.0.2.100
    port: 99999
    reals: [{address: 192.0.2.11, weight: -3}]
timeouts: {tcp_idle: 0}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    errors = info.value.errors
    assert [e.split(":")[1] for e in errors] == ["2", "5", "6", "7"]
    assert str(info.value) == "\n".join(errors)
    assert "\n" not in "".join(errors)


def test_parse_config_default_source() -> None:
    with pytest.raises(ConfigError, match=r"^<string>:1: interfaces: required field"):
        parse_config("instance: default\n")


# --- the file and the YAML around the config -----------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "c.yaml:1: the file is empty; a config needs at least interfaces"),
        ("# nothing but a comment\n\n", "c.yaml:1: the file is empty"),
        ("- eth0\n", "c.yaml:1: the top level must be a mapping of fields"),
        ("\n\njust text\n", "c.yaml:3: the top level must be a mapping of fields"),
        ("interfaces: [eth0\n", "c.yaml:2: not valid YAML: expected ',' or ']'"),
        ("interfaces: [eth0\n", "while parsing a flow sequence that starts on line 1"),
        ("node:\n  role: active\n   fragments: drop\n", "c.yaml:3: not valid YAML: mapping values"),
        ("interfaces:\n\t- eth0\n", "c.yaml:2: not valid YAML: found character '\\t'"),
        ("interfaces:\n\t- eth0\n", "indent with spaces: YAML does not allow tabs"),
        ("a: 'open\n", "while scanning a quoted scalar that starts on line 1"),
        ("interfaces: [a]\n---\nx: 1\n", "c.yaml:2: a config is one YAML document"),
        ("interfaces: [a]\n[1]: 2\n", "c.yaml:2: unsupported YAML: found unhashable key"),
    ],
)
def test_not_a_config(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert len(info.value.errors) == 1
    assert expected in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.yaml:1: the file is empty"):
        load_config(path)


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found; check the path"):
        load_config(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"interfaces: [eth0]\nservices:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml:3: not UTF-8 text"):
        load_config(path)


def test_str_path_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("interfaces: [eth0]\n")
    assert load_config(str(path)).interfaces == ("eth0",)


# --- good configs -------------------------------------------------------------------


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_config_parses(path: Path) -> None:
    load_config(path)


def test_minimal() -> None:
    cfg = load_config(CASES / "good" / "minimal.yaml")
    assert cfg == Config(
        interfaces=("eth0",),
        services=(
            Service(
                name="web",
                vip=v4("192.0.2.100"),
                protocol="tcp",
                port=80,
                reals=(Real(address=v4("192.0.2.11")), Real(address=v4("192.0.2.12"))),
            ),
        ),
    )
    assert cfg.warnings() == []


def test_full() -> None:
    cfg = load_config(CASES / "good" / "full.yaml")
    assert cfg.instance == "edge-1"
    assert cfg.interfaces == ("eth0", "eth1")
    assert cfg.xdp_mode == "native"
    assert cfg.bpffs == Path("/sys/fs/bpf")
    assert cfg.control_socket == Path("/run/carom/edge-1.sock")
    assert cfg.node == Node(role="active", fragments="pass")
    assert cfg.limits == Limits(
        max_services=128,
        max_reals=1024,
        maglev_table_size=65537,
        conn_table_size=2097152,
        persist_table_size=131072,
    )
    assert cfg.timeouts == Timeouts(tcp_idle=600, udp_idle=60)
    web, tls, dns, web6 = cfg.services
    assert web.reals == (
        Real(address=v4("192.0.2.11")),
        Real(address=v4("192.0.2.12"), weight=2),
        Real(address=v4("192.0.2.13"), weight=0),
    )
    assert tls.persistence_timeout == 300
    assert dns.protocol == "udp"
    assert dns.reals[1] == Real(address=v4("192.0.2.5"), local=True)
    assert web6.vip == v6("2001:db8::100")
    assert web6.port == 0
    assert web6.reals[0].address == v6("2001:db8::11")
    assert cfg.warnings() == []


def test_docs_carry_the_full_example_verbatim() -> None:
    assert (CASES / "good" / "full.yaml").read_text() in DOCS.read_text()


def test_docs_yaml_examples_are_valid(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 2
    key = tmp_path / "cluster.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    for block in blocks:
        if block.startswith("cluster:"):  # a section: completed, its key file made
            block = "interfaces: [eth0]\n" + block.replace("/etc/carom/cluster.key", str(key))
        parse_config(block, "docs/config.md")


def test_docs_name_every_field() -> None:
    docs = DOCS.read_text()
    for model in (Config, Node, Limits, Timeouts, Service, Real, Cluster, Member, Metrics, Api):
        for name in model.model_fields:
            assert f"`{name}`" in docs, f"docs/config.md does not describe {name}"


def test_port_all_and_a_specific_port_coexist_silently() -> None:
    cfg = load_config(CASES / "good" / "port_all_and_specific.yaml")
    assert [s.key for s in cfg.services] == [
        (v4("192.0.2.100"), "tcp", 0),
        (v4("192.0.2.100"), "tcp", 80),
        (v4("192.0.2.100"), "udp", 80),
    ]
    assert cfg.warnings() == []


def test_yaml_12_core_schema() -> None:
    cfg = load_config(CASES / "good" / "yaml12.yaml")
    assert cfg.instance == "no"
    assert cfg.services[0].vip == v6("1:2:3:4:5:6:7:8")
    assert cfg.services[0].port == 80  # 0x50
    assert parse_config("interfaces: [eth0]\ntimeouts: {tcp_idle: 0o17}").timeouts.tcp_idle == 15
    assert parse_config("interfaces: [eth0]\ntimeouts: {tcp_idle: 090}").timeouts.tcp_idle == 90


def test_anchors_and_merge_keys() -> None:
    cfg = load_config(CASES / "good" / "anchors.yaml")
    first, second, third = cfg.services
    assert second.vip == first.vip and second.port == 443
    assert first.reals == second.reals == third.reals


def test_errors_under_a_merge_key_point_at_the_anchor() -> None:
    text = """\
interfaces: [eth0]
services:
  - &web
    vip: 192.0.2.100
    port: 80
    reals:
      - address: x.y
  - <<: *web
    port: 443
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert info.value.errors == [
        f"c.yaml:7: services[{i}].reals[0].address: 'x.y' is not an IP address; "
        "use an IPv4 or IPv6 address such as 192.0.2.11"
        for i in (0, 1)
    ]


# --- defaults and round trips ------------------------------------------------------


def test_defaults() -> None:
    cfg = parse_config("interfaces: [eth0]\n")
    assert cfg == Config(interfaces=("eth0",))
    assert cfg.instance == "default"
    assert cfg.xdp_mode == "auto"
    assert cfg.bpffs == Path("/sys/fs/bpf")
    assert cfg.control_socket is None
    assert cfg.node == Node(role="active", fragments="drop")
    assert cfg.limits == Limits(
        max_services=64,
        max_reals=4096,
        maglev_table_size=65537,
        conn_table_size=1048576,
        persist_table_size=65536,
    )
    assert cfg.timeouts == Timeouts(tcp_idle=900, udp_idle=300)
    assert cfg.services == ()
    svc = parse_config("interfaces: [e]\nservices: [{vip: 192.0.2.1, port: 80}]").services[0]
    assert (svc.name, svc.protocol, svc.method, svc.persistence_timeout, svc.reals) == (
        None,
        "tcp",
        "dsr",
        0,
        (),
    )
    real = Real(address=v4("192.0.2.11"))
    assert (real.weight, real.local) == (1, False)


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_round_trip(path: Path) -> None:
    cfg = load_config(path)
    assert Config.model_validate(cfg.model_dump()) == cfg
    dumped = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    assert parse_config(dumped) == cfg


def test_round_trip_of_defaults() -> None:
    dumped = Config(interfaces=("eth0",)).model_dump(mode="json")
    assert dumped["services"] == []
    assert parse_config(yaml.safe_dump(dumped)) == Config(interfaces=("eth0",))
    assert parse_config("interfaces: [eth0]\nservices: []\nnode: {}\nlimits: {}\n") == Config(
        interfaces=("eth0",)
    )


def test_port_all_dumps_as_all() -> None:
    cfg = parse_config("interfaces: [e]\nservices: [{vip: 192.0.2.1, port: all}]")
    assert cfg.services[0].port == 0
    assert cfg.model_dump(mode="json")["services"][0]["port"] == "all"


# --- the model in Python ------------------------------------------------------------


def test_service_helpers() -> None:
    svc = Service(vip=v4("192.0.2.100"), protocol="udp", port=53)
    assert svc.family == 4
    assert svc.port_number == 53
    assert svc.key == (v4("192.0.2.100"), "udp", 53)
    assert svc.display_name == "192.0.2.100:53/udp"
    all_ports = Service.model_validate({"vip": "2001:db8::1", "port": "all", "name": "v6"})
    assert all_ports.family == 6
    assert all_ports.port_number == 0
    assert all_ports.key == (v6("2001:db8::1"), "tcp", 0)
    assert all_ports.display_name == "v6"
    unnamed = all_ports.model_copy(update={"name": None})
    assert unnamed.display_name == "[2001:db8::1]:all/tcp"


def test_addresses_are_ipaddress_objects() -> None:
    cfg = load_config(CASES / "good" / "full.yaml")
    assert all(isinstance(s.vip, IPv4Address | IPv6Address) for s in cfg.services)
    assert ip_address("192.0.2.11") in {r.address for s in cfg.services for r in s.reals}


def test_models_are_frozen_and_hashable() -> None:
    cfg = load_config(CASES / "good" / "full.yaml")
    with pytest.raises(ValidationError):
        cfg.instance = "other"
    with pytest.raises(ValidationError):
        cfg.services[0].reals[0].weight = 5
    assert hash(cfg) == hash(load_config(CASES / "good" / "full.yaml"))


def test_rules_hold_without_the_loader() -> None:
    svc = Service(vip=v4("192.0.2.100"), port=80)
    with pytest.raises(ValidationError, match=r"services\[1\]: duplicate of services\[0\]"):
        Config(interfaces=("eth0",), services=(svc, svc))
    with pytest.raises(ValidationError, match="is IPv6 but the vip"):
        Service(vip=v4("192.0.2.100"), port=80, reals=(Real(address=v6("2001:db8::1")),))
    with pytest.raises(ValidationError, match="is a loopback address"):
        Real(address=v4("127.0.0.1"))


def test_loading_does_not_touch_paths_it_names(tmp_path: Path) -> None:
    bpffs = tmp_path / "bpffs"
    sock = tmp_path / "run" / "c.sock"
    cfg = parse_config(f"interfaces: [eth0]\nbpffs: {bpffs}\ncontrol_socket: {sock}\n")
    assert cfg.bpffs == bpffs and cfg.control_socket == sock
    assert list(tmp_path.iterdir()) == []


# --- warnings -------------------------------------------------------------------------


def test_warnings() -> None:
    cfg = parse_config(
        """\
interfaces: [eth0]
services:
  - {name: web, vip: 192.0.2.100, port: 80}
  - name: api
    vip: 192.0.2.100
    port: 8080
    reals: [{address: 192.0.2.11, weight: 0}, {address: 192.0.2.12, weight: 0}]
  - {name: ok, vip: 192.0.2.100, port: 443, reals: [{address: 192.0.2.11}]}
"""
    )
    assert cfg.warnings() == [
        "service web has no reals: new connections will be dropped",
        "service api: all reals have weight 0: new connections will be dropped",
    ]


def test_warning_no_services() -> None:
    assert parse_config("interfaces: [eth0]").warnings() == [
        "no services: carom passes every packet to the local stack"
    ]


def test_warning_small_maglev_table() -> None:
    text = """\
interfaces: [eth0]
limits: {maglev_table_size: %d}
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    reals: [{address: 192.0.2.11}, {address: 192.0.2.12}, {address: 192.0.2.13, weight: 0}]
"""
    # two weighted reals want at least 200 slots; the drained one does not count
    assert parse_config(text % 211).warnings() == []
    assert parse_config(text % 101).warnings() == [
        "service web: 2 reals share 101 Maglev slots, so their shares of traffic will be "
        "uneven; limits.maglev_table_size: 211 keeps them within about 1%"
    ]


# --- primes ----------------------------------------------------------------------------


def test_primes() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(65537) and is_prime(1000003) and not is_prime(65536)
    assert nearest_primes(65536) == (65521, 65537)
    assert nearest_primes(14) == (13, 17)
    assert nearest_primes(1000002) == (999983, 1000003)
