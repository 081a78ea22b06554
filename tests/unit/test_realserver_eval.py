"""The pure core of `carom realserver`: evaluate(), plan_up(), merge_state() on
hand-built snapshots. The kernel facts they encode (effective = max(all, iface);
arp_ignore 3..7 and 9+ answer, 8 answers nothing; arp_announce 3+ acts as 0)
are proven against a real kernel in tests/integration/test_realserver.py."""

from __future__ import annotations

import ipaddress

import pytest

from carom.net.realserver import (
    Addr,
    Conf,
    Finding,
    Interface,
    Severity,
    Snapshot,
    State,
    SysctlChange,
    UpPlan,
    evaluate,
    interface_views,
    merge_state,
    plan_up,
    sysctl_key,
)

VIP = ipaddress.ip_address("192.0.2.100")
VIP6 = ipaddress.ip_address("2001:db8:2::100")
HOST = ipaddress.ip_address("192.0.2.11")
GOOD = Conf(arp_ignore=1, arp_announce=2, rp_filter=0)
ZERO = Conf(arp_ignore=0, arp_announce=0, rp_filter=0)


def snap(
    *,
    all_conf: Conf = GOOD,
    eth0: Conf = ZERO,
    lo_up: bool = True,
    extra: tuple[Addr, ...] = (),
    vips_on_lo: bool = True,
    interfaces: tuple[Interface, ...] = (),
    **kw: object,
) -> Snapshot:
    lo = (Addr("lo", VIP, 32), Addr("lo", VIP6, 128)) if vips_on_lo else ()
    return Snapshot(
        interfaces=(
            Interface(name="lo", loopback=True, up=lo_up, arp=False, conf=ZERO),
            Interface(name="eth0", loopback=False, up=True, arp=True, conf=eth0),
            *interfaces,
        ),
        addresses=(Addr("eth0", HOST, 24), *lo, *extra),
        all_conf=all_conf,
        **kw,  # type: ignore[arg-type]
    )


def codes(findings: list[Finding]) -> list[tuple[str, str, str | None]]:
    return [(f.code, str(f.severity), f.interface) for f in findings]


def test_a_configured_host_is_clean() -> None:
    assert evaluate(snap(), [VIP, VIP6]) == []
    assert plan_up(snap(), [VIP, VIP6]).empty


def test_missing_vip_and_lo_down() -> None:
    found = evaluate(snap(lo_up=False, vips_on_lo=False), [VIP, VIP6])
    assert codes(found) == [
        ("lo-down", "error", "lo"),
        ("vip-missing", "error", "lo"),
        ("vip-missing", "error", "lo"),
    ]
    assert found[1].fix == "ip addr add 192.0.2.100/32 dev lo"
    assert found[2].fix == "ip addr add 2001:db8:2::100/128 dev lo"
    assert "deletes every IPv6 address" in found[0].message


def test_vip_with_a_wide_mask_on_lo() -> None:
    s = snap(vips_on_lo=False, extra=(Addr("lo", VIP, 24),))
    (f,) = evaluate(s, [VIP])
    assert (f.code, f.severity, f.vip) == ("vip-wide-mask", Severity.ERROR, str(VIP))
    assert "believe the whole subnet 192.0.2.0/24 is local" in f.message
    assert "stop answering on its real interface" in f.message
    assert f.fix == "ip addr del 192.0.2.100/24 dev lo && ip addr add 192.0.2.100/32 dev lo"
    # with the /32 present as well, deleting the /24 is the whole fix
    (f,) = evaluate(snap(extra=(Addr("lo", VIP, 24),)), [VIP])
    assert f.fix == "ip addr del 192.0.2.100/24 dev lo"


def test_another_lo_address_whose_subnet_covers_the_vip() -> None:
    s = snap(extra=(Addr("lo", ipaddress.ip_address("192.0.2.1"), 24),))
    (f,) = evaluate(s, [VIP])
    assert f.code == "vip-wide-mask" and f.fix == "ip addr del 192.0.2.1/24 dev lo"
    # 127.0.0.1/8 covers no VIP
    assert evaluate(snap(extra=(Addr("lo", ipaddress.ip_address("127.0.0.1"), 8),)), [VIP]) == []


def test_ipv6_wide_mask_is_explained_as_a_route() -> None:
    (f,) = evaluate(snap(extra=(Addr("lo", VIP6, 64),)), [VIP6])
    assert (
        f.code == "vip-wide-mask" and "routes the whole subnet 2001:db8:2::/64 to lo" in f.message
    )


def test_vip_on_a_real_interface_steals_it() -> None:
    found = evaluate(snap(extra=(Addr("eth0", VIP, 32), Addr("eth0", VIP6, 64))), [VIP, VIP6])
    assert codes(found) == [
        ("vip-on-interface", "error", "eth0"),
        ("vip-on-interface", "error", "eth0"),
    ]
    assert "will answer ARP for the VIP on eth0 and steal its traffic" in found[0].message
    assert "neighbour solicitations (NDP)" in found[1].message
    assert found[0].fix == "ip addr del 192.0.2.100/32 dev eth0"


def test_vip_on_an_interface_without_arp_is_only_a_warning() -> None:
    dummy = Interface(name="dummy0", loopback=False, up=True, arp=False, conf=ZERO)
    s = snap(interfaces=(dummy,), extra=(Addr("dummy0", VIP, 32),))
    assert codes(evaluate(s, [VIP])) == [("vip-on-noarp-interface", "warning", "dummy0")]


# (all, interface) -> expected severity of the arp_ignore finding, None when clean
@pytest.mark.parametrize(
    ("all_value", "iface_value", "expected"),
    [
        (1, 0, None),
        (0, 1, None),  # the interface's own value counts too
        (2, 0, None),
        (0, 0, "error"),
        (1, 3, "error"),  # max(1, 3) = 3: answers for global addresses, the VIP
        (1, 4, "error"),  # 4..7 are reserved and answer everything
        (1, 9, "error"),  # unknown values answer everything
        (8, 0, "warning"),  # answers nothing, not even for the host's own address
    ],
)
def test_arp_ignore_effective_value(all_value: int, iface_value: int, expected: str | None) -> None:
    s = snap(all_conf=Conf(all_value, 2, 0), eth0=Conf(iface_value, 0, 0))
    found = [f for f in evaluate(s, [VIP]) if f.code == "arp-ignore"]
    assert [str(f.severity) for f in found] == ([] if expected is None else [expected])
    if found:
        assert (
            f"(all={all_value}, eth0={iface_value}; the kernel uses the larger)" in found[0].message
        )


def test_arp_ignore_fix_names_the_interface_only_when_its_value_is_the_problem() -> None:
    (f,) = evaluate(snap(all_conf=Conf(0, 2, 0)), [VIP])
    assert f.fix == "sysctl -w net.ipv4.conf.all.arp_ignore=1"
    assert "would answer ARP requests for the VIP on eth0" in f.message
    (f,) = evaluate(snap(eth0=Conf(4, 0, 0)), [VIP])
    assert f.fix == "sysctl -w net.ipv4.conf.eth0.arp_ignore=1"
    (f,) = evaluate(snap(all_conf=Conf(0, 2, 0), eth0=Conf(5, 0, 0)), [VIP])
    assert f.fix == "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1"


@pytest.mark.parametrize(
    ("all_value", "iface_value", "bad"),
    [(2, 0, False), (0, 2, False), (1, 0, True), (0, 0, True), (2, 3, True), (3, 0, True)],
)
def test_arp_announce_must_be_exactly_two(all_value: int, iface_value: int, bad: bool) -> None:
    s = snap(all_conf=Conf(1, all_value, 0), eth0=Conf(0, iface_value, 0))
    found = [f for f in evaluate(s, [VIP]) if f.code == "arp-announce"]
    assert len(found) == bad
    if bad:
        assert found[0].severity is Severity.ERROR


@pytest.mark.parametrize(
    ("all_value", "iface_value", "strict"),
    [(0, 0, False), (1, 0, True), (0, 1, True), (1, 2, False), (2, 1, False), (0, 2, False)],
)
def test_strict_rp_filter_is_a_warning(all_value: int, iface_value: int, strict: bool) -> None:
    s = snap(all_conf=Conf(1, 2, all_value), eth0=Conf(0, 0, iface_value))
    found = evaluate(s, [VIP])
    assert codes(found) == ([("rp-filter-strict", "warning", "eth0")] if strict else [])
    if strict:
        assert found[0].fix == "sysctl -w net.ipv4.conf.eth0.rp_filter=2"
        assert "asymmetric routing" in found[0].message


def test_ipv4_settings_do_not_matter_for_ipv6_only_vips() -> None:
    s = snap(all_conf=Conf(0, 0, 1))
    assert evaluate(s, [VIP6]) == []
    assert plan_up(s, [VIP6]).sysctls == ()
    assert len(evaluate(s, [VIP])) == 3


def test_interfaces_without_arp_skip_arp_checks_but_not_rp_filter() -> None:
    tun = Interface(name="tun0", loopback=False, up=True, arp=False, conf=Conf(0, 0, 1))
    assert codes(evaluate(snap(interfaces=(tun,)), [VIP])) == [
        ("rp-filter-strict", "warning", "tun0")
    ]


def test_ndp_proxy_entry_for_the_vip() -> None:
    fwd = Interface(
        name="eth1", loopback=False, up=True, arp=True, conf=GOOD, forwarding6=True, proxy_ndp=True
    )
    proxy = (Addr("eth1", VIP6, 128),)
    (f,) = evaluate(snap(interfaces=(fwd,), ndp_proxies=proxy), [VIP6])
    assert (f.code, f.severity) == ("ndp-proxy", Severity.ERROR)
    assert f.fix == "ip -6 neigh del proxy 2001:db8:2::100 dev eth1"
    off = Interface(name="eth1", loopback=False, up=True, arp=True, conf=GOOD)
    (f,) = evaluate(snap(interfaces=(off,), ndp_proxies=proxy), [VIP6])
    assert (f.code, f.severity) == ("ndp-proxy", Severity.WARNING)


def test_interface_views_report_effective_values() -> None:
    (v,) = interface_views(snap(all_conf=Conf(1, 2, 1), eth0=Conf(4, 0, 2)))
    assert (v.name, v.arp_ignore.effective, v.arp_announce.effective) == ("eth0", 4, 2)
    assert (v.rp_filter.all, v.rp_filter.interface, v.rp_filter.effective) == (1, 2, 2)


def test_plan_up_on_a_fresh_host() -> None:
    s = snap(lo_up=False, vips_on_lo=False, all_conf=Conf(0, 0, 1), eth0=Conf(4, 3, 0))
    plan = plan_up(s, [VIP, VIP6])
    assert plan.bring_lo_up
    assert plan.add == (Addr("lo", VIP, 32), Addr("lo", VIP6, 128))
    assert plan.sysctls == (
        SysctlChange("all", "arp_ignore", 0, 1),
        SysctlChange("all", "arp_announce", 0, 2),
        SysctlChange("eth0", "arp_ignore", 4, 1),  # max(1, 4) would still answer
        SysctlChange("eth0", "arp_announce", 3, 2),
        SysctlChange("eth0", "rp_filter", 0, 2),  # max(1, 2) = 2: loose, `all` untouched
    )


def test_plan_up_keeps_stronger_values_and_existing_addresses() -> None:
    s = snap(all_conf=Conf(2, 2, 0), extra=(Addr("lo", VIP, 24),))
    plan = plan_up(s, [VIP])
    assert plan.empty and plan.present == (VIP,)
    # arp_ignore 8 hides the host's own address: `up` makes it 1
    assert plan_up(snap(all_conf=Conf(8, 2, 0)), [VIP]).sysctls == (
        SysctlChange("all", "arp_ignore", 8, 1),
    )


def test_merge_state_keeps_the_first_before_value() -> None:
    first = merge_state(
        None,
        [VIP],
        UpPlan(True, (Addr("lo", VIP, 32),), (), (SysctlChange("all", "arp_ignore", 0, 1),)),
    )
    # someone set arp_ignore back to 0; a second `up` sets it again
    again = merge_state(
        first, [VIP, VIP6], UpPlan(False, (), (VIP,), (SysctlChange("all", "arp_ignore", 0, 1),))
    )
    assert again.sysctls == (SysctlChange("all", "arp_ignore", 0, 1),)
    assert again.vips == (VIP, VIP6) and again.added == (Addr("lo", VIP, 32),)
    assert again.lo_brought_up
    # an `up` that changes nothing leaves the state as it is
    assert merge_state(again, [VIP], UpPlan(False, (), (VIP,), ())) == again


def test_state_round_trips_through_json() -> None:
    state = State(
        vips=(VIP, VIP6),
        added=(Addr("lo", VIP6, 128),),
        sysctls=(SysctlChange("eth0.100", "rp_filter", 1, 2),),
        lo_brought_up=True,
    )
    assert State.from_json(state.to_json()) == state


def test_sysctl_key_for_an_interface_with_a_dot() -> None:
    assert sysctl_key("eth0.100", "rp_filter") == "net.ipv4.conf.eth0/100.rp_filter"
