"""`carom lab demo`: the lab, carom on the director, real HTTP traffic, and the
evidence a user wants: who served what, that replies left the real servers from
the VIP without crossing the director, and the director's own counters."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from carom.lab import topology as t
from carom.lab.director import Director, lab_config
from carom.lab.lab import Lab
from carom.lab.traffic import Capture, curl

REQUESTS_PER_CLIENT = 30


def _bar(n: int, total: int, width: int = 30) -> str:
    return "#" * max(1, round(width * n / total)) if n else ""


def run_demo(keep: bool = False, say: Callable[[str], None] = print) -> int:
    lab = Lab()
    director = Director(lab, "carom-dir1")
    names = {n.main.mac: n.name for n in t.NODES}
    say("==> building the lab: network namespaces carom-* (clients, router, directors, reals)")
    lab.up()
    ok = False
    try:
        say(f"==> starting `carom run` on {director.node} ({director.config_path})")
        director.remove()
        director.start(lab_config())
        with tempfile.TemporaryDirectory(prefix="carom-demo-") as tmp:
            at_router = Capture(lab, "router", Path(tmp) / "router.pcap")
            at_real1 = Capture(lab, "real1", Path(tmp) / "real1.pcap")
            served: list[str] = []
            for client in t.CLIENTS:
                served += curl(lab, client.name, f"http://{t.VIP4}/", REQUESTS_PER_CLIENT)
            served6 = curl(lab, t.CLIENTS[0].name, f"http://[{t.VIP6}]/", 12)
            router_pkts = at_router.stop()
            real1_pkts = at_real1.stop()

        total = len(t.CLIENTS) * REQUESTS_PER_CLIENT
        say("")
        say(
            f"HTTP requests to http://{t.VIP4}/ from {len(t.CLIENTS)} clients, "
            f"one TCP connection each: {len(served)}/{total} answered"
        )
        counts = Counter(served)
        for real in t.REALS:
            n = counts.get(real.name, 0)
            say(f"  {real.name:<13} {n:>4}  {_bar(n, max(counts.values(), default=1))}")
        say(
            f"IPv6, http://[{t.VIP6}]/: {len(served6)}/12 answered by "
            + ", ".join(f"{k} ({v})" for k, v in sorted(Counter(served6).items()))
        )

        web = [
            p
            for p in router_pkts
            if TCP in p and 80 in (p[TCP].sport, p[TCP].dport) and (IP in p or IPv6 in p)
        ]
        vips = {str(t.VIP4), str(t.VIP6)}
        replies = [p for p in web if (p[IP].src if IP in p else p[IPv6].src) in vips]
        requests = [p for p in web if (p[IP].dst if IP in p else p[IPv6].dst) in vips]
        reply_from = Counter(names.get(p[Ether].src, p[Ether].src) for p in replies)
        request_to = Counter(names.get(p[Ether].dst, p[Ether].dst) for p in requests)
        say("")
        say("Captured at the router (carom-router, segment side):")
        say(
            f"  {len(requests)} request packets to the VIP, sent to: "
            + ", ".join(f"{k} ({v})" for k, v in request_to.items())
        )
        say(
            f"  {len(replies)} reply packets from the VIP, received from: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(reply_from.items()))
        )
        crossed = reply_from.get(t.DIR1.name, 0)
        say(
            f"  replies that crossed the director: {crossed}"
            + (
                "  (Direct Server Return: the director only sees the inbound half)"
                if not crossed
                else "  (!)"
            )
        )
        at_real = [p for p in real1_pkts if IP in p and TCP in p and p[IP].dst == str(t.VIP4)]
        back = [p for p in real1_pkts if IP in p and TCP in p and p[IP].src == str(t.VIP4)]
        sources = sorted({p[IP].src for p in at_real})
        senders = sorted({names.get(p[Ether].src, p[Ether].src) for p in at_real})
        say("Captured at carom-real1:")
        say(
            f"  requests arrive from MAC of {', '.join(senders)} with the client's own address "
            f"({', '.join(sources)}): the IP packet is untouched"
        )
        say(
            f"  replies leave with source {t.VIP4} to "
            + ", ".join(sorted({names.get(p[Ether].dst, p[Ether].dst) for p in back}))
        )

        say("")
        say("carom status on the director:")
        # what an operator would type: the demo shows the CLI, it does not import it
        status = director.carom("status", "--socket", director.socket, check=True).stdout
        for line in status.splitlines():
            say(f"  {line}")
        ok = len(served) == total and set(counts) == {r.name for r in t.REALS} and not crossed
        say("")
        say(
            "demo "
            + (
                "passed: traffic was balanced by carom over all real servers with DSR"
                if ok
                else "FAILED: see above"
            )
        )
        if keep:
            say("")
            say("The lab and the daemon keep running. Try:")
            say(f"  carom lab exec client1 -- curl -s http://{t.VIP4}/")
            say(f"  carom status --socket {director.socket}")
            say(
                f"  carom explain --socket {director.socket} {t.CLIENT1.main.addr4}:40000 "
                f"{t.VIP4}:80/tcp"
            )
            say("  carom lab down          # removes everything")
    finally:
        if not keep:
            director.remove()
            lab.down()
            say("==> lab removed (`carom lab demo --keep` leaves it running)")
    return 0 if ok else 1
