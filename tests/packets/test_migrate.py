"""Upgrading pinned maps across a layout change, against the real kernel.

Each test compiles bpf/carom.bpf.c a second time with an *older* layout (a
patched copy of the headers in a temp dir), loads and pins that object, fills
its tables (through its own program and directly), then loads the current
object on the same pins and checks that every entry arrived with its real id
and that the current program forwards with them (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether

from carom import abi
from carom.abi import Counter as C
from carom.bpf import libbpf, loader
from carom.bpf.loader import Dataplane
from carom.bpf.maps import sum_percpu
from carom.bpf.migrate import STAGING, MigrationError
from carom.config.limits import Limits
from carom.model.state import State
from tests.harness.testrun import TestRunner
from tests.packets.cases import (
    REALS,
    VIP_PERSIST,
    base_state,
    flow_key,
    maglev_real,
    persist_key,
    tcp4,
)
from tests.packets.oldlayout import (
    build_old,
    older_layout,
    replace_struct,
    set_map_flags,
    struct_members,
)

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(
    max_services=16,  # base_state: a multi-port service has one entry per port
    max_reals=64,
    maglev_table_size=1021,
    conn_table_size=4096,
    persist_table_size=4096,
    max_vips=16,
)
N_PROGRAM, N_RAW, N_PERSIST = 200, 300, 100
# The data plane's clock is read once per jiffy (bpf/clock.h): a timestamp it
# writes may be up to a tick older than a reading taken just before.
TICK_NS = 20_000_000


class OldStruct:
    """Packs and unpacks one struct of the older object, by field name, from its BTF."""

    def __init__(self, dp: Dataplane, name: str) -> None:
        self.size, members = dp.obj.btf().struct_layout(name)
        self.members = {n: (off, size) for n, off, size in members}

    def pack(self, **values: int) -> bytes:
        out = bytearray(self.size)
        for n, v in values.items():
            off, size = self.members[n]
            out[off : off + size] = v.to_bytes(size, "little")
        return bytes(out)

    def get(self, raw: bytes, name: str) -> int:
        off, size = self.members[name]
        return int.from_bytes(raw[off : off + size], "little")


# --- fixtures ---------------------------------------------------------------------
@pytest.fixture
def pin_dir(tmp_path: Path) -> Iterator[str]:
    """A private bpffs (named carom-mig...) for this test's pins."""
    root = tmp_path / "carom-mig-bpffs"
    loader.ensure_bpffs(str(root))
    try:
        yield str(root / "carom-mig")
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(str(root).encode(), 2)  # MNT_DETACH


def load_old(obj: str, pin_dir: str, monkeypatch: pytest.MonkeyPatch) -> Dataplane:
    """The older object, pinned. Its structs differ from abi.py on purpose."""
    with monkeypatch.context() as m:
        m.setattr(loader, "check_abi", lambda *args: None)
        return Dataplane.load(LIMITS, pin_dir, obj_path=obj)


def runner_on(dp: Dataplane) -> TestRunner:
    return TestRunner.on(dp, LIMITS)


def dst_real(frame: bytes) -> int:
    mac = Ether(frame).dst
    return next(rid for rid, (_, m) in REALS.items() if m == mac)


def other_real(want: int, choices: tuple[int, ...] = (1, 2, 3)) -> int:
    return next(r for r in choices if r != want)


def old_counters(dp: Dataplane, names: dict[int, str]) -> dict[str, int]:
    fd = dp.obj.map("stats").fd
    ncpu = libbpf.num_possible_cpus()
    out = {}
    for k, v in libbpf.map_lookup_batch(fd, 4, 8 * ncpu, len(names)):
        idx = int.from_bytes(k, "little")
        out[names[idx]] = sum(struct.unpack(f"<{ncpu}Q", v))
    return out


# --- the upgrade ------------------------------------------------------------------
def test_upgrade_carries_every_flow(
    tmp_path: Path, pin_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = build_old(tmp_path, older_layout)
    state = base_state()
    now = time.monotonic_ns()

    old = load_old(obj, pin_dir, monkeypatch)
    old_names = {
        v: k.removeprefix("CAROM_CNT_")
        for k, v in old.obj.btf().enum_values("carom_counter").items()
        if not k.endswith("__MAX")
    }
    runner_on(old).write_state(
        State(node=state.node, reals=state.reals, services=state.services, if_macs=state.if_macs)
    )
    # Flows scheduled by the old program itself...
    for sport in range(41000, 41000 + N_PROGRAM):
        # two packets: a flow enters conn_table with its second (bpf/sched.h)
        for flags in ("S", "A"):
            verdict, _, _ = runner_on(old).run(tcp4(sport=sport, flags=flags))
            assert verdict == abi.Verdict.TX
    # ...and flows whose real is *not* the one Maglev picks today (a config change
    # drained it, or a peer synced it): only their entry keeps them there.
    conn_fd, persist_fd = old.obj.map("conn_table").fd, old.obj.map("persist_table").fd
    old_conn, old_persist = OldStruct(old, "conn_val"), OldStruct(old, "persist_val")
    assert old_persist.size != ctypes.sizeof(abi.PersistVal)
    pinned: dict[bytes, int] = {}
    for i, sport in enumerate(range(42000, 42000 + N_RAW)):
        key = flow_key(tcp4(sport=sport))
        pinned[key] = other_real(maglev_real(state, 0, key))
        flags = int(abi.ConnFlags.SYNCED) if i % 2 else 0
        libbpf.map_update(
            conn_fd, key, old_conn.pack(real_id=pinned[key], flags=flags, last_seen_ns=now + i)
        )
    # A flow idle for 5 s that the old program sees again after the copy.
    stale = tcp4(sport=44000, flags="A")
    stale_key = flow_key(stale)
    stale_real = other_real(maglev_real(state, 0, stale_key))
    old_value = old_conn.pack(real_id=stale_real, flags=0, last_seen_ns=now - 5 * 10**9)
    libbpf.map_update(conn_fd, stale_key, old_value)
    persisted: dict[str, int] = {}
    for i in range(N_PERSIST):
        client = str(ipaddress.ip_address("198.51.100.0") + 1000 + i)
        key = flow_key(tcp4(dst=VIP_PERSIST, dport=443, src=client))
        persisted[client] = other_real(maglev_real(state, 4, key))
        pkey = persist_key(client, 4)
        value = old_persist.pack(
            old_only=0xDEADBEEF, real_id=persisted[client], last_seen_ns=now + i
        )
        libbpf.map_update(persist_fd, pkey, value)
    ncpu = libbpf.num_possible_cpus()
    old_only = next(k for k, v in old_names.items() if v == "MIG_OLD_ONLY")
    libbpf.map_update(
        old.obj.map("stats").fd,
        old_only.to_bytes(4, "little"),
        struct.pack(f"<{ncpu}Q", *([7] * ncpu)),
    )
    before = {
        k: tuple(old_conn.get(v, n) for n in ("real_id", "flags", "last_seen_ns"))
        for k, v in libbpf.map_lookup_batch(
            conn_fd, ctypes.sizeof(abi.FlowKey), old_conn.size, LIMITS.conn_table_size
        )
    }
    assert len(before) == N_PROGRAM + N_RAW + 1
    old_ids = {n: libbpf.map_info(old.obj.map(n).fd).id for n in ("conn_table", "stats")}
    # Something else pinned in the same directory (another object's map): not ours to drop.
    other = Dataplane.load(LIMITS)
    libbpf.obj_pin(other["stats"].fd, f"{pin_dir}/foreign_stats")
    other.close()

    # The new version starts on the same pins.
    new = Dataplane.load(LIMITS, pin_dir)
    try:
        assert new.adopted and new.migration is not None
        moved = {mv.name for mv in new.migration.moves}
        assert moved == {"conn_table", "persist_table", "stats", "maglev"}, new.migration.describe()
        text = "\n".join(new.migration.describe())
        assert "maglev: flags 0x0 -> 0x400" in text  # BPF_F_MMAPABLE
        # The Maglev rows, copied whole into the memory-mapped array.
        assert new["maglev"].mapped() is not None and old["maglev"].mapped() is None
        entries = LIMITS.max_services * LIMITS.maglev_table_size
        assert new["maglev"].read_range(0, entries) == old["maglev"].read_range(0, entries)
        assert any(new["maglev"].read_range(0, entries))
        assert "mig_old_map: no longer used" in text and "foreign" not in text
        assert "real_id moved" in text and "-old_only" in text and "-CAROM_CNT_MIG_OLD_ONLY" in text

        # Every entry, with its real id, flags and timestamp, in the new layout.
        after = {
            k.to_bytes(): (v.real_id, v.flags, v.last_seen_ns) for k, v in new["conn_table"].items()
        }
        assert after == before
        pv = {k.to_bytes(): v for k, v in new["persist_table"].items()}
        assert len(pv) == N_PERSIST
        for i, (client, rid) in enumerate(persisted.items()):
            got = pv[persist_key(client, 4)]
            assert (got.real_id, got.last_seen_ns, got.reserved) == (rid, now + i, 0)

        # A connection opened on the old program after the copy (the daemon is
        # still applying its config; the old program still runs).
        late = tcp4(sport=43000)
        assert runner_on(old).run(late)[0] == abi.Verdict.TX
        assert runner_on(old).run(tcp4(sport=43000, flags="A"))[0] == abi.Verdict.TX
        late_key = flow_key(late)
        used_at = time.monotonic_ns()
        verdict, out, _ = runner_on(old).run(stale)
        assert verdict == abi.Verdict.TX and dst_real(out) == stale_real
        assert new["conn_table"].lookup(abi.FlowKey.from_bytes(late_key)) is None
        counted_old = old_counters(old, old_names)

        # The new program forwards every pinned flow to the real of its entry.
        run = runner_on(new).run
        for key, rid in pinned.items():
            sport = int.from_bytes(key[32:34], "big")
            verdict, out, _ = run(tcp4(sport=sport, flags="A"))
            assert verdict == abi.Verdict.TX and dst_real(out) == rid
        for client, rid in persisted.items():
            verdict, out, _ = run(tcp4(dst=VIP_PERSIST, dport=443, src=client, sport=50000))
            assert verdict == abi.Verdict.TX and dst_real(out) == rid
        # A new flow on the new program: scheduled by the copied Maglev row.
        fresh = tcp4(sport=45000)
        verdict, out, _ = run(fresh)
        assert verdict == abi.Verdict.TX and dst_real(out) == maglev_real(state, 0, flow_key(fresh))
        counted_new = {c.name: sum(new["stats"].lookup(int(c)) or [0]) for c in C}
        assert counted_new["CONN_HIT"] == N_RAW
        assert counted_new["PERSIST_HIT"] == N_PERSIST

        # Swap done (the daemon attached the new program): finish.
        carried = new.finish_migration()
        assert carried["conn_table"] == 2  # the late connection, the refreshed one
        got = new["conn_table"].lookup(abi.FlowKey.from_bytes(stale_key))
        assert got is not None and got.real_id == stale_real
        assert got.last_seen_ns >= used_at - TICK_NS
        got = new["conn_table"].lookup(abi.FlowKey.from_bytes(late_key))
        assert got is not None and got.real_id == maglev_real(state, 0, late_key)
        for c in C:  # counters carried by name, the dropped one is gone
            want = counted_new[c.name] + counted_old.get(c.name, 0)
            assert sum(new["stats"].lookup(int(c)) or [0]) == want, c.name
        # the old program forwarded each flow's two packets, the late flow's two and
        # the stale flow's one (it does not count rx: user space derives it)
        assert counted_old["TX_DSR"] == 2 * N_PROGRAM + 3
        assert counted_old["MIG_OLD_ONLY"] == 7 * ncpu

        # The pins now name the new maps; nothing half-done is left.
        for name in ("conn_table", "persist_table", "stats", "maglev"):
            fd = libbpf.obj_get(f"{pin_dir}/{name}")
            try:
                assert libbpf.map_info(fd).id == libbpf.map_info(new[name].fd).id
            finally:
                os.close(fd)
        assert not [n for n in Path(pin_dir).iterdir() if n.name.endswith(STAGING)]
        assert not Path(pin_dir, "mig_old_map").exists()
        assert Path(pin_dir, "foreign_stats").exists()
    finally:
        new.close()
    old.close()
    # The old maps die with their last user (freed asynchronously by the kernel).
    deadline = time.monotonic() + 10
    for map_id in old_ids.values():
        while True:
            try:
                os.close(libbpf.map_fd_by_id(map_id))
            except libbpf.BpfError as exc:
                assert exc.errno == errno.ENOENT
                break
            assert time.monotonic() < deadline, f"old map {map_id} still alive"
            time.sleep(0.05)

    # A later restart of the same version adopts the migrated pins as they are.
    again = Dataplane.load(LIMITS, pin_dir)
    try:
        assert again.adopted and again.migration is None
        # persist hits were single packets: a flow enters conn_table with its second
        assert again["conn_table"].count() == N_PROGRAM + N_RAW + 2
        svc = {k.to_bytes(): v.real_id for k, v in again["conn_table"].items()}
        assert all(svc[k] == rid for k, rid in pinned.items())
        assert sum_percpu(again["stats"].lookup(int(C.CONN_HIT))) == N_RAW + 1  # + stale
    finally:
        again.close()


# --- refusals change nothing ----------------------------------------------------------
def narrowed_flags(files: dict[str, str]) -> None:
    """An older conn_val whose `flags` was wider: converting would cut it."""
    h = files["structs.h"]
    members = [
        re.sub(r"__u(16|32) flags;", "__u64 flags;", m) for m in struct_members(h, "conn_val")
    ]
    assert any("__u64 flags;" in m for m in members), "conn_val has no flags member"

    files["structs.h"] = replace_struct(h, "conn_val", "\n".join(members))


def test_unconvertible_layout_is_refused_and_keeps_the_pins(
    tmp_path: Path, pin_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = load_old(build_old(tmp_path, narrowed_flags), pin_dir, monkeypatch)
    try:
        ids = {p.name: libbpf.map_info(old.obj.map(p.name).fd).id for p in Path(pin_dir).iterdir()}
        with pytest.raises(MigrationError, match=r"conn_table: conn_table value\.flags: narrowed"):
            Dataplane.load(LIMITS, pin_dir)
        after = {}
        for p in Path(pin_dir).iterdir():
            fd = libbpf.obj_get(str(p))
            after[p.name] = libbpf.map_info(fd).id
            os.close(fd)
        assert after == ids
    finally:
        old.close()


def test_flag_change_that_is_not_migratable_is_refused(
    tmp_path: Path, pin_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only flags about how the kernel keeps a map move it (MIGRATABLE_FLAGS);
    any other flag change is refused and the pins stay."""

    def read_only_maglev(files: dict[str, str]) -> None:
        files["maps.h"] = set_map_flags(files["maps.h"], "maglev", "BPF_F_RDONLY_PROG")

    old = load_old(build_old(tmp_path, read_only_maglev), pin_dir, monkeypatch)
    try:
        maglev_id = libbpf.map_info(old.obj.map("maglev").fd).id
        with pytest.raises(MigrationError, match=r"maglev: flags 0x80 -> 0x400 \(type or flags"):
            Dataplane.load(LIMITS, pin_dir)
        fd = libbpf.obj_get(f"{pin_dir}/maglev")
        try:
            assert libbpf.map_info(fd).id == maglev_id
        finally:
            os.close(fd)
    finally:
        old.close()


def test_changed_limits_are_refused(pin_dir: str) -> None:
    first = Dataplane.load(LIMITS, pin_dir)
    first.close()
    bigger = LIMITS.model_copy(update={"conn_table_size": 8192})
    with pytest.raises(MigrationError, match="conn_table: max_entries 4096 -> 8192"):
        Dataplane.load(bigger, pin_dir)
    same = Dataplane.load(LIMITS, pin_dir)
    try:
        assert same.adopted and same.migration is None
    finally:
        same.close()
