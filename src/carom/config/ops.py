"""The `metrics` and `api` sections: the daemon's HTTP listeners for Prometheus
and for deploy tooling. Both are off unless configured, and their examples bind
to localhost: an operator opens them to the network on purpose, never by default."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import BeforeValidator, Field

from carom.config.fields import StrictModel, fail

DEFAULT_METRICS = "127.0.0.1:9641"
DEFAULT_API = "127.0.0.1:9642"
MIN_TOKEN_BYTES = 16


class Endpoint(NamedTuple):
    """A listen address: an IP literal (no names: nothing to resolve at start) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(value: Any) -> Endpoint:
    """'127.0.0.1:9641' or '[::1]:9641' -> Endpoint; the error says how to write it."""
    if not isinstance(value, str):
        fail('expected "ADDRESS:PORT" as text, for example "127.0.0.1:9641"')
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep or not host:
        fail(f'{value!r}: expected ADDRESS:PORT, for example "127.0.0.1:9641" or "[::1]:9641"')
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        fail(f"{value!r}: {host!r} is not an IP address; write an address, not a host name")
    if addr.version == 6 and not value.startswith("["):
        fail(f"{value!r}: write an IPv6 address in brackets, for example [{addr}]:9641")
    if not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"{value!r}: the port must be 1..65535")
    return Endpoint(str(addr), int(port))


def read_token(path: Path) -> str:
    """The bearer token in `path`. Raises ValueError with the fix when the file is
    missing, not a regular file, readable by group or others, or too short: a token
    anybody on the host can read protects nothing."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(
            f"{path} does not exist; create it: `head -c 32 /dev/urandom | base64 > {path} "
            f"&& chmod 600 {path}`"
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise ValueError(
            f"{path} has mode {st.st_mode & 0o777:o}, readable by others; chmod 600 {path}"
        )
    if st.st_uid != os.geteuid():
        raise ValueError(f"{path} belongs to uid {st.st_uid}, not to the daemon's user")
    try:
        token = data.decode().strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text; write the token as text (base64)") from None
    if len(token) < MIN_TOKEN_BYTES or any(c.isspace() for c in token):
        raise ValueError(
            f"{path}: the token must be one word of at least {MIN_TOKEN_BYTES} characters "
            f"(`head -c 32 /dev/urandom | base64 > {path}`)"
        )
    return token


def _token_file(value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        fail("expected an absolute path, for example /etc/carom/api.token")
    path = Path(value)
    try:
        read_token(path)
    except ValueError as exc:
        fail(str(exc))
    return path


def _listen(value: Any) -> str:
    return str(parse_endpoint(value))


# kept as normalised text, so a dumped config validates again
Listen = Annotated[str, BeforeValidator(_listen)]
TokenFile = Annotated[Path, BeforeValidator(_token_file)]


class Metrics(StrictModel):
    """The Prometheus endpoint: GET /metrics."""

    listen: Listen = Field(
        default=DEFAULT_METRICS,
        description="ADDRESS:PORT to serve /metrics on (IPv6 as [ADDRESS]:PORT)",
        examples=[DEFAULT_METRICS],
    )


class Api(StrictModel):
    """The HTTP API (JSON, OpenAPI at /openapi.json). Reading needs no token;
    actions (reload, drain, weight) need the bearer token of token_file."""

    listen: Listen = Field(
        default=DEFAULT_API,
        description="ADDRESS:PORT to serve the API on (IPv6 as [ADDRESS]:PORT)",
        examples=[DEFAULT_API],
    )
    token_file: TokenFile | None = Field(
        default=None,
        description="file holding the bearer token for actions (mode 0600, owned by the "
        "daemon's user); none: actions are refused",
        examples=["/etc/carom/api.token"],
    )
