"""Make this host a DSR real server for some VIPs, check it, and undo it.

Field note 1: a real server carries each VIP on loopback with a host mask, so
its TCP stack accepts the balancer's frames and answers from the VIP, and it
must never answer or announce ARP for the VIP, or it steals the VIP's traffic.

The kernel combines `net.ipv4.conf.all.X` and `net.ipv4.conf.IFACE.X` as
max(all, IFACE) for arp_ignore, arp_announce and rp_filter, so raising `all`
is enough unless an interface holds a *larger* value with a different meaning
(arp_ignore 3..7 and 9+ answer for the VIP; arp_announce 3+ behaves like 0).
Everything below reasons about that effective value.

IPv6 needs no sysctl: Linux answers a neighbour solicitation only for addresses
on the interface it arrived on (or for an active proxy-NDP entry), and the VIP
is on lo. See docs/realserver.md for what was verified.

Pure core: `evaluate()` and `plan_up()` work on a `Snapshot`; `read_snapshot()`,
`up()` and `down()` are the I/O edges (netlink through pyroute2, /proc/sys).

Modules: data.py (the values), evaluate.py (the pure core), system.py (I/O).
"""

from __future__ import annotations

from carom.net.realserver.data import (
    ARP_ANNOUNCE_TARGET,
    ARP_IGNORE_GOOD,
    ARP_IGNORE_TARGET,
    DEFAULT_STATE,
    PROC_SYS,
    RP_FILTER_LOOSE,
    RP_FILTER_STRICT,
    STATE_VERSION,
    Addr,
    Address,
    Conf,
    Effective,
    Finding,
    Interface,
    InterfaceView,
    RealServerError,
    Result,
    Severity,
    Snapshot,
    State,
    Step,
    SysctlChange,
    UpPlan,
    sysctl_key,
)
from carom.net.realserver.evaluate import (
    effective,
    evaluate,
    host_prefixlen,
    interface_views,
    merge_state,
    plan_up,
)
from carom.net.realserver.system import (
    down,
    load_state,
    read_snapshot,
    read_sysctl,
    save_state,
    up,
    write_sysctl,
)

__all__ = [
    "ARP_ANNOUNCE_TARGET",
    "ARP_IGNORE_GOOD",
    "ARP_IGNORE_TARGET",
    "DEFAULT_STATE",
    "PROC_SYS",
    "RP_FILTER_LOOSE",
    "RP_FILTER_STRICT",
    "STATE_VERSION",
    "Addr",
    "Address",
    "Conf",
    "Effective",
    "Finding",
    "Interface",
    "InterfaceView",
    "RealServerError",
    "Result",
    "Severity",
    "Snapshot",
    "State",
    "Step",
    "SysctlChange",
    "UpPlan",
    "down",
    "effective",
    "evaluate",
    "host_prefixlen",
    "interface_views",
    "load_state",
    "merge_state",
    "plan_up",
    "read_snapshot",
    "read_sysctl",
    "save_state",
    "sysctl_key",
    "up",
    "write_sysctl",
]
