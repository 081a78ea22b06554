"""Announcement frames: golden bytes, and their decoded form checked by scapy
(an independent parser, including the ICMPv6 checksum)."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from carom.net import announce
from carom.net.announce import Claim, Link

MAC = bytes.fromhex("02ca00000002")
OTHER = bytes.fromhex("02ca00000003")
VIP4 = ipaddress.IPv4Address("192.0.2.100")
VIP6 = ipaddress.IPv6Address("2001:db8:2::100")
LL = ipaddress.IPv6Address("fe80::ca:ff:fe00:2")


def test_garp_golden() -> None:
    frame = announce.garp_frame(MAC, VIP4)
    assert frame.hex() == (
        "ffffffffffff02ca000000020806000108000604000102ca00000002c0000264000000000000c0000264"
    )
    arp = Ether(frame)[ARP]
    assert (arp.op, arp.psrc, arp.pdst, arp.hwsrc) == (1, str(VIP4), str(VIP4), "02:ca:00:00:00:02")


def test_unsolicited_na_decodes_with_valid_checksum() -> None:
    frame = announce.unsolicited_na_frame(MAC, VIP6, LL)
    pkt = Ether(frame)
    assert pkt.dst == "33:33:00:00:00:01" and pkt.src == "02:ca:00:00:00:02"
    ip6 = pkt[IPv6]
    assert (ip6.src, ip6.dst, ip6.hlim) == (str(LL), "ff02::1", 255)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, str(VIP6))
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == "02:ca:00:00:00:02"
    sent = na.cksum
    del na.cksum  # let scapy compute it afresh from the same bytes
    assert Ether(bytes(pkt))[ICMPv6ND_NA].cksum == sent


def test_link_local_of_mac_is_eui64() -> None:
    assert announce.link_local_of(MAC) == LL


def test_frames_for_covers_every_vip_in_its_family() -> None:
    link = Link(name="carom0", mac=MAC, link_local=LL)
    frames = announce.frames_for(link, [VIP4, VIP6])
    assert [announce.parse_claim(f) for f in frames] == [Claim(VIP4, MAC), Claim(VIP6, MAC)]


def test_parse_claim_reads_arp_replies_and_ignores_probes() -> None:
    reply = bytes(
        Ether(src="02:ca:00:00:00:03")
        / ARP(op=2, hwsrc="02:ca:00:00:00:03", psrc=str(VIP4), pdst="192.0.2.1")
    )
    assert announce.parse_claim(reply) == Claim(VIP4, OTHER)
    probe = bytes(Ether() / ARP(op=1, hwsrc="02:ca:00:00:00:03", psrc="0.0.0.0", pdst=str(VIP4)))
    assert announce.parse_claim(probe) is None
    assert announce.parse_claim(b"\x00" * 13) is None
    truncated = reply[:30]
    assert announce.parse_claim(truncated) is None


def test_parse_claim_reads_na_target_option() -> None:
    na = bytes(
        Ether(src="02:ca:00:00:00:03")
        / IPv6(src="fe80::3", dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(tgt=str(VIP6), O=1, R=0, S=0)
        / ICMPv6NDOptDstLLAddr(lladdr="02:ca:00:00:00:03")
    )
    assert announce.parse_claim(na) == Claim(VIP6, OTHER)
    no_option = bytes(Ether() / IPv6(hlim=255) / ICMPv6ND_NA(tgt=str(VIP6)))
    assert announce.parse_claim(no_option) is None
