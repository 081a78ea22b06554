"""Building blocks of the config schema: the messages and the field types.

Each validator here says what is wrong with one value and how to fix it; the
models in `schema.py` and `limits.py` combine them. Kept apart from the models
so that both can use them without importing each other."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict
from pydantic_core import PydanticCustomError

IPAddress = IPv4Address | IPv6Address
Loc = tuple[str | int, ...]  # a field path: ("services", 0, "reals", 1, "address")

WEEK_S = 86400 * 7
MAGLEV_MIN, MAGLEV_MAX = 13, 1000003  # both prime
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1: the NUL terminator
IFNAME_MAX = 15  # IFNAMSIZ - 1
SLOTS_PER_REAL = 100  # Maglev: M >= 100 N keeps every share within about 1%


# --- messages ---------------------------------------------------------------


def format_loc(loc: Loc) -> str:
    """("services", 0, "reals", 1, "address") -> "services[0].reals[1].address"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def describe(value: Any) -> str:
    """A found value, in the words of someone reading the YAML file."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class ConfigProblems(ValueError):
    """Problems found by one cross-field check, each at its own location relative
    to the object that was checked. The loader reports one line per problem."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems = list(problems)
        super().__init__(
            "; ".join(f"{format_loc(loc)}: {msg}" if loc else msg for loc, msg in self.problems)
        )


def fail(message: str) -> NoReturn:
    # The message goes through the context so that braces in user input stay as typed.
    raise PydanticCustomError("carom", "{message}", {"message": message})


# --- field types --------------------------------------------------------------


def int_range(lo: int, hi: int, unit: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            fail(f"{value} is out of range; use {lo} to {hi}{unit}")
        return value

    return AfterValidator(check)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def nearest_primes(n: int) -> tuple[int | None, int | None]:
    """The largest prime below n and the smallest above it (None past the range)."""
    below = next((p for p in range(n - 1, MAGLEV_MIN - 1, -1) if is_prime(p)), None)
    above = next((p for p in range(n + 1, MAGLEV_MAX + 1) if is_prime(p)), None)
    return below, above


def next_prime(n: int) -> int:
    while not is_prime(n):
        n += 1
    return n


def check_maglev_size(value: int) -> int:
    if not is_prime(value):
        below, above = nearest_primes(value)
        options = " or ".join(str(p) for p in (below, above) if p is not None)
        fail(f"{value} is not prime; a Maglev table needs a prime size: use {options}")
    return value


def _instance(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]{1,15}", value):
        fail(
            f"{value!r} is not a valid instance name; use 1 to 15 characters "
            "from a-z, 0-9 and '-', such as default"
        )
    return value


def _interface(value: str) -> str:
    if not value:
        fail("an interface name cannot be empty; use a name such as eth0")
    if len(value) > IFNAME_MAX:
        fail(f"{value!r} is longer than {IFNAME_MAX} characters, the Linux limit")
    if value in (".", "..") or any(c in value for c in "/:") or any(c.isspace() for c in value):
        fail(
            f"{value!r} is not a Linux interface name "
            "(no '/', ':' or spaces, not '.' or '..'); use a name such as eth0"
        )
    return value


def _unique_interfaces(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        fail("at least one interface is needed; for example interfaces: [eth0]")
    first: dict[str, int] = {}
    problems: list[tuple[Loc, str]] = []
    for i, name in enumerate(names):
        if name in first:
            problems.append(
                ((i,), f"{name!r} is listed twice (also interfaces[{first[name]}]); list it once")
            )
        first.setdefault(name, i)
    if problems:
        raise ConfigProblems(problems)
    return names


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value:
        path = Path(value)
    else:
        fail(f"expected an absolute path such as /sys/fs/bpf, found {describe(value)}")
    if not path.is_absolute():
        fail(f"{str(path)!r} is not an absolute path; start it with '/'")
    return path


def _socket_path(path: Path) -> Path:
    if len(str(path).encode()) > SUN_PATH_MAX:
        fail(
            f"the path is {len(str(path).encode())} bytes; a unix socket path "
            f"must be at most {SUN_PATH_MAX}: choose a shorter one"
        )
    return path


def _service_name(value: str) -> str:
    if not value or len(value) > 64 or any(not c.isprintable() or c.isspace() for c in value):
        fail(f"{value!r} is not a valid name; use 1 to 64 characters without spaces, such as web")
    return value


def _ip(example: str) -> Callable[[Any], IPAddress]:
    """Parse an address from text; the messages name the field's example."""

    def parse(value: Any) -> IPAddress:
        if isinstance(value, IPv4Address | IPv6Address):
            return value
        if not isinstance(value, str):
            fail(f"expected an IP address such as {example}, found {describe(value)}")
        if "/" in value:
            fail(
                f"{value!r} is a network, not an address; "
                f"write a single address without a prefix length, such as {example}"
            )
        if "%" in value:
            fail(f"{value!r} has a zone index; write the address without '%...'")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            fail(f"{value!r} is not an IP address; use an IPv4 or IPv6 address such as {example}")
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            fail(
                f"{value} is an IPv4-mapped IPv6 address; IPv4 packets carry IPv4 "
                f"addresses: write {address.ipv4_mapped}"
            )
        return address

    return parse


def _special(address: IPAddress) -> str | None:
    """What makes an address unusable as a VIP or a real, if anything."""
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address == IPv4Address("255.255.255.255"):
        return "the broadcast address"
    return None


def _vip(address: IPAddress) -> IPAddress:
    what = _special(address)
    if what:
        fail(
            f"{address} is {what}; a vip must be a unicast address that clients "
            "reach through this node, such as 192.0.2.100"
        )
    return address


def _real(address: IPAddress) -> IPAddress:
    what = _special(address)
    if what == "a loopback address":
        fail(
            f"{address} is a loopback address; for this node itself give its own "
            "address with local: true"
        )
    if what:
        fail(f"{address} is {what}; a real must be a server's unicast address, such as 192.0.2.11")
    return address


def _port(value: Any) -> Any:
    if value == "all":
        return 0  # what the data plane's (vip, 0, protocol) lookup means
    if isinstance(value, str) and value.strip().isdigit():
        fail(f"expected a port number, found the text {value!r}; write it without quotes")
    if not isinstance(value, int) or isinstance(value, bool):
        fail(f"expected a port 1 to 65535 or all, found {describe(value)}")
    if not 1 <= value <= 65535:
        fail(f"{value} is not a port; use 1 to 65535, or all for every port of the vip")
    return value


MAX_PORTS_PER_SERVICE = 1024  # each port is one entry of the services map

_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


def _port_item(value: Any) -> Any:
    """One item of `ports`: a port, or a range "first-last" (inclusive)."""
    if value == "all":
        fail("all is not allowed in ports; use port: all for every port of the vip")
    if isinstance(value, str):
        if value.strip().isdigit():
            fail(f"expected a port number, found the text {value!r}; write it without quotes")
        m = _RANGE.fullmatch(value)
        if m is None:
            fail(
                f'expected a port 1 to 65535 or a range such as "5222-5223", '
                f"found the text {value!r}"
            )
        lo, hi = int(m.group(1)), int(m.group(2))
        for end in (lo, hi):
            if not 1 <= end <= 65535:
                fail(f"{value!r}: {end} is not a port; use 1 to 65535")
        if lo >= hi:
            fail(
                f"{value!r} is not a range: write the lower port first, as "
                f'"{min(lo, hi)}-{max(lo, hi)}" (a single port without quotes)'
            )
        return f"{lo}-{hi}"
    if not isinstance(value, int) or isinstance(value, bool):
        fail(f'expected a port 1 to 65535 or a range such as "5222-5223", found {describe(value)}')
    if not 1 <= value <= 65535:
        fail(f"{value} is not a port; use 1 to 65535")
    return value


def port_item_range(item: int | str) -> range:
    """The ports an item of `ports` stands for."""
    if isinstance(item, int):
        return range(item, item + 1)
    lo, hi = item.split("-")
    return range(int(lo), int(hi) + 1)


def check_method(value: Any) -> Any:
    if value in ("nat", "tunnel"):
        fail(f"method {value!r} is not supported yet; use dsr")
    return value


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Seconds = Annotated[int, Strict(), int_range(1, WEEK_S, " seconds (7 days)")]
Instance = Annotated[str, Strict(), AfterValidator(_instance)]
Interface = Annotated[str, Strict(), AfterValidator(_interface)]
Interfaces = Annotated[tuple[Interface, ...], AfterValidator(_unique_interfaces)]
AbsPath = Annotated[Path, BeforeValidator(_path)]
SocketPath = Annotated[Path, BeforeValidator(_path), AfterValidator(_socket_path)]
ServiceName = Annotated[str, Strict(), AfterValidator(_service_name)]
VipAddress = Annotated[IPAddress, BeforeValidator(_ip("192.0.2.100")), AfterValidator(_vip)]
RealAddress = Annotated[IPAddress, BeforeValidator(_ip("192.0.2.11")), AfterValidator(_real)]
Port = Annotated[int, BeforeValidator(_port)]
PortItem = Annotated[int | str, BeforeValidator(_port_item)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
