"""keepalived.conf syntax: text -> a tree of statements, each with its line.

keepalived's format is line based: a statement is a keyword and its arguments
on one line, optionally followed by a `{ ... }` block of statements. Comments
start with `#` or `!` anywhere on a line. Double quotes keep spaces in one
argument (`misc_path "/usr/bin/check -p 80"`)."""

from __future__ import annotations

from dataclasses import dataclass

from carom.importers.common import ImportFailure


@dataclass(frozen=True)
class Stmt:
    """One statement: `keyword arg... [{ block }]`."""

    keyword: str
    args: tuple[str, ...]
    line: int  # 1-based line of the keyword
    block: tuple[Stmt, ...] | None = None  # None when there is no `{ }`

    def children(self, keyword: str) -> list[Stmt]:
        return [s for s in self.block or () if s.keyword == keyword]

    def first(self, *keywords: str) -> Stmt | None:
        return next((s for s in self.block or () if s.keyword in keywords), None)


@dataclass(frozen=True)
class _Token:
    text: str
    line: int
    brace: bool  # an unquoted { or }


def _tokens(text: str, source: str) -> list[_Token]:
    out: list[_Token] = []
    for number, line in enumerate(text.splitlines(), start=1):
        i, n = 0, len(line)
        while i < n:
            ch = line[i]
            if ch in "#!":
                break
            if ch.isspace():
                i += 1
            elif ch in "{}":
                out.append(_Token(ch, number, True))
                i += 1
            elif ch == '"':
                end = line.find('"', i + 1)
                if end < 0:
                    raise ImportFailure(f'{source}:{number}: unterminated quote; close it with "')
                out.append(_Token(line[i + 1 : end], number, False))
                i = end + 1
            else:
                j = i
                while j < n and not line[j].isspace() and line[j] not in '{}"#!':
                    j += 1
                out.append(_Token(line[i:j], number, False))
                i = j
    return out


def parse(text: str, source: str = "<keepalived.conf>") -> tuple[Stmt, ...]:
    """The top-level statements. Raises ImportFailure on unbalanced braces."""
    tokens = _tokens(text, source)
    pos = 0

    def block(depth: int, opened_at: int) -> tuple[Stmt, ...]:
        nonlocal pos
        stmts: list[Stmt] = []
        while pos < len(tokens):
            tok = tokens[pos]
            if tok.brace and tok.text == "}":
                if depth == 0:
                    raise ImportFailure(
                        f"{source}:{tok.line}: '}}' closes no block; remove it or add the "
                        "missing '{'"
                    )
                pos += 1
                return tuple(stmts)
            if tok.brace:  # a '{' with no keyword before it
                raise ImportFailure(f"{source}:{tok.line}: '{{' without a keyword before it")
            pos += 1
            args: list[str] = []
            while pos < len(tokens) and not tokens[pos].brace and tokens[pos].line == tok.line:
                args.append(tokens[pos].text)
                pos += 1
            sub: tuple[Stmt, ...] | None = None
            # the '{' may end the keyword's line or start the next one
            if pos < len(tokens) and tokens[pos].brace and tokens[pos].text == "{":
                pos += 1
                sub = block(depth + 1, tok.line)
            stmts.append(Stmt(tok.text, tuple(args), tok.line, sub))
        if depth:
            raise ImportFailure(
                f"{source}:{opened_at}: this block is never closed; add the missing '}}'"
            )
        return tuple(stmts)

    return block(0, 0)
