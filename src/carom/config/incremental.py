"""Reloading a big config fast: only the services whose text changed are parsed
and validated again.

A reload usually changes one service of thousands, yet parsing and validating
the whole file (PyYAML keeping every line mark, then pydantic) takes seconds at
4,096 services. `ConfigCache` splits the file's text into its top-level part
and one piece per `services:` item, and keeps the validated `Service` of each
piece keyed by the piece's exact text: an unchanged piece is the same service,
wherever it sits in the file. Only the top-level part and the changed pieces go
through YAML and pydantic; the rules across services are checked on counts
kept per service (config/crossindex.py), the whole config only when those
cannot prove it clean.

It is only a shortcut for valid files of the plain shape (a block list of
services, no anchors, aliases, tags, tabs or document markers). Anything else,
and every file with a problem, goes through `load.parse_config`, so the error
messages (file:line, field, fix) are exactly the full loader's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from carom.config.crossindex import CrossIndex
from carom.config.load import ConfigError, _Loader, _Walk, load_config, parse_config
from carom.config.schema import Config, Service

__all__ = ["ConfigCache", "split_services"]

_SERVICES = re.compile(r"services:[ ]*(?:#.*)?\n")
_LEAD = re.compile(r"(?:[ ]*(?:#.*)?\n)*")
_ITEM = re.compile(r"( *)-(?: |\n|$)")
_MARKERS = ("---", "...", "%")  # at the start of a line: document markers, directives
# What the plain shape excludes: anchors, aliases, tags, merge keys, tabs,
# carriage returns, a byte-order mark; document markers and directives are
# checked per line.
_UNSAFE = ("&", "*", "!", "\t", "\r", "\ufeff", "<<")


@dataclass(frozen=True)
class Split:
    """A config's text cut into the top level (the items removed, so that
    `services:` reads as empty) and the text of each `services:` item."""

    head: str
    items: tuple[str, ...]


def split_services(text: str) -> Split | None:
    """The split, or None when the text is not of the plain shape. Works on the
    whole text with regular expressions: a loop over 50,000 lines would cost
    more than the rest of a reload's parsing."""
    # str.find and `in` scan with memchr: far quicker than a regex over 2 MB
    if any(mark in text for mark in _UNSAFE):
        return None
    if text.startswith(_MARKERS) or any(f"\n{m}" in text for m in _MARKERS):
        return None
    at = 0 if text.startswith("services:") else text.find("\nservices:") + 1
    if at <= 0 and not text.startswith("services:"):
        return None
    if text.find("\nservices:", at + 1) >= 0:
        return None  # twice: the full loader reports the duplicate key
    line = _SERVICES.match(text, at)
    if line is None:
        return None  # `services: [...]` or similar: not the plain shape
    first = line.end()
    if first == len(text) or text[first - 1] != "\n":
        return None
    lead = _LEAD.match(text, first)  # blank and comment lines before the first item
    assert lead is not None  # the pattern matches the empty string
    item = _ITEM.match(text, lead.end())
    if item is None:
        return None  # `services:` followed by something else than a list
    indent = len(item.group(1))
    # The section ends at the first line that is neither blank, a comment, an
    # item at this indent, nor more indented than the items. Both patterns
    # start with a literal newline, which the regex engine scans for quickly.
    pad = " " * indent
    stop = re.compile(rf"\n(?! {{{indent + 1}}}|{pad}-(?: |\n)|[ ]*(?:#|\n))")
    after = stop.search(text, lead.end() - 1)
    end = after.start() + 1 if after is not None else len(text)
    section = text[lead.end() : end]
    cuts = [0] + [m.start() + 1 for m in re.finditer(rf"\n{pad}-(?: |\n)", section)]
    items = [section[a:b] for a, b in zip(cuts, [*cuts[1:], len(section)], strict=True)]
    head = text[: lead.end()] + text[end:]
    return Split(head, tuple(items))


def _compose(text: str) -> object | None:
    """The YAML data of `text`, or None if it has duplicate keys (the full
    loader reports those) or is not YAML."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        walk = _Walk(loader)
        walk.visit(root, ())
        if walk.duplicates:
            return None
        data: object = loader.construct_document(root)
        return data
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()


@dataclass
class ConfigCache:
    """The validated services of the last config, by the text of their item."""

    services: dict[str, Service] = field(default_factory=dict)
    # Above this many changed items the full loader is used (in the daemon: in
    # its parser process, so that a big validation does not hold the GIL).
    max_changed: int = 64
    last_changed: int = -1  # items parsed by the last fast load; -1: full load
    # the rules across services, counted over `services` (config/crossindex.py)
    index: CrossIndex | None = None

    def load(self, path: str | Path) -> Config:
        """load_config(path), reusing what is unchanged. Raises ConfigError."""
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return load_config(path)  # the loader words the error
        config = self.fast(text)
        if config is None:
            config = parse_config(text, source)
            self.remember(text, config)
        return config

    def fast(self, text: str) -> Config | None:
        """The config of `text` if it is valid, of the plain shape and has at
        most `max_changed` new items; None otherwise (nothing is reported: the
        full loader will say what is wrong)."""
        parts = split_services(text)
        if parts is None:
            return None
        changed = [t for t in dict.fromkeys(parts.items) if t not in self.services]
        if len(changed) > self.max_changed:
            return None
        known = dict(self.services)
        for item in changed:
            data = _compose(item)
            if not isinstance(data, list) or len(data) != 1:
                return None
            try:
                known[item] = Service.model_validate(data[0])
            except ValidationError:
                return None
        head = _compose(parts.head)
        if not isinstance(head, dict) or head.get("services", 0) is not None:
            return None
        del head["services"]
        try:
            top = Config.model_validate(head)
        except (ValidationError, ConfigError):
            return None
        services = tuple(known[item] for item in parts.items)
        take = (
            self.index.update(top.limits, top.health, services) if self.index is not None else None
        )
        if take is None and top.whole_config_problems(services):
            return None
        # The same checks Config's validators run: the top level was validated
        # with no services, the services one by one, and the rules across them
        # (Config.whole_config_problems) just now.
        config = top.model_copy(update={"services": services})
        self.services = {item: known[item] for item in parts.items}
        self.last_changed = len(changed)
        if take is not None:
            take()
        else:
            self.index = CrossIndex.of(top.limits, top.health, services)
        return config

    def remember(self, text: str, config: Config) -> None:
        """Key the services of a config the full loader read from `text`."""
        self.last_changed = -1
        parts = split_services(text)
        if parts is None or len(parts.items) != len(config.services):
            self.services = {}
            self.index = None
            return
        self.services = dict(zip(parts.items, config.services, strict=True))
        self.index = CrossIndex.of(config.limits, config.health, config.services)
