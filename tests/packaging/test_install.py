"""carom as an operator installs it: from a fresh source tree into a clean venv.

The source tree is a copy of the files git tracks, so no compiled BPF object is
in it: the objects the installed carom finds were built by the package build.
The installed commands then run with a PATH that has no clang. Slow (a venv and
a pip install), but it is the only honest proof of the packaging."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "carom@.service"

PROBE = """
from pathlib import Path
import carom
from carom.bpf import libbpf
from carom.bpf.btfcheck import check_abi
from carom.bpf.loader import object_path

path = Path(object_path())
with libbpf.BpfObject(str(path)) as obj:   # libbpf parses it (no load, no root)
    check_abi(obj.btf())                     # and its BTF matches carom.abi
print(path)
print(Path(carom.__file__).parent)
"""


def _tracked_tree(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("clang") is None or shutil.which("git") is None:
        pytest.skip("building the package needs clang and git (make deps)")
    base = tmp_path_factory.mktemp("install")
    tree = _tracked_tree(base / "src")
    assert not list(tree.rglob("*.o")), "git tracks a compiled object"
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(tree)],
        check=True,
        cwd=base,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return venv


def _no_clang_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/nonexistent"
    return env


def test_version(installed: Path) -> None:
    out = subprocess.run(
        [str(installed / "bin" / "carom"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        env=_no_clang_env(installed),
        cwd="/",
    )
    from carom import __version__

    assert out.stdout == f"carom {__version__}\n"


def test_bpf_object_comes_from_the_installed_package(installed: Path) -> None:
    out = subprocess.run(
        [str(installed / "bin" / "python"), "-c", PROBE],
        capture_output=True,
        text=True,
        check=False,
        env=_no_clang_env(installed),
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    obj, package = (Path(line) for line in out.stdout.splitlines())
    assert package.is_relative_to(installed), package  # not the source tree
    assert obj == package / "bpf" / "obj" / "carom.bpf.o"
    for name in ("carom", "xdp_pass", "bench_reflector"):
        head = (package / "bpf" / "obj" / f"{name}.bpf.o").read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 247  # EM_BPF


def test_unit_file_verifies(installed: Path, tmp_path: Path) -> None:
    """The unit as `make install` writes it, checked by systemd-analyze verify."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    text = UNIT.read_text().replace("@BINDIR@", str(installed / "bin"))
    text = text.replace("@CONFDIR@", "/etc/carom")
    assert "@" not in text.replace("carom@", "").replace("%i", "")
    unit = tmp_path / "carom@edge-1.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # lines about other units on this machine are not ours to judge
    ours = [line for line in result.stderr.splitlines() if "carom@" in line]
    assert ours == [], ours


def test_maglev_helper_is_built_into_the_package(installed: Path) -> None:
    """Without the compiled fill an installed carom builds tables ten times slower."""
    probe = (
        "from carom.sched import maglev_native as n; import carom, pathlib; "
        "print(n.LIBRARY); print(n.available())"
    )
    out = subprocess.run(
        [str(installed / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        env=_no_clang_env(installed),
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    lib, ok = out.stdout.splitlines()
    assert Path(lib).is_relative_to(installed) and ok == "True", out.stdout
