"""The package's import graph: no cycles (not even ones dodged with an import
inside a function), and the layers point one way: nothing outside the CLI
imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import carom

ROOT = Path(carom.__file__).parent


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """carom modules imported anywhere in the file, functions included."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in modules and n.startswith("carom.")}
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the carom modules it imports. Packages are left out as targets:
    `from carom.lab import topology` is an edge to carom.lab.topology."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    return {m: imports_of(p, set(files)) - packages - {m} for m, p in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that is on one."""
    found = []
    for start in sorted(g):
        stack: list[list[str]] = [[start]]
        seen: set[str] = set()
        while stack:
            path = stack.pop()
            nxt_cycle = next((path for d in g[path[-1]] if d == start), None)
            if nxt_cycle:
                found.append([*path, start])
                break
            for d in sorted(g[path[-1]] - seen):
                seen.add(d)
                stack.append([*path, d])
    return found


def test_no_import_cycles_between_modules() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_only_the_cli_imports_the_cli() -> None:
    g = graph()
    offenders = {
        m: sorted(d for d in deps if d.startswith("carom.cli"))
        for m, deps in g.items()
        if not m.startswith("carom.cli") and m not in ("carom.__main__",)
    }
    assert not {m: d for m, d in offenders.items() if d}
