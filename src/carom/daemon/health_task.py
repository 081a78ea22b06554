"""Health checks in the daemon: the scheduler over the current config's checks,
and what their states (with manual overrides) make of each real's weight.

Data flows one way (docs/health.md): probe results and overrides are inputs of
`effective(config)`, a map of (service, real) -> Effective that the reconciler
uses in place of configured weights, exactly as it uses the config. A state
change sets an event; the task's loop applies the difference (one incremental
apply for changes that arrive together, only the Maglev rows whose member set
changed are rebuilt and only their changed slots written).

Per service:
- a real whose check is down gets weight 0 (no new flows); with
  `down_flows: reschedule` its established flows are marked to leave it;
- agent checks: `drain` -> weight 0, `NN%` -> that share of the weight;
- `slow_start: S`: a real that comes back into rotation gets 10%, 20% ... of
  its weight, one step every S/10 s (the other reals' weights are scaled by 10
  meanwhile, so a tenth is expressible); only new flows move;
- `min_healthy: N`: with fewer than N reals in rotation the service takes no
  new flows (every real at weight 0, status `held`; the data plane drops new
  flows and counts `drop_no_real`; established flows go on); it takes them
  again when N + 1 are in rotation (or all its reals, if it has only N):
  hysteresis, so one real flapping around the threshold does not flap the
  service."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from carom.abi import PROTOCOLS
from carom.config.schema import Config, Service, addr_key
from carom.daemon import overrides
from carom.daemon.image import Desired, Effective, EffectiveMap, Inputs, SvcIdent, svc_ident
from carom.health.damping import Health, HealthState
from carom.health.plan import IPAddress, ServiceKey, probe_keys
from carom.health.scheduler import HealthScheduler, ProbeStatus
from carom.health.spec import CheckResult, ProbeKey
from carom.health.vip_path import VipPath

log = logging.getLogger("carom.health")

RAMP_STEPS = 10  # slow start: weight raised in tenths
Keys = dict[tuple[ServiceKey, IPAddress], ProbeKey]
# one real of one service: its stable number (see _rows_of), address, configured
# weight and probe (None: unchecked)
Row = tuple[int, IPAddress, int, ProbeKey | None]
# control commands this module answers (daemon/control.py COMMANDS has their arguments)
COMMANDS = ("real-drain", "real-undrain", "real-weight")


def _has_check(svc: Service) -> bool:
    """A check on the service (its reals' default) or on one of its reals."""
    return svc.check is not None or any(r.check is not None for r in svc.reals)


class Host(Protocol):
    """What the task needs of the daemon (daemon/app.py)."""

    lock: asyncio.Lock
    config: Config | None

    async def apply(self, config: Config, old: Config | None) -> tuple[int, Desired]: ...


def overrides_path(socket_path: str, instance: str) -> str:
    """Where manual overrides persist: beside the control socket."""
    return os.path.join(os.path.dirname(socket_path), f"{instance}.overrides.json")


class HealthTask:
    """Runs the checks of the current config and turns them into weights."""

    def __init__(
        self,
        host: Host,
        store: overrides.OverrideStore,
        *,
        scheduler: HealthScheduler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.overrides = store
        self.scheduler = scheduler or HealthScheduler(on_change=self._changed)
        self._clock = clock
        self._dirty = asyncio.Event()
        self._keys_for: tuple[Config | None, Keys] = (None, {})
        self._keys_vp: VipPath | None = None  # the VIP path _keys_for was made with
        self._vip_path: VipPath | None = None
        self._rows_for: tuple[Config | None, list[tuple[Service, list[Row], bool]]] = (None, [])
        # (vip, protocol, port, real) as ints and a str -> n
        self._pair_ids: dict[tuple[int, str, int, int], int] = {}
        self._next_pair = 0  # numbers are never reused (the bookkeeping below is by number)
        # rows of each service by Service object, their pairs' numbers and
        # whether the service has no check (then they are reused: see _rows_of)
        self._svc_rows: dict[int, tuple[Service, list[Row], dict[Any, int], bool]] = {}
        # per (service, real) number:
        self._out: set[int] = set()  # not in rotation last time
        self._ramp: dict[int, tuple[float, float]] = {}  # slow start: start, span
        self._shown: dict[int, str] = {}  # last logged state
        self._held: set[ServiceKey] = set()  # below min_healthy
        # effective()'s last call: rows it gave to _configured() (by id), and
        # its config (_held has no other config's services)
        self._as_configured: dict[int, list[Row]] = {}
        self._held_for: Config | None = None
        self._gone: set[int] = set()  # numbers of pairs that left (_rows_of)
        # per Service object: whether it has a check (see _checked)
        self._has_check: dict[int, tuple[Service, bool]] = {}
        self._checked_for: tuple[Config | None, Config | None] = (None, None)
        self.applies = 0  # applies made for health or override changes

    # --- probes ----------------------------------------------------------------
    def _checked(self, config: Config) -> Config:
        """`config` with only its services that have a check: what probe_keys()
        and vip_routes() look at (walking 32k reals to find none at every
        reload costs ms); per Service object, whether it has one is kept."""
        cached_for, checked = self._checked_for
        if cached_for is config and checked is not None:
            return checked
        before, self._has_check = self._has_check, {}
        out = []
        for svc in config.services:
            hit = before.get(id(svc))
            if hit is None or hit[0] is not svc:
                hit = (svc, _has_check(svc))
            self._has_check[id(svc)] = hit
            if hit[1]:
                out.append(svc)
        checked = config.model_copy(update={"services": tuple(out)})
        self._checked_for = (config, checked)
        return checked

    def keys_of(self, config: Config) -> Keys:
        """The probe of every checked (service, real); cached per config object.
        Probes with via: vip go to the VIP: through the probe namespace for a
        remote real, through this node's own stack for a local one."""
        cached_for, keys = self._keys_for
        if cached_for is config:
            return keys
        vp = self._vip_path
        keys = probe_keys(self._checked(config), via_of=vp.via if vp is not None else None)
        self._keys_for, self._keys_vp = (config, keys), vp
        return keys

    async def plan(self, config: Config) -> None:
        """Probe what `config` asks for (at start and after every reload); the
        state of probes that stay is kept, so a reload never flaps a real."""
        try:
            await self._sync_vip_path(config)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            # the checks still run; those through the VIP path fail (a real is
            # never probed the wrong way), and the log says why
            log.error(
                "the probe namespace for via: vip checks cannot be set up; those "
                "checks fail until it can (health.probe_source, health.probe_interface)",
                extra={"error": str(exc)},
            )
        if self._keys_for[0] is config and self._keys_vp is not self._vip_path:
            # the probe keys depend on the VIP path: made again for it
            self._keys_for = (None, {})
            self._rows_for = (None, [])
        # per config object, usually made already by the apply (inputs()); 32k
        # reals take tens of ms to hash: in a thread
        keys = await asyncio.to_thread(self.keys_of, config)
        self.scheduler.update(set(keys.values()))
        self._dirty.set()  # a probe that is gone may have held a real down

    async def _sync_vip_path(self, config: Config) -> None:
        routes = vip_routes(await asyncio.to_thread(self._checked, config))
        if not routes and self._vip_path is None:
            return
        source, source6 = config.health.probe_source, config.health.probe_source6
        if not routes or (source is None and source6 is None):
            vp, self._vip_path = self._vip_path, None
            if vp is not None:
                await asyncio.to_thread(vp.down)
            return
        parent = config.health.probe_interface or config.interfaces[0]
        vp = self._vip_path
        if vp is None or (vp.parent, vp.source, vp.source6) != (parent, source, source6):
            if vp is not None:
                await asyncio.to_thread(vp.down)
            vp = VipPath(config.instance, parent, source, source6)
            self._vip_path = None
            await asyncio.to_thread(vp.up)
            self._vip_path = vp  # from now on close() removes it
            log.info(
                "probe namespace for via: vip checks is up",
                extra={
                    "netns": vp.netns,
                    "parent": parent,
                    "source": ", ".join(str(a) for a in (source, source6) if a is not None),
                },
            )
        await asyncio.to_thread(vp.sync, routes)
        self._vip_path = vp

    def _changed(
        self, key: ProbeKey, old: HealthState, new: HealthState, result: CheckResult
    ) -> None:
        self._dirty.set()

    # --- weights ---------------------------------------------------------------
    def _rows_of(self, config: Config) -> list[tuple[Service, list[Row], bool]]:
        """Per service, its reals with their probes, a number per (service,
        real) that stays across reloads, and whether any real is checked:
        effective() runs for every change, and hashing addresses is most of its
        cost, so it is done once per config (with int keys: an ipaddress object
        hashes through hex())."""
        cached_for, rows = self._rows_for
        if cached_for is config:
            return rows
        keys = self.keys_of(config)
        ids = self._pair_ids  # in place: the pairs no service has any more go below
        made: set[tuple[int, str, int, int]] = set()  # pairs of the rows made here
        rows = []
        # A reload parses only changed services (config/incremental.py): the
        # others are the same objects, and without checks their rows are too
        # (probe_keys() gives such a service no probe, whatever the VIP path).
        before, self._svc_rows = self._svc_rows, {}
        for svc in config.services:
            hit = before.get(id(svc))
            if hit is not None and hit[0] is svc and hit[3]:
                rows.append((svc, hit[1], False))
                self._svc_rows[id(svc)] = hit
                continue
            skey = svc.key
            mine_ids: dict[tuple[int, str, int, int], int] = {}
            fast = (addr_key(svc.vip), svc.protocol, svc.port_number)  # ints hash fast
            mine: list[Row] = []
            checked = False
            for r in svc.reals:
                pair = (*fast, addr_key(r.address))
                n = ids.get(pair)
                if n is None:
                    n = self._next_pair
                    self._next_pair += 1
                mine_ids[pair] = n
                key = keys.get((skey, r.address)) if keys else None
                checked = checked or key is not None
                mine.append((n, r.address, r.weight, key))
            ids.update(mine_ids)
            made.update(mine_ids)
            rows.append((svc, mine, checked))
            unchecked = not _has_check(svc)
            self._svc_rows[id(svc)] = (svc, mine, mine_ids, unchecked)
        # Services that left (or whose rows were made again): their pairs that
        # no service of this config has lose their number and bookkeeping. An
        # unchanged service shares no pair with them (one key per service).
        for k, entry in before.items():
            if self._svc_rows.get(k) is not entry:
                for pair, n in entry[2].items():
                    if pair not in made:
                        del ids[pair]
                        self._gone.add(n)
        self._rows_for = (config, rows)
        return rows

    async def inputs(self, config: Config) -> Inputs:
        """The reconciler's health inputs for `config`: the effective weights,
        the reals down per service (out of the Maglev row; their established
        flows move unless the service says `down_flows: keep`). The per-config
        work (probe keys, rows) is done in a thread first: for a big config it
        would hold the event loop, and so would effective() itself (~100 ms at
        32k reals): it runs in a thread too, under the daemon's lock (the only
        writer of its bookkeeping); what it reads of the loop's state (probe
        states, overrides) are single dict lookups."""
        effective = await asyncio.to_thread(self.effective, config)
        down: dict[SvcIdent, set[IPAddress]] = {}
        for (skey, address), eff in effective.items():
            if eff.state == "down":
                vip, protocol, port = skey  # Service.key; the maps' key: svc_ident()
                down.setdefault((vip, PROTOCOLS[protocol], port), set()).add(address)
        keep = {svc_ident(svc) for svc in config.services if svc.down_flows == "keep"}
        return Inputs(health=effective, down=down, keep_flows=frozenset(keep))

    def effective(self, config: Config) -> EffectiveMap:
        """Every (service, real) whose weight or state is not the configured one.
        Runs before an apply (in a thread, under the daemon's lock); remembers
        what it returned (for slow start, min_healthy hysteresis and the change
        log)."""
        now = self._clock()
        out: EffectiveMap = {}
        overridden = bool(self.overrides)
        # rows _configured() handled in the previous call: if they are handled so
        # again, the bookkeeping already says what it would write (effective() is
        # its only writer, and one config's rows share no number)
        before, self._as_configured = self._as_configured, {}
        for svc, mine, checked in self._rows_of(config):
            if not (checked or overridden or svc.min_healthy or svc.slow_start):
                if before.get(id(mine)) is not mine:
                    self._configured(svc, mine)
                self._as_configured[id(mine)] = mine
                continue
            rows = [self._one(svc, address, w, key) for _, address, w, key in mine]
            self._min_healthy(svc, rows)
            self._slow_start(svc, mine, rows, now)
            for (k, address, weight, _), eff in zip(mine, rows, strict=True):
                if eff.weight == 0:
                    self._out.add(k)
                else:
                    self._out.discard(k)
                if self._shown.get(k, "up") != eff.state:
                    log.info(
                        "%s %s: %s -> %s: %s",
                        svc.display_name,
                        address,
                        self._shown.get(k, "up"),
                        eff.state,
                        eff.detail,
                        extra={"service": svc.display_name, "real": str(address)},
                    )
                self._shown[k] = eff.state
                if eff.state != "up" or eff.weight != weight:
                    out[(svc.key, address)] = eff
        # (service, real) pairs that left the config: their bookkeeping goes
        gone, self._gone = self._gone, set()
        for k in gone:
            self._shown.pop(k, None)
            self._out.discard(k)
            self._ramp.pop(k, None)
        if self._held and self._held_for is not config:
            self._held &= {svc.key for svc in config.services}
        self._held_for = config
        return out

    def _configured(self, svc: Service, mine: list[Row]) -> None:
        """effective()'s bookkeeping for a service that only its config decides
        (no checks, overrides, min_healthy or slow start): every real is up at
        its configured weight, as _one() would say, without an Effective each
        (32k reals: ~25 ms less per apply)."""
        self._held.discard(svc.key)
        shown, outs, ramp = self._shown, self._out, self._ramp
        for k, address, weight, _ in mine:
            if weight:
                outs.discard(k)
            else:
                outs.add(k)
            was = shown.get(k, "up")
            if was != "up":
                log.info(
                    "%s %s: %s -> up: ",
                    svc.display_name,
                    address,
                    was,
                    extra={"service": svc.display_name, "real": str(address)},
                )
            shown[k] = "up"
            if ramp:
                ramp.pop(k, None)

    def _one(
        self, svc: Service, address: IPAddress, weight: int, key: ProbeKey | None
    ) -> Effective:
        ov = self.overrides.for_real(address, svc.display_name) if self.overrides else None
        base = ov.weight if ov is not None and ov.weight is not None else weight
        st = self.scheduler.status(key) if key is not None else None
        last = st.last if st is not None else None
        if ov is not None and ov.drain:
            return Effective(0, "drained", ov.describe())
        if st is not None and st.state.health is Health.DOWN:
            held = " (held down: flapping)" if st.state.suppressed else ""
            reason = last.reason if last is not None else "no result"
            return Effective(
                0, "down", f"down after: {reason}{held}", reschedule=svc.down_flows == "reschedule"
            )
        if last is not None and last.drain:
            return Effective(0, "drained", f"check: {last.reason}")
        if last is not None and last.weight_percent is not None:
            pct = last.weight_percent
            w = base * pct // 100
            if pct > 0 and base > 0:
                w = max(1, w)
            return Effective(w, "up" if w else "drained", f"check: {last.reason}")
        if ov is not None and ov.weight is not None:
            return Effective(base, "up" if base else "drained", ov.describe())
        return Effective(weight, "up", "")

    def _min_healthy(self, svc: Service, rows: list[Effective]) -> None:
        if not svc.min_healthy:
            self._held.discard(svc.key)
            return
        usable = sum(1 for e in rows if e.weight > 0)
        held = svc.key in self._held
        release_at = min(svc.min_healthy + 1, len(rows))
        if not held and usable < svc.min_healthy:
            held = True
            self._held.add(svc.key)
            log.warning(
                "%s: %d reals in rotation, fewer than min_healthy %d: the service takes "
                "no new flows until %d are",
                svc.display_name,
                usable,
                svc.min_healthy,
                release_at,
                extra={"service": svc.display_name},
            )
        elif held and usable >= release_at:
            held = False
            self._held.discard(svc.key)
            log.warning(
                "%s: %d reals in rotation again (min_healthy %d): taking new flows",
                svc.display_name,
                usable,
                svc.min_healthy,
                extra={"service": svc.display_name},
            )
        if held:
            why = f"service held: {usable} in rotation, min_healthy {svc.min_healthy}"
            for i, e in enumerate(rows):
                if e.weight > 0:
                    rows[i] = Effective(0, "held", why)

    def _slow_start(self, svc: Service, mine: list[Row], rows: list[Effective], now: float) -> None:
        span = float(svc.slow_start)
        ramping: dict[int, int] = {}  # row -> step (1..RAMP_STEPS)
        for i, ((k, _, _, _), e) in enumerate(zip(mine, rows, strict=True)):
            if e.weight == 0 or span <= 0:
                self._ramp.pop(k, None)
                continue
            if k in self._out and k in self._shown:  # back into rotation: ramp
                self._ramp[k] = (now, span)
            start = self._ramp.get(k)
            if start is None:
                continue
            step = 1 + math.floor((now - start[0]) / span * RAMP_STEPS)
            if step >= RAMP_STEPS:
                del self._ramp[k]
                continue
            ramping[i] = step
        if not ramping:
            return
        for i, e in enumerate(rows):
            if e.weight == 0:
                continue
            got = ramping.get(i)
            if got is None:
                rows[i] = Effective(e.weight * RAMP_STEPS, e.state, e.detail, e.reschedule)
            else:
                step = got
                rest = span * (1 - step / RAMP_STEPS)
                rows[i] = Effective(
                    e.weight * step,
                    "slow-start",
                    f"{step * 100 // RAMP_STEPS}% of its weight, all of it in {rest:.0f} s",
                )

    def _next_step(self) -> float | None:
        """Seconds until the next slow-start step of any real."""
        if not self._ramp:
            return None
        now = self._clock()
        waits = []
        for start, span in list(self._ramp.values()):  # effective() runs in a thread
            done = (now - start) / span * RAMP_STEPS
            nxt = start + span * (math.floor(done) + 1) / RAMP_STEPS
            waits.append(max(0.0, nxt - now))
        return min(waits) + 0.01

    # --- the task --------------------------------------------------------------
    async def run(self) -> None:
        """Apply health and override changes as they come, and slow-start steps
        on time. A failed apply is logged and retried at the next change."""
        while True:
            wait = self._next_step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), wait)
            self._dirty.clear()
            await self.apply_now()

    async def apply_now(self) -> bool:
        async with self.host.lock:
            config = self.host.config
            if config is None:
                return False
            try:
                await self.host.apply(config, config)
            except Exception as exc:
                log.error("applying a health change failed", extra={"error": str(exc)})
                return False
        self.applies += 1
        return True

    async def close(self) -> None:
        await self.scheduler.close()
        vp, self._vip_path = self._vip_path, None
        if vp is not None:
            try:
                await asyncio.to_thread(vp.down)
            except (OSError, RuntimeError) as exc:
                log.warning("probe namespace left behind", extra={"error": str(exc)})

    # --- control requests --------------------------------------------------------
    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """real-drain, real-undrain, real-weight: the override, then an apply, so
        the reply comes once the data plane has it."""
        config = self.host.config
        assert config is not None
        cmd, address, service = req["command"], req["address"], req.get("service")
        if cmd == "real-drain":
            reply = overrides.drain(self.overrides, config, address, service)
        elif cmd == "real-undrain":
            reply = overrides.undrain(self.overrides, config, address, service)
        else:
            reply = overrides.set_weight(self.overrides, config, address, req["weight"], service)
        reply["applied"] = await self.apply_now()
        return reply

    # --- status ------------------------------------------------------------------
    def annotate(self, config: Config, status: dict[str, Any]) -> None:
        """Add each real's health, configured weight and override to a status
        reply's services. Runs in a worker thread (at 32k reals it takes
        ~100 ms, too long for the event loop): what it reads of the loop's state
        are single dict lookups and set memberships."""
        keys = self.keys_of(config)
        by_name = {svc.display_name: svc for svc in config.services}
        wall = time.time() - self._clock()
        for s in status.get("services", []):
            svc = by_name.get(s["name"])
            if svc is None:
                continue
            weights = {str(r.address): r.weight for r in svc.reals}
            s["min_healthy"] = svc.min_healthy
            s["held"] = svc.key in self._held
            for r in s["reals"]:
                address = ipaddress.ip_address(r["address"])
                r["config_weight"] = weights.get(r["address"])
                key = keys.get((svc.key, address))
                st = self.scheduler.status(key) if key is not None else None
                r["health"] = health_view(key, st, wall) if key is not None else None
                ov = self.overrides.for_real(address, svc.display_name) if self.overrides else None
                r["override"] = asdict(ov) if ov is not None else None

    def summary(self, config: Config) -> dict[str, Any]:
        """The status reply's top-level health parts (overrides in force, probe
        count). On the event loop: it walks the override store."""
        vp = self._vip_path
        return {
            "overrides": overrides.listing(self.overrides, config),
            "health": {"probes": self.scheduler.running, "probe_netns": vp and vp.netns},
        }


def health_view(key: ProbeKey, st: ProbeStatus | None, wall_offset: float) -> dict[str, Any]:
    """One probe's state as `carom status` shows it."""
    via = "vip" if key.target.via is not None or key.target.address != key.target.real else "real"
    view: dict[str, Any] = {"check": f"{key.check.kind} :{key.target.port} via {via}"}
    if st is None:
        return {**view, "state": "unknown"}
    state = st.state
    view.update(
        state=state.health.value,
        held=state.suppressed,
        flaps=state.flaps,
        since=round(state.changed_at + wall_offset, 3) if state.changed_at else None,
        probes=st.probes,
        failures=st.failures,
    )
    if st.last is not None:
        view.update(
            ok=st.last.ok,
            last=st.last.reason,
            latency_ms=round(st.last.elapsed * 1000, 2),
        )
    return view


def vip_routes(config: Config) -> dict[IPAddress, frozenset[IPAddress]]:
    """Remote reals probed through the VIP path, and the VIPs probed through each."""
    routes: dict[IPAddress, set[IPAddress]] = {}
    for svc in config.services:
        for r in svc.reals:
            check = r.check if r.check is not None else svc.check
            if check is not None and check.via == "vip" and not r.local:
                routes.setdefault(r.address, set()).add(svc.vip)
    return {real: frozenset(vips) for real, vips in routes.items()}
