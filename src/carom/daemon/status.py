"""What `carom status` shows, kept apart from the daemon's control flow (the
event loop's own health is in looplag.py)."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from carom import abi
from carom.bpf.loader import Dataplane
from carom.bpf.maps import sum_percpu
from carom.config.schema import Config
from carom.daemon.image import svc_ident
from carom.daemon.reconcile import Reconciler


def expected_fingerprints(rec: Reconciler) -> dict[int, str]:
    last = rec.last
    if last is None:
        return {}
    return {int(last.image.services[i].id): fp for i, fp in last.fingerprints.items()}


def build_status(cfg: Config, dp: Dataplane, rec: Reconciler) -> dict[str, Any]:
    """Services, reals, draining reals and counters. Runs in a worker thread."""
    last = rec.last
    current = rec.current
    svc_stats = {i: sum_percpu(v) for i, v in dp["svc_stats"].items()}
    real_stats = {i: sum_percpu(v) for i, v in dp["real_stats"].items()}
    totals = abi.with_rx(
        {abi.Counter(i): sum(v) for i, v in dp["stats"].items() if i < abi.COUNTER_MAX}
    )
    counters = {c.name.lower(): totals.get(c, 0) for c in abi.Counter}
    services = []
    for svc in cfg.services:
        ident = svc_ident(svc)
        info = current.services.get(ident)
        sid = int(info.id) if info is not None else -1
        st = svc_stats.get(sid)
        reals = []
        for rv in last.service_views.get(ident, []) if last else []:
            rs = real_stats.get(rv.real_id)
            reals.append(
                {
                    **rv.__dict__,
                    "packets": rs.packets if rs else 0,
                    "bytes": rs.bytes if rs else 0,
                    "new_flows": rs.new_flows if rs else 0,
                    "conn_hits": rs.conn_hits if rs else 0,
                }
            )
        services.append(
            {
                "name": svc.display_name,
                "vip": str(svc.vip),
                "protocol": svc.protocol,
                "port": svc.port_number or "all",
                "ports": svc.ports_text,  # "80", "all", or "25,143,5222-5223"
                "id": sid,
                "persistence_timeout": svc.persistence_timeout,
                "fingerprint": last.fingerprints.get(ident) if last else None,
                "packets": st.packets if st else 0,
                "bytes": st.bytes if st else 0,
                "new_flows": st.new_flows if st else 0,  # Maglev or persistence chose a real
                "conn_hits": st.conn_hits if st else 0,  # a conn_table entry was followed
                "reals": reals,
            }
        )
    draining = []
    real_ids = last.real_ids if last else rec.real_ids
    for address in last.draining if last else []:
        rid = real_ids.get(ipaddress.ip_address(address))
        rs = real_stats.get(rid) if rid else None
        draining.append({"address": address, "real_id": rid, "packets": rs.packets if rs else 0})
    conns = dp["conn_table"].count() if dp.limits.conn_table_size <= 1 << 18 else None
    return {
        "adopted": dp.adopted,
        "interfaces": [{"name": a.ifname, "mode": a.mode} for a in dp.attachments.values()],
        "maglev_size": dp.limits.maglev_table_size,
        "services": services,
        "draining": draining,
        "counters": counters,
        "connections": conns,
        "map_writes_total": rec.writes_total,
        "maglev_tables": {
            "distinct": len(rec.tables),
            "built_last_apply": last.built if last else 0,
        },
        "time": time.time(),
    }
