"""`carom doctor`: the checks, each a function that adds findings (what is wrong
and the command or setting that fixes it) and passes to a Report.

The judgements are pure functions of what was observed (`judge_*`), so that they
have unit tests; the probes that observe (ARP, a SYN through the VIP path,
ethtool, two status reads) live in probes.py. Field notes 1, 2 and 4 are the
source of every check."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

IPAddress = IPv4Address | IPv6Address
SYN_ACK, RST = 0x12, 0x04


@dataclass(frozen=True)
class Finding:
    check: str  # short id: vip-arp, real-l2, real-dsr, loops, xdp-mode, veth
    problem: str  # what is wrong, with the addresses and MACs involved
    fix: str  # what to do about it


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)  # "check: what was verified"
    skipped: list[str] = field(default_factory=list)  # "check: why it did not run"

    def find(self, check: str, problem: str, fix: str) -> None:
        self.findings.append(Finding(check, problem, fix))

    def render(self) -> str:
        lines = []
        for f in self.findings:
            lines.append(f"FAIL  {f.check}: {f.problem}")
            lines.append(f"      fix: {f.fix}")
        lines += [f"ok    {p}" for p in self.passed]
        lines += [f"skip  {s}" for s in self.skipped]
        n = len(self.findings)
        lines.append(
            f"{n} finding{'s' if n != 1 else ''}" if n else "no findings: the checks above pass"
        )
        return "\n".join(lines)


# --- VIP ownership (field note 1) ---------------------------------------------------


def asked(addr: IPAddress) -> str:
    """How an address is resolved: ARP (IPv4) or NDP (IPv6)."""
    return "ARP" if addr.version == 4 else "NDP"


def judge_vip_arp(
    report: Report,
    vip: IPAddress,
    ifname: str,
    answers: Iterable[str],
    active: bool,
    own_mac: str,
    real_of_mac: Mapping[str, str],
) -> None:
    """`answers`: the MACs that answered ARP/NDP for `vip` on `ifname`. Our own XDP
    responder never answers our own request, so on the active node the right
    number of other answers is zero, on a backup exactly one (the active node)."""
    macs = sorted(set(answers) - {own_mac})

    def who(mac: str) -> str:
        real = real_of_mac.get(mac)
        return f"{mac} (real {real})" if real else mac

    reals = [real_of_mac[m] for m in macs if m in real_of_mac]
    settings = (
        "arp_ignore=1, arp_announce=2, VIP on lo with a host mask"
        if vip.version == 4
        else "the VIP on lo with a /128, not on the LAN interface"
    )
    real_fix = (
        f"on {', '.join(reals)}: `carom realserver up --vip {vip}` ({settings})" if reals else ""
    )
    if active and macs:
        report.find(
            "vip-arp",
            f"{vip} on {ifname} is also answered by {', '.join(who(m) for m in macs)}; this "
            "node is active, so only it may answer: routers send part of the VIP's traffic "
            "elsewhere",
            real_fix
            or "find the host with that MAC; it carries the VIP on an interface "
            "that answers ARP, or another director believes it is active",
        )
    elif not active and len(macs) != 1:
        problem = (
            f"nobody answers {asked(vip)} for {vip} on {ifname}: the VIP is unreachable"
            if not macs
            else f"{vip} on {ifname} is answered by {len(macs)} MACs: "
            f"{', '.join(who(m) for m in macs)}"
        )
        report.find(
            "vip-arp",
            problem,
            real_fix or "exactly one director (the active one) must answer; check its daemon",
        )
    else:
        report.passed.append(
            f"vip-arp: {vip} on {ifname} answered by "
            + ("this node only" if active else f"one MAC ({macs[0]})")
        )


# --- real servers on layer 2 (field notes 1 and 4) -----------------------------------


def judge_real_l2(
    report: Report,
    real: IPAddress,
    ifname: str,
    answers: Iterable[tuple[str, str]],
    used: str | None,
) -> None:
    """`answers`: (answering MAC, frame source MAC) of each ARP/NDP reply for `real`;
    `used`: the MAC the data plane forwards to (None: unresolved)."""
    answers = list(answers)
    macs = sorted({m for m, _ in answers})
    if not macs:
        report.find(
            "real-l2",
            f"real {real} does not answer {asked(real)} on {ifname}",
            "start it, or check that it is on the same layer-2 segment as the director "
            "(DSR rewrites only the MAC: it cannot cross a router)",
        )
        return
    if len(macs) > 1:
        report.find(
            "real-l2",
            f"real {real} is answered by {len(macs)} MACs ({', '.join(macs)}): a duplicate "
            "address, or NIC teaming that rewrites source MACs (field note 4)",
            "give the address to one host only; with teaming, use a mode that keeps one MAC "
            "per address (active-backup, or LACP with the switch)",
        )
        return
    rewritten = sorted({src for m, src in answers if src != m})
    if rewritten:
        report.find(
            "real-l2",
            f"real {real} answers {asked(real)} as {macs[0]} from frames sent by "
            f"{', '.join(rewritten)}: "
            "NIC teaming rewrites its source MAC (field note 4)",
            "use a teaming mode that keeps the MAC (active-backup, or LACP with the switch)",
        )
        return
    if used is not None and used != macs[0]:
        report.find(
            "real-l2",
            f"real {real} answers from {macs[0]} but the data plane forwards to {used}",
            "the neighbour table has an old entry: `ip neigh flush "
            f"{real}`; if it keeps changing, two hosts claim {real}",
        )
        return
    report.passed.append(
        f"real-l2: {real} answers {asked(real)} on {ifname} from one MAC ({macs[0]})"
    )


def judge_real_dsr(
    report: Report,
    real: IPAddress,
    vip: IPAddress,
    port: int,
    reply: tuple[int, IPAddress, str] | None,
    mac: str,
) -> None:
    """A SYN to vip:port sent to the real's MAC `mac`; `reply` is (TCP flags,
    source address, source MAC) of its answer, None when it never answered."""
    where = f"{vip}:{port}"
    if reply is not None and reply[2] != mac:
        report.find(
            "real-dsr",
            f"a SYN for {where} sent to real {real} ({mac}) was answered by {reply[2]}: "
            f"{real} forwards VIP traffic instead of serving it",
            f"on {real}: put the VIP on lo (`carom realserver up --vip {vip}`) and turn IP "
            "forwarding off (net.ipv4.ip_forward=0)",
        )
    elif reply is None:
        report.find(
            "real-dsr",
            f"real {real} does not answer a SYN for {where} sent to its MAC: it drops VIP traffic",
            f"on {real}: `carom realserver up --vip {vip}` (the VIP on lo, /32), and a "
            f"service listening on port {port}",
        )
    elif reply[1] != vip:
        report.find(
            "real-dsr",
            f"real {real} answers a SYN for {where} from {reply[1]}, not from the VIP: "
            "the client would reset the connection",
            f"on {real}: the VIP must be a local address (on lo), not NATed",
        )
    elif reply[0] & RST:
        report.find(
            "real-dsr",
            f"real {real} accepts VIP traffic but refuses port {port} (RST)",
            f"start the service on {real}, listening on {vip}:{port} or on all addresses",
        )
    elif reply[0] & SYN_ACK == SYN_ACK:
        report.passed.append(f"real-dsr: {real} serves {where} from the VIP")


# --- the data plane's own view (field note 2) ---------------------------------------


def judge_loops(report: Report, before: int, after: int, seconds: float) -> None:
    if after > before:
        report.find(
            "loops",
            f"drop_loop rose by {after - before} in {seconds:.0f} s: VIP frames come back "
            "to the director from a real server (field note 2)",
            "on the real that sends them: put the VIP on lo (`carom realserver up`), and do "
            "not route VIP traffic back through the director; `carom status` names the "
            "counters, the daemon log has the details",
        )
    else:
        extra = f" (total {after} since start, not rising)" if after else ""
        report.passed.append(f"loops: drop_loop did not rise in {seconds:.0f} s{extra}")


def judge_xdp_mode(
    report: Report, wanted: str, interfaces: Iterable[str], attached: Mapping[str, str]
) -> None:
    """`wanted`: the config's xdp_mode; `attached`: interface -> mode the daemon runs."""
    for ifname in interfaces:
        mode = attached.get(ifname)
        if mode is None:
            report.find(
                "xdp-mode",
                f"carom is not attached to {ifname}",
                "start the daemon (`carom run -c CONFIG`) or check its log for the attach error",
            )
        elif mode == "generic" and wanted != "generic":
            report.find(
                "xdp-mode",
                f"{ifname} runs XDP in generic mode (xdp_mode: {wanted}): every packet is "
                "copied into an skb first, several times slower than native",
                "use a NIC driver with native XDP; or write xdp_mode: generic to accept it",
            )
        else:
            report.passed.append(f"xdp-mode: {ifname} in {mode} mode")


def judge_veth(
    report: Report,
    ifname: str,
    mode: str | None,
    tx_errors_before: int,
    tx_errors: int,
    csum_pending_from: Iterable[str],
    peer_ifindex: int | None = None,
) -> None:
    """A veth in native mode: XDP_TX frames reach the peer only if the peer runs an
    XDP program (or has GRO on); frames whose checksum was left to offload (by the
    sender, and not finished on the way because every veth on the path offloads
    too) are forwarded by XDP_TX with that checksum unfinished."""
    peer = f"the peer of {ifname}" + (
        f" (ifindex {peer_ifindex} in its namespace)" if peer_ifindex else ""
    )
    ok = True
    new_errors = tx_errors - tx_errors_before
    if new_errors > 0:
        ok = False
        report.find(
            "veth",
            f"{ifname}: {new_errors} frames sent back out by XDP_TX were dropped while doctor "
            f"ran (rx_queue_*_xdp_tx_errors): {peer} has no XDP program and GRO off",
            f"attach an XDP program to {peer} (`ip link set dev PEER xdpdrv obj "
            "xdp_pass.bpf.o sec xdp`) or `ethtool -K PEER gro on`",
        )
    senders = sorted(set(csum_pending_from))
    if senders and mode == "native":
        ok = False
        report.find(
            "veth",
            f"{ifname}: frames from {', '.join(senders)} arrive with their TCP/UDP checksum "
            "left to offload; carom forwards such frames with a wrong checksum",
            f"turn TX checksum offload off on {peer} and on the senders' veths: "
            "`ethtool -K IFACE tx off`",
        )
    if ok:
        past = f" ({tx_errors} XDP_TX drops before, none while doctor ran)" if tx_errors else ""
        report.passed.append(f"veth: {ifname} has no XDP_TX drops or unfinished checksums{past}")


def status_snapshot_values(st: Mapping[str, Any]) -> dict[str, Any]:
    """What the checks read from `carom status`: modes and real MACs."""
    return {
        "attached": {i["name"]: i["mode"] for i in st.get("interfaces", [])},
        "real_macs": {
            r["address"]: r["mac"]
            for s in st.get("services", [])
            for r in s["reals"]
            if r.get("mac")
        },
        "drop_loop": st.get("counters", {}).get("drop_loop", 0),
        "active": (st.get("ownership") or {}).get("active", st.get("role") == "active"),
    }


# --- the cluster (issue 9: both directors build identical tables) -------------------


def judge_fingerprints(
    report: Report,
    reads: Sequence[Mapping[str, Any]],
    unresolved: Iterable[str] = (),
) -> None:
    """`reads`: the `cluster` part of two or more status reads, a few seconds
    apart; a peer whose tables differ in every read is a finding (one read
    alone may catch a health change on its way through the cluster).
    `unresolved`: reals this node has no MAC for (out of its tables)."""
    last = reads[-1]
    ours = str(last.get("fingerprint"))
    live = [p for p in last.get("peers", []) if p.get("alive")]
    if not live:
        report.skipped.append("fingerprints: no live peer director to compare tables with")
        return
    for peer in live:
        name = peer["name"]
        theirs = []
        for r in reads:
            p = next((x for x in r.get("peers", []) if x.get("name") == name), None)
            theirs.append(
                p is not None and p.get("fingerprint") not in (None, r.get("fingerprint"))
            )
        if not all(theirs):
            report.passed.append(f"fingerprints: Maglev tables equal to {name}'s ({ours[:12]})")
            continue
        missing = sorted(set(unresolved))
        hint = (
            f"; this node has no MAC for {', '.join(missing)} (out of its tables): "
            "`carom status` says why, the peer may resolve them"
            if missing
            else ""
        )
        report.find(
            "fingerprints",
            f"this node's Maglev tables differ from {name}'s (ours {ours[:12]}, theirs "
            f"{str(peer.get('fingerprint'))[:12]}): after a takeover, flows not synced yet "
            "would move to other reals, and neither node counts as ready to take over",
            "make the services and their reals (address, weight) the same in both configs "
            "(only `local` and cluster.node differ), then `carom reload`; `carom status` on "
            "each shows every service's table fingerprint: the service whose differs is the "
            f"one{hint}",
        )
