"""How `carom status` shows the cluster (shared by `status` and `cluster status`)."""

from __future__ import annotations

from typing import Any


def render_cluster(c: dict[str, Any]) -> list[str]:
    """The cluster part of `carom status`."""
    sync, bulk = c["sync"], c["bulk"]
    agree = "agree" if c["fingerprints_agree"] else "DIFFER (not ready: compare the configs)"
    lines = [
        f"cluster: node {c['node']} role {c['role']}"
        f"{' (preempts)' if c['preempt'] else ''}  tables {c['fingerprint'][:12]} {agree}",
    ]
    for p in c["peers"]:
        seen = f"{p['last_seen_ms']} ms ago" if p["last_seen_ms"] is not None else "never heard"
        lines.append(
            f"  peer {p['name']:<12} {'alive' if p['alive'] else 'DEAD':<5} "
            f"role {p['role'] or '-':<8} ready {p['ready']}  last heartbeat {seen}"
        )
    lines.append(
        f"  sync ({sync['source']}): sent {sync['sent_records']} records in "
        f"{sync['sent_datagrams']} datagrams, received {sync['received_records']}, "
        f"gaps {sync['gaps']}, rejected {sync['rejected']}, unknown real {sync['unknown_real']}, "
        f"batching <= {sync['batch_delay_ms']:g} ms"
    )
    total = f"/{bulk['records']}" if bulk["state"] == "done" else ""
    lines.append(
        f"  bulk resync: {bulk['state']}{' from ' + bulk['peer'] if bulk['peer'] else ''} "
        f"{bulk['applied']}{total} entries applied, {bulk['skipped_newer']} superseded by the "
        f"stream, {bulk['seconds']} s; snapshots served {bulk['served']}"
        + (f"; error {bulk['error']}" if bulk["error"] else "")
    )
    lines += render_view(c.get("health_view"))
    for t in c["transitions"][-3:]:
        ago = f" ({t['ago_ms'] / 1000:.1f} s ago)" if t.get("ago_ms") is not None else ""
        lines.append(f"  {t['from']} -> {t['to']}: {t['reason']}{ago}")
    return lines


def render_view(v: dict[str, Any] | None) -> list[str]:
    """Whose health view the tables follow, and where this node's own checks
    disagree with it."""
    if not v:
        return []
    ago = f", received {v['received_ms_ago']} ms ago" if v["received_ms_ago"] is not None else ""
    if v["tables_from"] == "own checks":
        pub = (
            f"; publishes generation {v['published_generation']} "
            f"({v['published_entries']} reals off their configured weight)"
            if v["published_generation"] is not None
            else ""
        )
        lines = [f"  health view: tables from this node's own checks{pub}"]
    else:
        how = "inherited at takeover, own checks soon" if "inherited" in v["tables_from"] else ""
        lines = [
            f"  health view: tables follow {v['peer']}'s ({v['entries']} reals off their "
            f"configured weight{ago}{'; ' + how if how else ''}); local checks for status only"
        ]
    if v["unknown"]:
        lines.append(f"    {v['unknown']} entries name services or reals this config lacks")
    for d in v["disagree"]:
        lines.append(
            f"    local check: {d['service']} {d['real']} {d['local']}, "
            f"tables follow the active: {d['tables']}"
        )
    return lines
