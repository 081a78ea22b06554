"""keepalived.conf -> carom services.

The `virtual_server` blocks (and `virtual_server group` with its
`virtual_server_group`) become carom services; `global_defs { lvs_timeouts }`
becomes carom's idle timeouts; the `interface` of the `vrrp_instance` blocks
becomes carom's interfaces. Everything else that carom cannot do (health checks,
NAT and tunnel forwarding, VRRP, other schedulers, sorry servers...) becomes a
note naming the construct, its line and the reason."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
from carom.importers.kachecks import KINDS, NOT_CONVERTED, Timing, check_of, timing_of
from carom.importers.kaconf import Stmt, parse

INHIBIT = (
    "carom takes a down real out of new flows either way; its established flows follow "
    "the service's down_flows (reschedule by default, keep for inhibit_on_failure's behaviour)"
)

PERSIST_DEFAULT = 360  # keepalived's persistence_timeout when given without a value

CHECKERS = set(KINDS) | set(NOT_CONVERTED)

# keywords of a virtual_server's and of a real_server's checking that carom
# does not carry over, in either place
_CHECK_REASONS: Mapping[str, str] = {
    "alpha": "carom has no alpha: a real's first state follows carom's own rule (docs/health.md)",
    "inhibit_on_failure": INHIBIT,
    "retry": "carom takes retry from the checker block only",
    "delay_before_retry": "carom takes delay_before_retry from the checker block only",
    "warmup": "carom has no start-up delay of this kind (its checks start jittered)",
}

# virtual_server keywords carom has no equivalent for, and why
_SERVICE_REASONS: Mapping[str, str] = {
    **_CHECK_REASONS,
    "sorry_server": "carom has no fallback server for a service whose reals are all down",
    "sorry_server_inhibit": "carom has no fallback server",
    "sorry_server_lvs_method": "carom has no fallback server",
    "quorum": "carom does not withdraw a VIP when too few reals are healthy",
    "quorum_up": "carom does not withdraw a VIP when too few reals are healthy",
    "quorum_down": "carom does not withdraw a VIP when too few reals are healthy",
    "hysteresis": "carom does not withdraw a VIP when too few reals are healthy",
    "omega": "carom runs no scripts when reals change",
    "ha_suspend": "carom keeps a service configured whatever the VRRP state",
    "ops": "carom has no one-packet scheduling: every UDP flow keeps its real",
    "lvs_flags": "carom has no IPVS scheduler flags",
    "nat_mask": "it applies to NAT forwarding only",
}

# real_server keywords carom has no equivalent for, and why
_REAL_REASONS: Mapping[str, str] = {
    **_CHECK_REASONS,
    "notify_up": "carom runs no scripts when a real changes state",
    "notify_down": "carom runs no scripts when a real changes state",
    "uthreshold": "carom has no per-real connection thresholds",
    "lthreshold": "carom has no per-real connection thresholds",
    "smtp_alert": "carom sends no e-mail",
}

# top-level blocks and why they are not carried over
_TOP_REASONS: Mapping[str, str] = {
    "vrrp_instance": "carom's cluster section elects the active director itself "
    "(docs/cluster.md); to keep keepalived's VRRP deciding, set cluster.election: keepalived "
    "and call `carom cluster vrrp` from its notify scripts",
    "vrrp_sync_group": "carom has no VRRP",
    "vrrp_script": "carom has no VRRP",
    "vrrp_track_process": "carom has no VRRP",
    "static_ipaddress": "carom does not configure addresses",
    "static_routes": "carom does not configure routes",
    "static_rules": "carom does not configure routing rules",
    "linkbeat_use_polling": "carom does not watch links this way",
    "net_namespace": "run carom inside the namespace instead",
    "include": "included files are not read; import each file too, or concatenate them",
}


@dataclass
class _State(ConvertState):
    services: list[ImportedService] = field(default_factory=list)
    groups: dict[str, Stmt] = field(default_factory=dict)
    interfaces: list[str] = field(default_factory=list)


def convert(
    text: str,
    source: str = "<keepalived.conf>",
    *,
    interfaces: Sequence[str] = (),
    fwmarks: Mapping[int, FwmarkTarget] | None = None,
    local: Sequence[str] = (),
) -> ImportResult:
    """Convert a keepalived.conf. Raises ImportFailure on text keepalived would refuse."""
    st = _State(source=source, fwmarks=fwmarks or {})
    top = parse(text, source)
    for stmt in top:
        if stmt.keyword == "virtual_server_group" and stmt.args:
            st.groups[stmt.args[0]] = stmt
    for stmt in top:
        _top(st, stmt)
    notes = st.notes
    chosen = tuple(interfaces) or tuple(dict.fromkeys(st.interfaces))
    if not chosen:
        notes.append(
            Note(
                1,
                "no vrrp_instance names an interface: wrote interfaces: "
                f"[{DEFAULT_INTERFACE}]; pass --interface IFNAME or edit interfaces",
            )
        )
        chosen = (DEFAULT_INTERFACE,)
    return ImportResult(
        kind="keepalived",
        interfaces=chosen,
        services=tuple(mark_local(st.services, local)),
        notes=tuple(sorted(notes, key=lambda n: n.line)),
        timeouts=st.timeouts,
    )


def _top(st: _State, stmt: Stmt) -> None:
    kw = stmt.keyword
    if kw == "virtual_server":
        _virtual_server(st, stmt)
    elif kw == "virtual_server_group":
        pass  # read through the virtual_server that uses it
    elif kw == "global_defs":
        _global_defs(st, stmt)
    elif kw == "vrrp_instance":
        iface = stmt.first("interface")
        if iface is not None and iface.args:
            st.interfaces.append(iface.args[0])
        name = stmt.args[0] if stmt.args else ""
        st.note(stmt.line, f"vrrp_instance {name} not carried over: {_TOP_REASONS[kw]}")
    elif kw in _TOP_REASONS:
        st.note(stmt.line, f"{kw} not carried over: {_TOP_REASONS[kw]}")
    else:
        st.note(stmt.line, f"{kw} not carried over: carom has no equivalent")


def _global_defs(st: _State, stmt: Stmt) -> None:
    for sub in stmt.block or ():
        if sub.keyword == "lvs_timeouts":
            _lvs_timeouts(st, sub)
        elif sub.keyword.startswith("lvs_sync_daemon"):
            st.note(
                sub.line,
                f"{sub.keyword} not carried over: carom directors sync their connection "
                "tables themselves: configure the cluster section (docs/cluster.md)",
            )
        # the rest (router_id, notification_email, script security...) is about
        # keepalived itself, not about the services carom takes over


def _lvs_timeouts(st: _State, stmt: Stmt) -> None:
    args = list(stmt.args)
    for i in range(0, len(args) - 1, 2):
        name, value = args[i], args[i + 1]
        if not value.isdigit():
            raise st.fail(stmt.line, f"lvs_timeouts {name} {value!r}: a timeout is seconds")
        if name == "tcp":
            st.timeouts["tcp_idle"] = int(value)
        elif name == "udp":
            st.timeouts["udp_idle"] = int(value)
        else:
            st.note(
                stmt.line,
                f"lvs_timeouts {name} not carried over: carom has idle timeouts for tcp "
                "and udp only",
            )


@dataclass(frozen=True)
class _Target:
    """One (vip, port) or firewall mark that a virtual_server block applies to."""

    vip: str | None  # None for a firewall mark
    port: int
    mark: int | None = None


def _targets(st: _State, stmt: Stmt) -> list[_Target]:
    args = stmt.args
    if len(args) == 2 and args[0] == "fwmark":
        if not args[1].isdigit():
            raise st.fail(stmt.line, f"fwmark {args[1]!r}: a firewall mark is a number")
        return [_Target(None, 0, int(args[1]))]
    if len(args) == 2 and args[0] == "group":
        group = st.groups.get(args[1])
        if group is None:
            raise st.fail(
                stmt.line, f"virtual_server group {args[1]}: no virtual_server_group of that name"
            )
        out: list[_Target] = []
        for entry in group.block or ():
            out += _group_entry(st, entry)
        return out
    if len(args) in (1, 2):
        return [_address_target(st, stmt.line, args[0], args[1] if len(args) == 2 else "0")]
    raise st.fail(stmt.line, "virtual_server needs IP PORT, fwmark NUM or group NAME")


def _address_target(st: _State, line: int, host: str, port: str) -> _Target:
    vip = parse_ip(host)
    if vip is None:
        raise st.fail(line, f"{host!r} is not an IP address")
    if not port.isdigit() or int(port) > 65535:
        raise st.fail(line, f"{port!r} is not a port number")
    return _Target(vip, int(port))


def _group_entry(st: _State, entry: Stmt) -> list[_Target]:
    words = (entry.keyword, *entry.args)
    if words[0] == "fwmark" and len(words) == 2 and words[1].isdigit():
        return [_Target(None, 0, int(words[1]))]
    host = words[0]
    port = words[1] if len(words) > 1 else "0"
    if "-" in host:  # 192.0.2.10-12 (2001:db8::a-1f): the last part runs to 12 (0x1f)
        first, _, last = host.rpartition("-")
        start = parse_ip(first)
        base = ipaddress.ip_address(start) if start else None
        sep, radix = (".", 10) if base is None or base.version == 4 else (":", 16)
        try:
            low = int(first.rsplit(sep, 1)[1] or "0", radix)
            high = int(last, radix)
        except (ValueError, IndexError):
            base = None
        if base is None:
            raise st.fail(entry.line, f"{host!r} is not an address range like 192.0.2.10-12")
        if high < low or high > (255 if radix == 10 else 0xFFFF):
            raise st.fail(
                entry.line,
                f"{host!r}: the range must end after it starts and within the last part "
                "of the address",
            )
        return [
            _address_target(st, entry.line, str(base + (n - low)), port)
            for n in range(low, high + 1)
        ]
    return [_address_target(st, entry.line, host, port)]


def _virtual_server(st: _State, stmt: Stmt) -> None:
    targets = _targets(st, stmt)
    what = f"virtual_server {' '.join(stmt.args)}"
    method = stmt.first("lb_kind", "lvs_method")
    if method is None or not method.args:
        st.note(
            stmt.line,
            f"{what} not carried over: it has no lb_kind, and keepalived's default is "
            "NAT; carom forwards by Direct Server Return only: add lb_kind DR if its "
            "reals are set up for DR (VIP on loopback), and import again",
        )
        return
    if method.args[0].upper() != "DR":
        st.note(
            method.line,
            f"{what} not carried over: lb_kind {method.args[0]}: carom forwards by "
            "Direct Server Return (DR) only",
        )
        return
    proto_stmt = stmt.first("protocol")
    protocol = proto_stmt.args[0].lower() if proto_stmt and proto_stmt.args else "tcp"
    if protocol not in ("tcp", "udp"):
        st.note(
            stmt.line,
            f"{what} not carried over: protocol {protocol.upper()}: carom balances TCP "
            "and UDP only",
        )
        return
    persistence = _persistence(st, stmt, what)
    reals = _reals(st, stmt, what, [t.port for t in targets if t.mark is None])
    shared = reals[0].check if reals else None
    if shared and all(r.check == shared for r in reals):  # one check for the service
        reals = [replace(r, check=None) for r in reals]
    else:
        shared = None
    _service_notes(st, stmt, what)
    for target in targets:
        vip, port = target.vip, target.port
        proto = protocol
        ports: tuple[int | str, ...] = ()
        if target.mark is not None:
            mapped = st.fwmarks.get(target.mark)
            st.note(stmt.line, f"{what}: {fwmark_note(target.mark, mapped)}")
            if mapped is None:
                continue
            vip, proto, ports, port = mapped.vip, mapped.protocol, mapped.ports, 0
        assert vip is not None
        st.services.append(
            ImportedService(
                vip=vip,
                protocol=proto,
                port=port,
                line=stmt.line,
                persistence_timeout=persistence,
                reals=tuple(reals),
                ports=ports,
                check=shared,
            )
        )


def _persistence(st: _State, stmt: Stmt, what: str) -> int:
    seconds = 0
    pt = stmt.first("persistence_timeout")
    if pt is not None:
        if pt.args and not pt.args[0].isdigit():
            raise st.fail(pt.line, f"persistence_timeout {pt.args[0]!r}: give seconds")
        seconds = clamp_persistence(
            int(pt.args[0]) if pt.args else PERSIST_DEFAULT, pt.line, st.notes
        )
    pg = stmt.first("persistence_granularity")
    if pg is not None and pg.args and pg.args[0] not in ("255.255.255.255", "128", "/128"):
        st.note(
            pg.line,
            f"{what}: persistence_granularity {pg.args[0]} not carried over: carom "
            "persists per client address (/32, /128)",
        )
    return seconds


def _service_notes(st: _State, stmt: Stmt, what: str) -> None:
    for sub in stmt.block or ():
        kw = sub.keyword
        if kw in ("lb_algo", "lvs_sched"):
            note = scheduler_note(sub.args[0] if sub.args else "wlc")
            if note:
                st.note(sub.line, f"{what}: {note}")
        elif kw in _SERVICE_REASONS:
            value = f" {' '.join(sub.args)}" if sub.args else ""
            st.note(sub.line, f"{what}: {kw}{value} not carried over: {_SERVICE_REASONS[kw]}")
        elif kw in CHECKERS:
            st.note(
                sub.line,
                f"{what}: {kw} outside a real_server not carried over: keepalived checks "
                "reals; put it in each real_server",
            )
        elif kw not in (
            "delay_loop",
            "connect_timeout",
            "virtualhost",
            "lb_kind",
            "lvs_method",
            "protocol",
            "persistence_timeout",
            "persistence_granularity",
            "real_server",
            "ip_family",
        ):
            st.note(sub.line, f"{what}: {kw} not carried over: carom has no equivalent")


def _reals(st: _State, stmt: Stmt, what: str, ports: list[int]) -> list[ImportedReal]:
    out: dict[str, ImportedReal] = {}
    svc_timing = timing_of(stmt)
    for rs in stmt.children("real_server"):
        if not rs.args:
            raise st.fail(rs.line, "real_server needs an IP address (and a port)")
        address = parse_ip(rs.args[0])
        if address is None:
            raise st.fail(rs.line, f"real_server {rs.args[0]!r} is not an IP address")
        where = f"{what} real_server {address}"
        if len(rs.args) > 1 and rs.args[1].isdigit():
            port = int(rs.args[1])
            others = sorted({p for p in ports if p and p != port})
            if port and others:
                st.note(
                    rs.line,
                    f"{where}: port {port} differs from the service's port "
                    f"{', '.join(map(str, others))}: Direct Routing cannot change ports, "
                    "the real receives the VIP's port",
                )
        weight = 1
        check: dict[str, Any] | None = None
        checked = ""
        timing: Timing = timing_of(rs, svc_timing)
        for sub in rs.block or ():
            if sub.keyword == "weight":
                if not sub.args or not sub.args[0].isdigit():
                    raise st.fail(sub.line, "weight needs a number")
                weight = clamp_weight(int(sub.args[0]), sub.line, st.notes)
            elif sub.keyword in CHECKERS:
                if checked:
                    st.note(
                        sub.line,
                        f"{where}: {sub.keyword} not carried over: carom has one check "
                        f"per real, the first ({checked}) is kept",
                    )
                    continue
                checked = sub.keyword
                check = check_of(sub, timing, where, st.note)
            elif sub.keyword in ("delay_loop", "connect_timeout"):
                pass  # the checker's timing (timing_of)
            else:
                reason = _REAL_REASONS.get(sub.keyword, "carom has no equivalent")
                st.note(sub.line, f"{where}: {sub.keyword} not carried over: {reason}")
        if address in out:
            st.note(rs.line, f"{where}: listed twice; the later weight is kept")
        out[address] = ImportedReal(address=address, weight=weight, check=check)
    return list(out.values())
