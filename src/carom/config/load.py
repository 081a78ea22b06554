"""carom.yaml -> a validated `Config`, or a `ConfigError` that lists every problem.

Each problem is one line: `FILE:LINE: FIELD.PATH: what is wrong; how to fix it`.
Loading has no side effects: it reads one file and nothing else.

The YAML is composed first, so that every value keeps the line it came from;
pydantic's error locations are mapped back to those lines (a field that is missing
reports the line of the mapping that should hold it). The file is read with the
YAML 1.2 core schema: only true/false are booleans and there are no sexagesimal
numbers, so `instance: no` is text and an IPv6 address such as 1:2:3:4:5:6:7:8
is not read as an integer."""

from __future__ import annotations

import contextlib
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from carom.config.ops import Api, Metrics
from carom.config.schema import (
    Config,
    ConfigProblems,
    Limits,
    Loc,
    Node,
    Real,
    Service,
    Timeouts,
    cross_service_problems,
    describe,
    format_loc,
)

__all__ = ["ConfigError", "load_config", "located", "parse_config"]


class ConfigError(Exception):
    """The configuration is invalid; nothing was changed. One line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises ConfigError."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{source}: file not found; check the path (-c FILE)"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{source}: is a directory; give the path of the YAML file"]) from None
    except PermissionError:
        raise ConfigError(
            [f"{source}: permission denied; run as a user that can read the file"]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{source}:{line}: not UTF-8 text; save the file as UTF-8"]) from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate a config given as YAML text; `source` names it in messages."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(
                [
                    f"{source}:1: the file is empty; a config needs at least "
                    "interfaces (for example interfaces: [eth0]), see docs/config.md"
                ]
            )
        if not isinstance(root, yaml.MappingNode):
            found = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
            raise ConfigError(
                [
                    f"{source}:{_line(root)}: the top level must be a mapping of fields "
                    f"(interfaces:, services:, ...), found {found}"
                ]
            )
        walk = _Walk(loader)
        walk.visit(root, ())
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_error(source, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()

    problems: list[tuple[int, str]] = list(walk.duplicates)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        located = _translate(exc, data)
        problems += [(walk.line_of(loc), _render(loc, msg)) for loc, msg in located]
    else:
        if not problems:
            return config
    problems.sort(key=lambda p: p[0])  # stable: same-line problems keep pydantic's order
    raise ConfigError([f"{source}:{line}: {msg}" for line, msg in problems])


def located(path: str | Path, problems: list[tuple[Loc, str]]) -> ConfigError:
    """Problems found in a valid config against this machine (routes, ...), as
    the loader would word them: `FILE:LINE: FIELD.PATH: message`. Reads the file
    again for the lines: only the error path pays for it."""
    source = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    loader = _Loader(text)
    walk = _Walk(loader)
    try:
        root = loader.get_single_node()
        if root is not None:
            walk.visit(root, ())
    except yaml.YAMLError:
        pass  # the file changed under us: line 1 it is
    finally:
        loader.dispose()
    out = sorted(
        ((walk.line_of(loc), _render(loc, msg)) for loc, msg in problems), key=lambda p: p[0]
    )
    return ConfigError([f"{source}:{line}: {msg}" for line, msg in out])


# --- YAML -----------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's implicit types."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # replaces SafeLoader's YAML 1.1 table

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if value.startswith("-") else 1
        digits = value.lstrip("+-")
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        return sign * int(digits, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+)"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("merge", r"^(?:<<)$", "<"),
):
    _Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _syntax_error(source: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{source}:{mark.line + 1}" if mark else source
    what = exc.problem or exc.context or "syntax error"
    if mark:
        what += f" (column {mark.column + 1})"
    if exc.context and exc.problem and exc.context_mark and exc.context_mark is not mark:
        what += f", {exc.context} that starts on line {exc.context_mark.line + 1}"
    if isinstance(exc, yaml.composer.ComposerError) and "document" in str(exc.context):
        return f"{where}: a config is one YAML document: remove the '---' and what follows it"
    if isinstance(exc, yaml.constructor.ConstructorError) and "unhashable" in what:
        return f"{where}: unsupported YAML: {what}; a key must be plain text, not a list or mapping"
    if isinstance(exc, yaml.constructor.ConstructorError):
        return f"{where}: unsupported YAML: {what}; use plain values without tags (!!...)"
    hint = "check the indentation, the ':' after each key and the quoting"
    if "\\t" in what or "\t" in what:
        hint = "indent with spaces: YAML does not allow tabs"
    return f"{where}: not valid YAML: {what}; {hint}"


class _Walk:
    """Lines of every field path, and duplicate keys, read from the composed nodes."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.lines: dict[Loc, int] = {}
        self.duplicates: list[tuple[int, str]] = []
        self._stack: set[int] = set()  # nodes being visited: guards recursive aliases

    def visit(self, node: yaml.Node, path: Loc, line: int | None = None) -> None:
        self.lines.setdefault(path, line if line is not None else _line(node))
        if id(node) in self._stack:
            return
        self._stack.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.visit(item, (*path, i))
        elif isinstance(node, yaml.MappingNode):
            self._mapping(node, path)
        self._stack.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: Loc) -> None:
        own: dict[Any, int] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged += (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # the constructor reports unhashable keys
            key = self.loader.construct_object(key_node)
            if key in own:
                self.duplicates.append(
                    (
                        _line(key_node),
                        f"{format_loc((*path, key))}: duplicate key {key!r} (first on line "
                        f"{own[key]}); keep only one",
                    )
                )
                continue
            own[key] = _line(key_node)
            # a scalar reports its own line; a mapping or list the line of its key
            scalar = isinstance(value_node, yaml.ScalarNode)
            self.visit(value_node, (*path, key), None if scalar else _line(key_node))
        for source in merged:  # `<<: *anchor`: keys written here win, like the constructor
            if isinstance(source, yaml.MappingNode):
                for key_node, value_node in source.value:
                    if isinstance(key_node, yaml.ScalarNode):
                        key = self.loader.construct_object(key_node)
                        if key not in own:
                            own[key] = _line(key_node)
                            self.visit(value_node, (*path, key))

    def line_of(self, loc: Loc) -> int:
        """The line of `loc`, or of its nearest ancestor that the file has."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return 1


# --- pydantic errors -> messages ---------------------------------------------


_HOMES: tuple[tuple[type[BaseModel], str], ...] = (
    (Config, "the top level"),
    (Node, "node"),
    (Limits, "limits"),
    (Timeouts, "timeouts"),
    (Service, "each service (services: - ...)"),
    (Real, "each real (reals: - ...)"),
    (Metrics, "metrics"),
    (Api, "api"),
)

_EXPECTED = {
    "int": "a whole number",
    "bool": "true or false",
    "string": "text",
    "tuple": "a list",
    "list": "a list",
    "model": "a mapping of fields (key: value lines)",
    "dict": "a mapping of fields (key: value lines)",
    "model_attributes": "a mapping of fields (key: value lines)",
    "float": "a number",
}


def _render(loc: Loc, msg: str) -> str:
    return f"{format_loc(loc)}: {msg}" if loc else msg


def _translate(exc: ValidationError, data: Any) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    config_checked = False
    errors = [(tuple(p for p in e["loc"] if isinstance(p, str | int)), e) for e in exc.errors()]
    # `interface: [eth0]` says "did you mean 'interfaces'?"; "interfaces is missing" is noise
    misspelt = {
        (*loc[:-1], close)
        for loc, err in errors
        if err["type"] == "extra_forbidden" and (close := _suggestion(loc)) is not None
    }
    for loc, err in errors:
        error = (err.get("ctx") or {}).get("error")
        if err["type"] == "missing" and loc in misspelt:
            continue
        if isinstance(error, ConfigProblems):
            config_checked |= loc == ()
            out += [((*loc, *sub), msg) for sub, msg in error.problems]
        else:
            out.append((loc, _message(err, loc)))
    if not config_checked:
        out += _partial_cross_checks(data)
    return out


def _partial_cross_checks(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """The cross-service rules, run on the services that are valid on their own, so
    that one bad field does not hide a duplicate service elsewhere in the file."""
    raw = data.get("services")
    if not isinstance(raw, list):
        return []
    valid: list[tuple[int, Service]] = []
    for i, item in enumerate(raw):
        with contextlib.suppress(ValidationError):
            valid.append((i, Service.model_validate(item)))
    try:
        limits: Limits | None = Limits.model_validate(data.get("limits", {}))
    except ValidationError:
        limits = None
    return cross_service_problems(valid, limits)


def _message(err: Any, loc: Loc) -> str:
    kind: str = err["type"]
    value = err.get("input")
    field = loc[-1] if loc else None
    if kind == "missing":
        example = _example(loc)
        hint = f"; add it, for example {field}: {example}" if example else ""
        return f"required field is missing{hint}"
    if kind == "extra_forbidden":
        return _unknown_field(loc)
    if kind == "invalid_key":
        return f"{field!r} is not a field name; field names are text"
    if kind == "literal_error":
        return _not_a_choice(loc, value)
    base = kind.removesuffix("_type").removesuffix("_parsing")
    if kind.endswith(("_type", "_parsing")) and base in _EXPECTED:
        msg = f"expected {_EXPECTED[base]}, found {describe(value)}"
        if base == "int" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return f"{msg}; write it without quotes"
        if base == "string" and isinstance(value, int | float | bool):
            return f'{msg}; put it in quotes, for example {field}: "{value}"'
        if base == "bool":
            return f"{msg}; write true or false (yes, no, on and off are text in YAML 1.2)"
        if base in ("tuple", "list") and value is None:
            return f"{msg}; write [] for an empty list"
        if base in ("model", "dict", "model_attributes") and value is None:
            return f"{msg}; remove the key to use the defaults"
        example = _example(loc)
        return f"{msg}; for example {field}: {example}" if example else msg
    message: str = err["msg"]
    return message.removeprefix("Value error, ")


def _annotation_at(loc: Loc) -> Any:
    """The type that describes the value at `loc` (None when loc leaves the schema)."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, str):
            if not (isinstance(current, type) and issubclass(current, BaseModel)):
                return None
            info = current.model_fields.get(part)
            if info is None:
                return None
            current = info.annotation
        else:
            if typing.get_origin(current) is not tuple:
                return None
            current = typing.get_args(current)[0]
    return current


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] -> X and X | None -> X."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _example(loc: Loc) -> str | None:
    if not loc or not isinstance(loc[-1], str):
        return None
    parent = _unwrap(_annotation_at(loc[:-1]))
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return None
    info = parent.model_fields.get(loc[-1])
    if info is None or not info.examples:
        return None
    return _yaml_text(info.examples[0])


def _yaml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else "{...}"
    return str(value)


def _unknown_field(loc: Loc) -> str:
    key = str(loc[-1])
    model = _unwrap(_annotation_at(loc[:-1]))
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return f"unknown field {key!r}"
    names = list(model.model_fields)
    msg = f"unknown field {key!r}"
    close = _suggestion(loc)
    if close:
        return f"{msg}; did you mean {close!r}?"
    for other, where in _HOMES:
        if other is not model and key in other.model_fields:
            return f"{msg} here; {key} belongs in {where}"
    return f"{msg}; the fields here are: {', '.join(names)}"


def _suggestion(loc: Loc) -> str | None:
    """The field that the unknown key at `loc` is probably a misspelling of."""
    model = _unwrap(_annotation_at(loc[:-1]))
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    close = difflib.get_close_matches(str(loc[-1]).lower(), list(model.model_fields), n=1)
    return close[0] if close else None


def _not_a_choice(loc: Loc, value: Any) -> str:
    tp = _unwrap(_annotation_at(loc))
    choices = [str(c) for c in typing.get_args(tp)] if typing.get_origin(tp) is Literal else []
    field = loc[-1] if loc else "value"
    listed = ", ".join(choices)
    if not isinstance(value, str):
        return f"expected one of {listed}, found {describe(value)}"
    msg = f"{value!r} is not a valid {field}; use one of: {listed}"
    close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
    return f"{msg} (did you mean {close[0]!r}?)" if close else msg
