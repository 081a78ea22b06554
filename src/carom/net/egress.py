"""Can every real be reached from the interfaces carom is attached to?

carom forwards with XDP_TX: a frame leaves by the interface it came in on. A
real whose route uses another interface would get frames sent out of the wrong
segment, where its MAC is not: a silent black hole. carom has no devmap
redirect (docs/config.md, "Reals and interfaces"), so such a config is
refused before anything is applied, by `carom check`, at start and on reload.

The rules are pure functions of the config and the kernel's route for each real
(`routes`: address -> the name of the interface the route uses, None when the
kernel has no route); `route_interfaces` asks the kernel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from carom.config.fields import IPAddress, Loc
from carom.config.schema import Config

Routes = Mapping[IPAddress, str | None]


def egress_problems(config: Config, routes: Routes) -> list[tuple[Loc, str]]:
    """Reals that XDP_TX cannot reach, at their config location.

    1. A real whose route uses an interface carom is not attached to: frames for
       it would leave by the interface they came in on, never by its own.
    2. With several interfaces attached, a service whose reals are behind more
       than one of them: its VIP's frames arrive on one interface and can only
       reach the reals behind that one; Maglev would send the others' share of
       new flows nowhere."""
    attached = list(config.interfaces)
    if len(attached) == 1 and set(routes.values()) <= {attached[0], None}:
        return []  # the common case, without walking every real of every service
    listed = ", ".join(attached)
    problems: list[tuple[Loc, str]] = []
    for i, svc in enumerate(config.services):
        behind: dict[str, int] = {}
        for j, real in enumerate(svc.reals):
            ifname = routes.get(real.address)
            if real.local or ifname is None:
                continue  # local: its own stack; no route: reported as unresolved
            loc: Loc = ("services", i, "reals", j, "address")
            if ifname not in attached:
                problems.append(
                    (
                        loc,
                        f"the real {real.address} is reached through {ifname} (its route), "
                        f"but carom is attached to {listed} only: carom forwards with "
                        "XDP_TX, which sends a frame out of the interface it came in on, "
                        f"so frames for {real.address} would never reach it; put the real "
                        f"on the segment of {attached[0]}"
                        + (
                            ""
                            if len(attached) == 1
                            else " (or of the interface its VIP's traffic arrives on)"
                        )
                        + f", or run a director on the segment of {ifname}",
                    )
                )
                continue
            first = behind.setdefault(ifname, j)
            if len(behind) > 1 and first == j:
                (other, k), *_ = behind.items()
                problems.append(
                    (
                        loc,
                        f"the real {real.address} is reached through {ifname} but "
                        f"reals[{k}] ({svc.reals[k].address}) through {other}: frames for "
                        f"the vip {svc.vip} arrive on one interface and XDP_TX sends each "
                        "back out of the interface it came in on, so only the reals behind "
                        "that one can be reached; keep each service's reals behind one "
                        "interface (carom is attached to " + listed + ")",
                    )
                )
    return problems


def egress_warnings(config: Config, routes: Routes) -> list[str]:
    """With several interfaces: each service only works for VIP traffic that
    arrives on the interface of its reals. Valid, but worth saying."""
    if len(config.interfaces) < 2:
        return []
    out: list[str] = []
    for svc in config.services:
        behind = {routes.get(r.address) for r in svc.reals if not r.local} - {None}
        if len(behind) == 1:
            (ifname,) = behind
            others = ", ".join(i for i in config.interfaces if i != ifname)
            out.append(
                f"service {svc.display_name}: its reals are behind {ifname}, so its VIP "
                f"traffic must arrive on {ifname}; frames for it arriving on {others} "
                "would leave by that interface and not reach them (XDP_TX)"
            )
    return out


def remote_reals(config: Config) -> list[IPAddress]:
    """Every address of a non-local real, once."""
    return list(
        dict.fromkeys(r.address for svc in config.services for r in svc.reals if not r.local)
    )


def route_interfaces(addresses: Iterable[IPAddress]) -> dict[IPAddress, str | None]:
    """The interface the kernel's route to each address uses (None: no route)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    out: dict[IPAddress, str | None] = {}
    names: dict[int, str | None] = {}
    with IPRoute() as ipr:
        for address in addresses:
            try:
                routes = ipr.route("get", dst=str(address))
            except NetlinkError:
                out[address] = None
                continue
            oif = routes[0].get_attr("RTA_OIF") if routes else None
            if oif is None:
                out[address] = None
                continue
            if oif not in names:
                links = ipr.get_links(oif)
                names[oif] = links[0].get_attr("IFLA_IFNAME") if links else None
            out[address] = names[oif]
    return out
