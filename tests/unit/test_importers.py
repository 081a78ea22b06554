"""carom import: realistic keepalived.conf and ipvsadm files -> exact YAML and warnings.

Each case runs the real command (`carom import ...`) and compares the file it
wrote and everything it printed with the golden files in import_cases/expected/.
To regenerate them after an intended change: CAROM_REGEN_GOLDEN=1 pytest this file,
then read the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carom.cli.main import main
from carom.config.load import load_config
from carom.config.schema import Config
from carom.importers import ipvsadm, keepalived
from carom.importers.common import ImportFailure, parse_fwmark_map
from carom.importers.kaconf import parse

CASES = Path(__file__).parent / "import_cases"
EXPECTED = CASES / "expected"
REGEN = os.environ.get("CAROM_REGEN_GOLDEN") == "1"

# name, format, input file, extra arguments, exit code
GOLDEN = [
    ("web-dr.keepalived", "keepalived", "web-dr.keepalived.conf", [], 0),
    ("mixed-methods.keepalived", "keepalived", "mixed-methods.keepalived.conf", [], 0),
    (
        "mixed-methods-fwmark.keepalived",
        "keepalived",
        "mixed-methods.keepalived.conf",
        ["--fwmark", "7=192.0.2.25", "--interface", "eth1"],
        0,
    ),
    ("duplicate.keepalived", "keepalived", "duplicate.keepalived.conf", [], 1),
    ("web-dr.ipvsadm", "ipvsadm", "web-dr.ipvsadm", ["--interface", "eth1"], 0),
    ("field-note-3.ipvsadm", "ipvsadm", "field-note-3.ipvsadm", [], 0),
    (
        "field-note-3-fwmark.ipvsadm",
        "ipvsadm",
        "field-note-3.ipvsadm",
        ["--fwmark", "100=192.0.2.25", "--local", "192.0.2.11", "--interface", "eth0"],
        0,
    ),
    (  # seed 003: the mark's ports given, so a multi-port service with persistence
        "field-note-3-fwmark-ports.ipvsadm",
        "ipvsadm",
        "field-note-3.ipvsadm",
        ["--fwmark", "100=192.0.2.25@110,143,25,5222-5223,389", "--interface", "eth0"],
        0,
    ),
]


def _golden(path: Path, actual: str) -> None:
    if REGEN:
        path.write_text(actual)
    assert actual == path.read_text()


@pytest.mark.parametrize(
    ("name", "fmt", "infile", "extra", "code"), GOLDEN, ids=[g[0] for g in GOLDEN]
)
def test_golden(
    name: str,
    fmt: str,
    infile: str,
    extra: list[str],
    code: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    rc = main(["import", fmt, str(CASES / infile), "-o", "carom.yaml", *extra])
    out, err = capsys.readouterr()
    assert out == ""
    _golden(EXPECTED / f"{name}.yaml", (tmp_path / "carom.yaml").read_text())
    _golden(EXPECTED / f"{name}.stderr", err)
    assert rc == code


@pytest.mark.parametrize(
    ("fmt", "infile", "extra"),
    [(g[1], g[2], g[3]) for g in GOLDEN if g[4] == 0],
    ids=[g[0] for g in GOLDEN if g[4] == 0],
)
def test_written_yaml_is_the_config_dict(
    fmt: str, infile: str, extra: list[str], tmp_path: Path
) -> None:
    """The YAML text and the dict say the same thing, as carom's loader reads them."""
    convert = keepalived.convert if fmt == "keepalived" else ipvsadm.convert
    opts = dict(zip(extra[::2], extra[1::2], strict=True))
    result = convert(
        (CASES / infile).read_text(),
        infile,
        interfaces=[opts["--interface"]] if "--interface" in opts else [],
        fwmarks=parse_fwmark_map([opts["--fwmark"]] if "--fwmark" in opts else []),
        local=[opts["--local"]] if "--local" in opts else [],
    )
    path = tmp_path / "carom.yaml"
    path.write_text(result.to_yaml(infile))
    assert load_config(path) == Config.model_validate(result.config_dict())


def test_stdout_holds_only_the_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["import", "ipvsadm", str(CASES / "web-dr.ipvsadm")])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == (EXPECTED / "web-dr.ipvsadm.yaml").read_text().replace("eth1", "eth0")
    assert "warning: web-dr.ipvsadm:1: ipvsadm rules do not name the interface" in err


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        (
            "ipvsadm",
            "-A -t www.example.com:http -s wlc\n",
            "x:1: 'www.example.com' is not an IP address; save the rules with numeric "
            "addresses and ports: ipvsadm-save -n",
        ),
        (
            "ipvsadm",
            "-A -t 192.0.2.1:http -s wlc\n",
            "x:1: 'http' is not a port number; save the rules with numeric addresses "
            "and ports: ipvsadm-save -n",
        ),
        (
            "ipvsadm",
            "\n-a -t 192.0.2.1:80 -r 192.0.2.2 -g\n",
            "x:2: -a for -t 192.0.2.1:80, which no earlier -A line defines; add it first",
        ),
        ("ipvsadm", "-A -s rr\n", "x:1: give exactly one of -t, -u, -f for the service"),
        (
            "ipvsadm",
            "-A -t 192.0.2.1:80\n-a -t 192.0.2.1:80 -r 192.0.2.2 -w heavy\n",
            "x:2: -w heavy: a weight is a number from 0",
        ),
        (
            "ipvsadm",
            "iptables -A INPUT -j ACCEPT\n",
            "x:1: unexpected word 'iptables'; is this ipvsadm-save output?",
        ),
        (
            "keepalived",
            "virtual_server 192.0.2.1 80 {\n  lb_kind DR\n",
            "x:1: this block is never closed; add the missing '}'",
        ),
        ("keepalived", "}\n", "x:1: '}' closes no block; remove it or add the missing '{'"),
        (
            "keepalived",
            "virtual_server group NOPE {\n}\n",
            "x:1: virtual_server group NOPE: no virtual_server_group of that name",
        ),
        (
            "keepalived",
            "virtual_server_group G {\n 192.0.2.250-300 80\n}\n"
            "virtual_server group G {\n lb_kind DR\n}\n",
            "x:2: '192.0.2.250-300': the range must end after it starts and within the last "
            "part of the address",
        ),
        (
            "keepalived",
            "virtual_server 192.0.2.1 80 {\n lb_kind DR\n real_server web1 80 {\n }\n}\n",
            "x:3: real_server 'web1' is not an IP address",
        ),
    ],
)
def test_bad_input_is_refused(fmt: str, text: str, message: str) -> None:
    convert = keepalived.convert if fmt == "keepalived" else ipvsadm.convert
    with pytest.raises(ImportFailure) as exc:
        convert(text, "x")
    assert str(exc.value) == message


def test_bad_input_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "rules"
    src.write_text("-A -t lb.example.com:https -s rr\n")
    out = tmp_path / "carom.yaml"
    assert main(["import", "ipvsadm", str(src), "-o", str(out)]) == 2
    assert not out.exists()
    assert "rules:1: 'lb.example.com' is not an IP address" in capsys.readouterr().err


def test_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "missing" / "carom.yaml"
    assert main(["import", "ipvsadm", str(CASES / "web-dr.ipvsadm"), "-o", str(out)]) == 2
    assert f"cannot write {out}: No such file or directory" in capsys.readouterr().err


def test_existing_output_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "carom.yaml"
    out.write_text("mine\n")
    assert main(["import", "ipvsadm", str(CASES / "web-dr.ipvsadm"), "-o", str(out)]) == 2
    assert out.read_text() == "mine\n"
    assert "exists; use --force" in capsys.readouterr().err


def test_keepalived_syntax() -> None:
    """Comments with # and !, quotes, a brace on the next line, one-line blocks."""
    tree = parse('a 1 2 ! comment\nb "x y" # c\n{\n  url { path /h status_code 200 }\n}\n!\n', "t")
    assert [(s.keyword, s.args, s.line) for s in tree] == [("a", ("1", "2"), 1), ("b", ("x y",), 2)]
    block = tree[1].block
    assert block is not None and block[0].keyword == "url"
    assert block[0].block is not None
    assert [(s.keyword, s.args) for s in block[0].block] == [("path", ("/h", "status_code", "200"))]


def test_keepalived_group_ranges() -> None:
    text = (
        "virtual_server_group G {\n 2001:db8::a-c 443\n 192.0.2.254-255 80\n fwmark 9\n}\n"
        "virtual_server group G {\n lb_kind DR\n real_server 192.0.2.7 {\n }\n}\n"
    )
    result = keepalived.convert(text, "x", interfaces=["eth0"])
    assert [(s.vip, s.port) for s in result.services] == [
        ("2001:db8::a", 443),
        ("2001:db8::b", 443),
        ("2001:db8::c", 443),
        ("192.0.2.254", 80),
        ("192.0.2.255", 80),
    ]
    assert [n.message[:40] for n in result.notes] == ["virtual_server group G: fwmark service 9"]


def test_ipvsadm_long_options_and_edits() -> None:
    text = (
        "ipvsadm --add-service --tcp-service 192.0.2.1:80 --scheduler mh --persistent\n"
        "ipvsadm --add-server --tcp-service 192.0.2.1:80 --real-server 192.0.2.2 "
        "--gatewaying --weight 4\n"
        "ipvsadm -a -t 192.0.2.1:80 -r 192.0.2.3\n"
        "ipvsadm -e -t 192.0.2.1:80 -r 192.0.2.2 -w 7\n"
        "ipvsadm -d -t 192.0.2.1:80 -r 192.0.2.3\n"
    )
    result = ipvsadm.convert(text, "x", interfaces=["eth0"])
    assert result.notes == ()
    assert result.config_dict()["services"] == [
        {
            "vip": "192.0.2.1",
            "protocol": "tcp",
            "port": 80,
            "persistence_timeout": 300,
            "reals": [{"address": "192.0.2.2", "weight": 7}],
        }
    ]
