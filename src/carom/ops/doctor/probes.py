"""`carom doctor`'s observations: ARP (IPv4) and neighbour solicitations (IPv6)
for the VIPs and the reals, a SYN to each real through the VIP path, two status
reads, ethtool. Runs on the director (in
its network namespace), as root; sends a handful of frames and nothing else."""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import Any

from pyroute2 import IPRoute

from carom.config.schema import Config
from carom.daemon import control
from carom.net.announce import link_local_of
from carom.ops.doctor import checks as c
from carom.ops.doctor import wire as w

ARP_ROUNDS = 3
ARP_GAP_S = 0.3
REPLY_WAIT_S = 1.0
LOOP_WINDOW_S = 2.0


IfAddr = IPv4Interface | IPv6Interface
IP = IPv4Address | IPv6Address


def interface_addresses(names: list[str]) -> dict[str, list[IfAddr]]:
    out: dict[str, list[IfAddr]] = {n: [] for n in names}
    with IPRoute() as ipr:
        for name in names:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                continue
            for m in ipr.get_addr(index=idx[0]):
                local = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
                iface = IPv4Interface if m["family"] == 2 else IPv6Interface
                out[name].append(iface(f"{local}/{m['prefixlen']}"))
    return out


def interface_for(addr: IP, addrs: dict[str, list[IfAddr]]) -> str:
    """The interface whose subnet holds `addr`, else the first one."""
    for name, ifaces in addrs.items():
        if any(i.version == addr.version and addr in i.network for i in ifaces):
            return name
    return next(iter(addrs))


def source_for(name: str, version: int, addrs: dict[str, list[IfAddr]]) -> IP | None:
    """The probes' source address on `name`: a global one of the family if any."""
    own = [i.ip for i in addrs[name] if i.version == version]
    return next((a for a in own if not a.is_link_local), own[0] if own else None)


def ethtool_stats(ifname: str) -> tuple[str | None, dict[str, int]]:
    """(driver, statistics) of an interface; (None, {}) when ethtool cannot tell."""
    try:
        info = subprocess.run(
            ["ethtool", "-i", ifname], capture_output=True, text=True, timeout=10
        ).stdout
        stats = subprocess.run(
            ["ethtool", "-S", ifname], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, {}
    driver = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("driver:")),
        None,
    )
    out: dict[str, int] = {}
    for line in stats.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and value.strip().isdigit():
            out[name.strip()] = int(value)
    return driver, out


def xdp_tx_errors(stats: dict[str, int]) -> int:
    return sum(v for k, v in stats.items() if k.endswith("xdp_tx_errors"))


@dataclass
class Seen:
    """What the packet sockets saw during the probes."""

    arp: dict[IP, list[tuple[str, str]]]  # target -> (answering MAC, eth source)
    tcp: list[w.Segment]
    csum_pending: dict[str, set[str]]  # interface -> source MACs of offloaded frames


def _listen(socks: dict[str, w.PacketSocket], seen: Seen, until: float) -> None:
    for name, sock in socks.items():
        for frame, pending in sock.receive(until):
            arp = w.parse_arp_reply(frame) or w.parse_na(frame)
            if arp is not None:
                seen.arp[arp.ip].append((arp.mac, arp.eth_src))
                continue
            seg = w.parse_tcp(frame, pending)
            if seg is not None:
                seen.tcp.append(seg)
                if pending:
                    seen.csum_pending[name].add(seg.eth_src)


def probe(
    cfg: Config,
    status: dict[str, Any] | None,
    report: c.Report,
    status_again: Callable[[], dict[str, Any] | None],
) -> None:
    started = time.monotonic()
    tx_errors_before = {name: xdp_tx_errors(ethtool_stats(name)[1]) for name in cfg.interfaces}
    addrs = interface_addresses(list(cfg.interfaces))
    view = c.status_snapshot_values(status or {})
    vips: list[IP] = list(dict.fromkeys(s.vip for s in cfg.services))
    local = {r.address for s in cfg.services for r in s.reals if r.local}
    reals: list[IP] = [
        a for a in dict.fromkeys(r.address for s in cfg.services for r in s.reals) if a not in local
    ]
    targets: dict[str, list[IP]] = defaultdict(list)
    for a in [*vips, *reals]:
        targets[interface_for(a, addrs)].append(a)
    macs = {name: w.interface_mac(name) for name in cfg.interfaces}
    seen = Seen(defaultdict(list), [], defaultdict(set))
    socks = {name: w.PacketSocket(name) for name in cfg.interfaces}
    try:
        # ask for every VIP and real, a few rounds (a flapping MAC shows up as two)
        for _ in range(ARP_ROUNDS):
            for name, tgts in targets.items():
                for t in tgts:
                    socks[name].send(_neighbour_request(macs[name], name, t, addrs))
            _listen(socks, seen, time.monotonic() + ARP_GAP_S)
        _listen(socks, seen, time.monotonic() + ARP_GAP_S)
        real_of_mac = {m: str(r) for r in reals for m, _ in seen.arp.get(r, [])}
        for vip in vips:
            name = interface_for(vip, addrs)
            c.judge_vip_arp(
                report,
                vip,
                name,
                [m for m, _ in seen.arp.get(vip, [])],
                bool(view["active"]),
                w.mac_text(macs[name]),
                real_of_mac,
            )
        for r in reals:
            c.judge_real_l2(
                report,
                r,
                interface_for(r, addrs),
                seen.arp.get(r, []),
                view["real_macs"].get(str(r)),
            )
        _dsr(cfg, reals, addrs, macs, socks, seen, report)
    finally:
        for s in socks.values():
            s.close()
    # loops: the counter over at least LOOP_WINDOW_S
    if status is not None:
        time.sleep(max(0.0, LOOP_WINDOW_S - (time.monotonic() - started)))
        after = status_again()
        if after is not None:
            c.judge_loops(
                report,
                int(view["drop_loop"]),
                int(c.status_snapshot_values(after)["drop_loop"]),
                time.monotonic() - started,
            )
        c.judge_xdp_mode(report, cfg.xdp_mode, cfg.interfaces, view["attached"])
    for name in cfg.interfaces:
        driver, stats = ethtool_stats(name)
        if driver != "veth":
            continue
        c.judge_veth(
            report,
            name,
            view["attached"].get(name),
            tx_errors_before[name],
            xdp_tx_errors(stats),
            seen.csum_pending[name],
            stats.get("peer_ifindex"),
        )


def _neighbour_request(mac: bytes, name: str, target: IP, addrs: dict[str, list[IfAddr]]) -> bytes:
    src = source_for(name, target.version, addrs)
    if isinstance(target, IPv4Address):
        return w.arp_request(mac, src if isinstance(src, IPv4Address) else None, target)
    return w.ns_request(mac, src if isinstance(src, IPv6Address) else link_local_of(mac), target)


def _dsr(
    cfg: Config,
    reals: list[IP],
    addrs: dict[str, list[IfAddr]],
    macs: dict[str, bytes],
    socks: dict[str, w.PacketSocket],
    seen: Seen,
    report: c.Report,
) -> None:
    """A SYN to each (VIP, port) of a TCP service, at each real's MAC."""
    sent: dict[int, tuple[IP, IP, int, str, str]] = {}
    for svc in cfg.services:
        vip = svc.vip
        if svc.protocol != "tcp" or not svc.port_number:
            continue
        for member in svc.reals:
            address = member.address
            if address not in reals or not member.weight:
                continue
            answers = {m for m, _ in seen.arp.get(address, [])}
            if len(answers) != 1:
                continue  # real-l2 has said why
            name = interface_for(address, addrs)
            src = source_for(name, vip.version, addrs)
            if src is None:
                report.skipped.append(
                    f"real-dsr: {name} has no IPv{vip.version} address to probe {address} from"
                )
                continue
            sport = w.random_port()
            while sport in sent:
                sport = w.random_port()
            mac = answers.pop()
            socks[name].send(
                w.tcp_frame(
                    macs[name],
                    w.mac_raw(mac),
                    src,
                    vip,
                    sport,
                    svc.port_number,
                    int(time.time_ns() & 0xFFFFFFFF),
                    0x02,
                )
            )
            sent[sport] = (address, vip, svc.port_number, name, mac)
    if not sent:
        return
    _listen(socks, seen, time.monotonic() + REPLY_WAIT_S)
    replies: dict[int, w.Segment] = {}
    for seg in seen.tcp:
        if seg.dport in sent and seg.sport == sent[seg.dport][2]:
            replies.setdefault(seg.dport, seg)
    for sport, (real, vip4, port, name, mac) in sent.items():
        got = replies.get(sport)
        reply = (got.flags, got.src, got.eth_src) if got else None
        c.judge_real_dsr(report, real, vip4, port, reply, mac)
        if got is not None and got.flags & c.SYN_ACK == c.SYN_ACK:
            # close the half-open connection on the real at once
            socks[name].send(
                w.tcp_frame(
                    macs[name], w.mac_raw(got.eth_src), got.dst, got.src, sport, port, got.ack, 0x04
                )
            )


def run(cfg: Config, socket_path: str) -> c.Report:
    report = c.Report()

    def status() -> dict[str, Any] | None:
        try:
            reply = control.request(socket_path, "status", timeout=10)
        except (ConnectionError, OSError):
            return None
        return reply.get("status") if reply.get("ok") else None

    first = status()
    if first is None:
        report.find(
            "daemon",
            f"no carom daemon answers on {socket_path}",
            "start it (`carom run -c CONFIG` or `systemctl start carom@INSTANCE`); the "
            "data-plane checks need it",
        )
    reads: list[dict[str, Any]] = []

    def status_kept() -> dict[str, Any] | None:
        st = status()
        if st is not None and st.get("cluster"):
            reads.append(st["cluster"])
        return st

    if first is not None and first.get("cluster"):
        reads.append(first["cluster"])
    probe(cfg, first, report, status_kept)
    if cfg.cluster is not None and first is not None:
        if not reads:
            report.skipped.append("fingerprints: the daemon reports no cluster state")
        else:
            unresolved = {
                r["address"]
                for s in (first.get("services") or [])
                for r in s["reals"]
                if r.get("state") == "unresolved"
            }
            c.judge_fingerprints(report, reads, unresolved)
    return report
