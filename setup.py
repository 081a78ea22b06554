"""Build hook: compile the BPF programs (bpf/*.bpf.c) into the package.

`pip install .`, `python -m build` and the wheel they make carry the compiled
objects in carom/bpf/obj/, so an installed carom runs without clang. The objects
are build outputs: they are not in git. Everything else about the package is
declared in pyproject.toml.

The flags match the Makefile's BPF_CFLAGS (`make bpf` builds the same objects
in the source tree for development); keep the two in step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import ExecError

ROOT = Path(__file__).resolve().parent
BPF_DIR = ROOT / "bpf"


def bpf_cflags() -> list[str]:
    # <asm/types.h>, which linux/bpf.h includes, lives in the multiarch directory
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    return ["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", f"-I/usr/include/{multiarch}"]


# Same as the Makefile's MAGLEV_CFLAGS: no FP contraction, so tables are identical.
MAGLEV_CFLAGS = [
    "-O2",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-fast-math",
]


class BuildPyWithBpf(build_py):
    """build_py, then clang for every bpf/*.bpf.c into <build_lib>/carom/bpf/obj/."""

    def run(self) -> None:
        super().run()
        sources = sorted(BPF_DIR.glob("*.bpf.c"))
        if not sources:
            raise ExecError(f"no BPF sources in {BPF_DIR}: is this a complete carom source tree?")
        clang = os.environ.get("CLANG", "clang")
        if shutil.which(clang) is None:
            raise ExecError(
                f"{clang} not found: building carom compiles its BPF data plane; "
                "install clang, llvm and libbpf-dev (apt-get install clang llvm libbpf-dev), "
                "or install a carom wheel built elsewhere (make dist)"
            )
        out_dir = Path(self.build_lib) / "carom" / "bpf" / "obj"
        out_dir.mkdir(parents=True, exist_ok=True)
        for src in sources:
            obj = out_dir / (src.name[: -len(".c")] + ".o")
            cmd = [clang, *bpf_cflags(), f"-I{BPF_DIR}", "-c", str(src), "-o", str(obj)]
            self.announce(" ".join(cmd), level=2)
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise ExecError(f"compiling {src.name} failed:\n{result.stderr}")
        self._build_maglev_helper()

    def _build_maglev_helper(self) -> None:
        """The compiled Maglev fill (src/carom/sched/maglev_fill.c): carom falls
        back to numpy without it, 10x slower, so a missing C compiler is an error."""
        src = ROOT / "src" / "carom" / "sched" / "maglev_fill.c"
        out = Path(self.build_lib) / "carom" / "sched" / "_maglev_fill.so"
        cc = os.environ.get("CC", "gcc")
        cmd = [cc, *MAGLEV_CFLAGS, str(src), "-o", str(out), "-lm"]
        self.announce(" ".join(cmd), level=2)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ExecError(f"compiling {src.name} failed:\n{result.stderr}")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        out_dir = Path(self.build_lib) / "carom" / "bpf" / "obj"
        objs = [str(out_dir / (s.name[: -len(".c")] + ".o")) for s in BPF_DIR.glob("*.bpf.c")]
        helper = str(Path(self.build_lib) / "carom" / "sched" / "_maglev_fill.so")
        return [*super().get_outputs(include_bytecode), *objs, helper]


setup(cmdclass={"build_py": BuildPyWithBpf})
