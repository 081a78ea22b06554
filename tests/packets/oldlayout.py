"""An older carom data plane for upgrade tests: bpf/carom.bpf.c compiled from a
patched copy of the headers in a temp dir (the tree's headers stay as they are)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def replace_struct(text: str, name: str, body: str) -> str:
    new, n = re.subn(
        rf"struct {name} \{{.*?\n\}};", f"struct {name} {{\n{body}\n}};", text, flags=re.S
    )
    assert n == 1, f"struct {name} not found in the headers"
    return new


def _insert_counter(text: str, name: str, before: str) -> str:
    """Insert a counter before `before` and renumber the ones after it."""
    pos = int(re.search(rf"CAROM_CNT_{before} = (\d+)", text).group(1))  # type: ignore[union-attr]

    def bump(m: re.Match[str]) -> str:
        value = int(m.group(2))
        return f"CAROM_CNT_{m.group(1)} = {value + 1 if value >= pos else value}"

    text = re.sub(r"CAROM_CNT_(\w+) = (\d+)", bump, text)
    return text.replace(
        f"CAROM_CNT_{before} =", f"CAROM_CNT_{name} = {pos},\n\tCAROM_CNT_{before} ="
    )


def build_old(tmp: Path, patch: Callable[[dict[str, str]], None]) -> str:
    """Compile carom.bpf.c with patched copies of the headers; returns the .o path."""
    src = tmp / "bpf-old"
    shutil.copytree(ROOT / "bpf", src)
    files = {p.name: p.read_text() for p in src.glob("*.h")}
    patch(files)
    for name, text in files.items():
        (src / name).write_text(text)
    out = tmp / "carom-old.bpf.o"
    cmd = ["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]
    cmd += ["-I/usr/include/x86_64-linux-gnu", f"-I{src}", "-c", str(src / "carom.bpf.c")]
    built = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(f"building the older data plane failed:\n{built.stderr}")
    return str(out)


def struct_members(text: str, name: str) -> list[str]:
    body = re.search(rf"struct {name} \{{(.*?)\n\}};", text, flags=re.S)
    assert body is not None, f"struct {name} not found in the headers"
    lines = [re.sub(r"/\*.*?\*/", "", line).rstrip() for line in body.group(1).splitlines()]
    return [line for line in lines if line.endswith(";")]


def set_map_flags(maps_h: str, name: str, flags: str | None) -> str:
    """The definition of map `name` with its map_flags line replaced (None: none)."""
    m = re.search(rf"struct \{{\n(?:(?!\}} \w+ SEC).)*?\}} {name} SEC", maps_h, flags=re.S)
    assert m is not None, f"map {name} not found in maps.h"
    body = re.sub(r"\t__uint\(map_flags, [^)]*\);\n", "", m.group(0))
    if flags is not None:
        body = body.replace("struct {\n", f"struct {{\n\t__uint(map_flags, {flags});\n", 1)
    return maps_h[: m.start()] + body + maps_h[m.end() :]


def older_layout(files: dict[str, str]) -> None:
    """conn_val with its members in reverse order (same size: libbpf alone would
    reuse the pin, and the new program would read real ids from other bytes),
    persist_val with a field since dropped in front and without `reserved`, and
    one more counter in the middle of the list, one more map, and the Maglev
    array without BPF_F_MMAPABLE (as before it was memory-mapped). Built from
    whatever the current headers hold, so it stays an *older version of today's*
    layout."""
    h = files["structs.h"]
    h = replace_struct(h, "conn_val", "\n".join(reversed(struct_members(h, "conn_val"))))
    persist = [m for m in struct_members(h, "persist_val") if "reserved" not in m]
    h = replace_struct(h, "persist_val", "\n".join(["\t__u64 old_only;", *persist]))
    files["structs.h"] = h
    files["consts.h"] = _insert_counter(files["consts.h"], "MIG_OLD_ONLY", "CONN_HIT")
    maps = set_map_flags(files["maps.h"], "maglev", None)
    at = maps.rindex("#endif")
    files["maps.h"] = maps[:at] + OLD_ONLY_MAP + maps[at:]


# A map the newer version no longer has.
OLD_ONLY_MAP = """struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} mig_old_map SEC(".maps");

"""
