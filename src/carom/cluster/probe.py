"""Asking the network who answers for a VIP: an ordinary ARP request (sender =
our own interface address, never the VIP, so nobody's cache learns anything
from it). The active director's data plane answers only while its daemon keeps
the lease fresh, so an answer from a peer director's MAC proves that peer is
alive and active even when its heartbeats do not arrive (a cut sync path).
The answer is seen by the ownership task's claim watcher."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence

from carom.net.announce import BROADCAST, ETH_P_ARP, Link


def arp_request_frame(
    mac: bytes, sender: ipaddress.IPv4Address, target: ipaddress.IPv4Address
) -> bytes:
    """who-has `target` tell `sender` (our MAC), to broadcast."""
    eth = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
    return eth + arp + mac + sender.packed + bytes(6) + target.packed


def ask(links: Sequence[Link], sender: ipaddress.IPv4Address, vips: Sequence[object]) -> int:
    """Send one request per IPv4 VIP on every link; returns frames sent."""
    sent = 0
    for link in links:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((link.name, 0))
            for v in vips:
                if isinstance(v, ipaddress.IPv4Address):
                    s.send(arp_request_frame(link.mac, sender, v))
                    sent += 1
    return sent
