"""`ipvsadm-save -n` output (or a shell script of `ipvsadm` commands) -> carom services.

The input is replayed in order, like `ipvsadm-restore` would: `-A` adds a
service, `-a` a real, `-E`/`-e` edit them, `-D`/`-d` delete, `-C` clears. Only
Direct Routing (`-g`, IPVS's default for `-a`) has a carom equivalent; every
other construct becomes a note saying why it was not carried over."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from carom.importers.common import (
    DEFAULT_INTERFACE,
    ConvertState,
    FwmarkTarget,
    ImportedReal,
    ImportedService,
    ImportResult,
    Note,
    clamp_persistence,
    clamp_weight,
    fwmark_note,
    mark_local,
    parse_ip,
    scheduler_note,
)

PERSIST_DEFAULT = 300  # ipvsadm's timeout for -p without a value

# long option -> short option, for scripts written with long options
_LONG = {
    "--add-service": "-A",
    "--edit-service": "-E",
    "--delete-service": "-D",
    "--clear": "-C",
    "--add-server": "-a",
    "--edit-server": "-e",
    "--delete-server": "-d",
    "--tcp-service": "-t",
    "--udp-service": "-u",
    "--fwmark-service": "-f",
    "--scheduler": "-s",
    "--persistent": "-p",
    "--netmask": "-M",
    "--real-server": "-r",
    "--gatewaying": "-g",
    "--ipip": "-i",
    "--masquerading": "-m",
    "--weight": "-w",
    "--u-threshold": "-x",
    "--l-threshold": "-y",
    "--sched-flags": "-b",
    "--ops": "-o",
}
_COMMANDS = {"-A", "-E", "-D", "-C", "-a", "-e", "-d"}
_WITH_VALUE = {"-t", "-u", "-f", "-s", "-M", "-r", "-w", "-x", "-y", "-b", "--pe"}
_IGNORED_COMMANDS = {
    "--start-daemon": "carom directors sync their connection tables themselves: "
    "configure the cluster section (docs/cluster.md)",
    "--stop-daemon": "carom directors sync their connection tables themselves "
    "(the cluster section, docs/cluster.md)",
    "-Z": "zeroing counters is not configuration",
    "--zero": "zeroing counters is not configuration",
}

# a service is (kind, address-or-mark): kind is -t, -u or -f
_Key = tuple[str, str]


@dataclass
class _Service:
    key: _Key
    line: int
    persistence: int = 0
    reals: dict[str, tuple[int, int]] = field(default_factory=dict)  # address -> (weight, line)
    skipped: bool = False  # noted already: its reals are dropped silently


@dataclass
class _State(ConvertState):
    services: dict[_Key, _Service] = field(default_factory=dict)


def convert(
    text: str,
    source: str = "<ipvsadm>",
    *,
    interfaces: Sequence[str] = (),
    fwmarks: Mapping[int, FwmarkTarget] | None = None,
    local: Sequence[str] = (),
) -> ImportResult:
    """Convert ipvsadm rules. Raises ImportFailure on text that is not ipvsadm's."""
    st = _State(source=source, fwmarks=fwmarks or {})
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise st.fail(number, f"cannot split the line into words: {exc}") from None
        if words[0].rsplit("/", 1)[-1] == "ipvsadm":
            words = words[1:]
        if not words:
            continue
        _line(st, number, words)
    services = []
    for svc in st.services.values():
        if svc.skipped:
            continue
        built = _build(st, svc)
        if built is not None:
            services.append(built)
    notes = st.notes
    if not interfaces:
        notes.append(
            Note(
                1,
                "ipvsadm rules do not name the interface that receives the VIP traffic: "
                f"wrote interfaces: [{DEFAULT_INTERFACE}]; pass --interface IFNAME or "
                "edit interfaces",
            )
        )
        interfaces = (DEFAULT_INTERFACE,)
    return ImportResult(
        kind="ipvsadm",
        interfaces=tuple(interfaces),
        services=tuple(mark_local(services, local)),
        notes=tuple(sorted(notes, key=lambda n: n.line)),
        timeouts=st.timeouts,
    )


def _options(st: _State, number: int, words: list[str]) -> tuple[str, dict[str, str]]:
    """The command and its options ({"-t": "192.0.2.1:80", "-g": ""})."""
    command = ""
    opts: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = _LONG.get(words[i], words[i])
        i += 1
        if word in _COMMANDS:
            if command:
                raise st.fail(number, f"two commands on one line ({command} and {word})")
            command = word
        elif word in _WITH_VALUE:
            if i >= len(words):
                raise st.fail(number, f"{word} needs a value")
            opts[word] = words[i]
            i += 1
        elif word == "-p":
            # the timeout is optional: take the next word only if it is a number
            if i < len(words) and words[i].isdigit():
                opts[word] = words[i]
                i += 1
            else:
                opts[word] = str(PERSIST_DEFAULT)
        elif word.startswith("-"):
            opts[word] = ""
        else:
            raise st.fail(number, f"unexpected word {word!r}; is this ipvsadm-save output?")
    return command, opts


def _line(st: _State, number: int, words: list[str]) -> None:
    first = _LONG.get(words[0], words[0])
    if first in _IGNORED_COMMANDS:
        st.note(number, f"{words[0]} not carried over: {_IGNORED_COMMANDS[first]}")
        return
    if first == "--set":
        _timeouts(st, number, words[1:])
        return
    command, opts = _options(st, number, words)
    if not command:
        raise st.fail(
            number,
            "no command (-A, -a, -E, -e, -D, -d, -C); give ipvsadm-save output or "
            "ipvsadm command lines",
        )
    if command == "-C":
        st.services.clear()
        return
    key = _service_key(st, number, opts)
    if command in ("-A", "-E"):
        _add_service(st, number, command, key, opts)
    elif command == "-D":
        if st.services.pop(key, None) is None:
            st.note(number, f"-D {_show(key)}: no such service; ignored")
    else:
        _real(st, number, command, key, opts)


def _timeouts(st: _State, number: int, values: list[str]) -> None:
    if len(values) != 3 or not all(v.isdigit() for v in values):
        raise st.fail(number, "--set needs three numbers: tcp tcpfin udp")
    tcp, tcpfin, udp = (int(v) for v in values)
    # 0 leaves an IPVS timeout unchanged: nothing to carry over
    if tcp:
        st.timeouts["tcp_idle"] = tcp
    if udp:
        st.timeouts["udp_idle"] = udp
    if tcpfin:
        st.note(
            number,
            f"--set tcpfin {tcpfin} not carried over: carom keeps a closing TCP flow's "
            "entry until timeouts.tcp_idle like any other",
        )


def _service_key(st: _State, number: int, opts: dict[str, str]) -> _Key:
    kinds = [k for k in ("-t", "-u", "-f") if k in opts]
    if "--sctp-service" in opts:
        raise st.fail(number, "SCTP services are not supported by carom (tcp and udp only)")
    if len(kinds) != 1:
        raise st.fail(number, "give exactly one of -t, -u, -f for the service")
    kind = kinds[0]
    value = opts[kind]
    if kind == "-f":
        if not value.isdigit():
            raise st.fail(number, f"-f {value}: a firewall mark is a number")
        return (kind, value)
    host, port = _split_address(st, number, value)
    if port is None:
        raise st.fail(number, f"{kind} {value}: the service needs a port (VIP:PORT)")
    shown = f"[{host}]" if ":" in host else host
    return (kind, f"{shown}:{port}")


def _split_address(st: _State, number: int, text: str) -> tuple[str, int | None]:
    """'192.0.2.1:80' or '[2001:db8::1]:80' or a bare address -> (address, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    address = parse_ip(host)
    if address is None:
        raise st.fail(
            number,
            f"{host!r} is not an IP address; save the rules with numeric addresses "
            "and ports: ipvsadm-save -n",
        )
    if not port_text:
        return address, None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise st.fail(
            number,
            f"{port_text!r} is not a port number; save the rules with numeric addresses "
            "and ports: ipvsadm-save -n",
        )
    return address, int(port_text)


def _show(key: _Key) -> str:
    return f"{key[0]} {key[1]}"


def _add_service(st: _State, number: int, command: str, key: _Key, opts: dict[str, str]) -> None:
    svc = st.services.get(key)
    if command == "-A" or svc is None:
        if command == "-E":
            st.note(number, f"-E {_show(key)}: no such service; added it")
        svc = _Service(key=key, line=number)
        st.services[key] = svc
    where = _show(key)
    scheduler = opts.get("-s", "wlc")  # wlc is ipvsadm's default scheduler
    note = scheduler_note(scheduler)
    if note:
        st.note(number, f"{where}: {note}")
    if "-p" in opts:
        svc.persistence = clamp_persistence(int(opts["-p"]), number, st.notes)
    if "-M" in opts and opts["-M"] not in ("255.255.255.255", "128"):
        st.note(
            number,
            f"{where}: persistence netmask {opts['-M']} not carried over: carom "
            "persists per client address (/32, /128)",
        )
    for flag, what in (("-b", "scheduler flags"), ("-o", "one-packet scheduling")):
        if flag in opts:
            st.note(number, f"{where}: {what} ({flag}) not carried over: carom has none")
    if "--pe" in opts:
        st.note(
            number,
            f"{where}: persistence engine {opts['--pe']} not carried over: carom "
            "persists by client address only",
        )
    if key[0] == "-f":
        mapped = st.fwmarks.get(int(key[1]))
        st.note(number, fwmark_note(int(key[1]), mapped))
        svc.skipped = mapped is None


def _real(st: _State, number: int, command: str, key: _Key, opts: dict[str, str]) -> None:
    svc = st.services.get(key)
    if svc is None:
        raise st.fail(
            number, f"{command} for {_show(key)}, which no earlier -A line defines; add it first"
        )
    if "-r" not in opts:
        raise st.fail(number, f"{command} needs -r REAL[:PORT]")
    address, port = _split_address(st, number, opts["-r"])
    if command == "-d":
        svc.reals.pop(address, None)
        return
    if svc.skipped:
        return
    where = f"{_show(key)} real {address}"
    method = next((m for m in ("-m", "-i") if m in opts), None)
    if method:
        what = "masquerading (NAT)" if method == "-m" else "IP-in-IP tunnelling"
        st.note(
            number,
            f"{where}: {what} ({method}) not carried over: carom forwards by Direct "
            "Server Return only; the real was left out (set it up as a DSR real: "
            "carom realserver up)",
        )
        return
    vport = key[1].rsplit(":", 1)[1] if key[0] != "-f" else None
    if port not in (None, 0) and vport is not None and port != int(vport):
        st.note(
            number,
            f"{where}: port {port} differs from the service's port {vport}: Direct "
            "Routing cannot change ports, the real receives the VIP's port",
        )
    for flag, what in (("-x", "upper connection threshold"), ("-y", "lower connection threshold")):
        if flag in opts:
            st.note(number, f"{where}: {what} ({flag}) not carried over: carom has none")
    if "-w" in opts and not opts["-w"].isdigit():
        raise st.fail(number, f"-w {opts['-w']}: a weight is a number from 0")
    weight = int(opts.get("-w", "1"))
    if command == "-e" and "-w" not in opts and address in svc.reals:
        weight = svc.reals[address][0]
    svc.reals[address] = (clamp_weight(weight, number, st.notes), number)


def _build(st: _State, svc: _Service) -> ImportedService | None:
    kind, value = svc.key
    ports: tuple[int | str, ...] = ()
    if kind == "-f":
        target = st.fwmarks[int(value)]
        vip, protocol, ports, port = target.vip, target.protocol, target.ports, 0
    else:
        protocol = "tcp" if kind == "-t" else "udp"
        host, port_text = value.rsplit(":", 1)
        vip, port = host.strip("[]"), int(port_text)
    return ImportedService(
        vip=vip,
        protocol=protocol,
        port=port,
        line=svc.line,
        persistence_timeout=svc.persistence,
        reals=tuple(ImportedReal(address=a, weight=w) for a, (w, _) in svc.reals.items()),
        ports=ports,
    )
