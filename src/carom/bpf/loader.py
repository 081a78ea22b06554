"""Loading the data plane: open the object, check its ABI, size and pin its maps,
load it, attach it to interfaces. A loader that finds pinned maps of the same
instance adopts them, so a restarted daemon continues with the connection table
and counters of the old one while traffic keeps flowing. Pins of an older
layout are carried over by carom.bpf.migrate (the load copies, the caller ends
the move with finish_migration() once the new program is attached)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from carom import abi
from carom.bpf import libbpf
from carom.bpf.btfcheck import check_abi
from carom.bpf.maps import TypedMap
from carom.bpf.migrate import Migration, plan
from carom.config.limits import Limits as Limits  # the one model; re-exported for callers of load()

log = logging.getLogger("carom.loader")

PROGRAM = "carom_xdp"
BPF_FS_MAGIC = 0xCAFE4A11
OBJ_DIR = Path(__file__).parent / "obj"


def object_path(name: str = "carom.bpf.o") -> str:
    path = OBJ_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build the data plane with `make bpf`")
    return str(path)


def _is_bpffs(path: str) -> bool:
    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]

    buf = Statfs()
    if _libc.statfs(path.encode(), ctypes.byref(buf)) != 0:
        return False
    return bool((buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC)


_libc = ctypes.CDLL(None, use_errno=True)


def ensure_bpffs(root: str) -> None:
    """Make sure `root` is on a bpffs, mounting one there if needed.

    `ip netns exec` gives a process a fresh /sys without /sys/fs/bpf mounted;
    mounting here keeps the daemon working wherever it is started."""
    os.makedirs(root, exist_ok=True)
    if _is_bpffs(root):
        return
    if _libc.mount(b"bpf", root.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount bpffs at {root}: {os.strerror(err)}")
    log.info("mounted bpffs at %s", root)


def prog_name_of(prog_id: int) -> str:
    """The name of a loaded program (to tell carom's program from someone else's)."""
    fd = libbpf.prog_fd_by_id(prog_id)
    try:
        info = ctypes.create_string_buffer(256)
        n = ctypes.c_uint32(len(info))
        fn = libbpf._lib.bpf_obj_get_info_by_fd
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        if fn(fd, info, ctypes.byref(n)) != 0:
            return ""
        return info.raw[64:80].split(b"\0", 1)[0].decode()  # bpf_prog_info.name
    finally:
        os.close(fd)


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    mode: str  # "native" or "generic"


@dataclass
class Dataplane:
    """A loaded carom program with its maps (pinned or private)."""

    obj: libbpf.BpfObject
    limits: Limits
    pin_dir: str | None
    adopted: bool  # maps came from a previous instance's pins
    maps: dict[str, TypedMap] = field(default_factory=dict)
    # ring buffers (abi.RINGBUFS) by name: (fd, size in bytes); read with bpf.ringbuf
    rings: dict[str, tuple[int, int]] = field(default_factory=dict)
    attachments: dict[str, Attachment] = field(default_factory=dict)
    # Pins of an older layout being carried over; finish_migration() ends it.
    migration: Migration | None = None

    @classmethod
    def load(
        cls, limits: Limits | None = None, pin_dir: str | None = None, obj_path: str | None = None
    ) -> Dataplane:
        limits = limits or Limits()
        obj = libbpf.BpfObject(obj_path or object_path())
        migration: Migration | None = None
        try:
            check_abi(obj.btf(), obj.maps())
            sizes = limits.map_entries()
            adopted = False
            if pin_dir:
                os.makedirs(pin_dir, exist_ok=True)
            for m in obj.maps():
                if m.name in sizes:
                    m.set_max_entries(sizes[m.name])
                if pin_dir:
                    path = os.path.join(pin_dir, m.name)
                    adopted = adopted or os.path.exists(path)
                    m.set_pin_path(path)
            migration = plan(obj, pin_dir, sizes) if pin_dir and adopted else None
            if migration is not None:
                log.warning(
                    "pinned maps have an older layout; carrying them over",
                    extra={"maps": "; ".join(migration.describe())},
                )
            try:
                obj.load()
            except libbpf.BpfError as exc:
                if any("couldn't reuse pinned map" in line for line in obj.log):
                    raise libbpf.BpfError(
                        errno.EEXIST,
                        f"the maps pinned in {pin_dir} do not match this object in a way the "
                        "layout migration did not detect (see the libbpf messages above); "
                        "`carom stop --detach` first removes them, which interrupts traffic",
                    ) from exc
                raise
            dp = cls(obj=obj, limits=limits, pin_dir=pin_dir, adopted=adopted)
            for m in obj.maps():
                if m.name in abi.RINGBUFS:
                    dp.rings[m.name] = (m.fd, m.max_entries)
                if m.name not in abi.MAPS or m.name.startswith("."):
                    continue
                key, value = abi.MAPS[m.name]
                dp.maps[m.name] = TypedMap(m.name, m.fd, m.map_type, m.max_entries, key, value)
            if migration is not None:
                copied = migration.copy({m.name: m.fd for m in obj.maps()})
                log.info("copied entries into the new maps", extra={"entries": _kv(copied)})
                dp.migration = migration
            return dp
        except BaseException:
            if migration is not None:
                migration.close()
            obj.close()
            raise

    def finish_migration(self) -> dict[str, int]:
        """After the new program replaced the old one everywhere: carry the last
        entries and the counters, and pin the new maps in place of the old.

        A no-op when nothing was migrated. Until it runs the old pins stay, so a
        daemon that dies before this point migrates again from them at its next
        start."""
        if self.migration is None:
            return {}
        carried = self.migration.finish()
        self.migration = None
        log.info(
            "layout migration finished: new maps pinned, old ones dropped",
            extra={"carried": _kv(carried)},
        )
        return carried

    @property
    def prog_fd(self) -> int:
        return self.obj.program_fd(PROGRAM)

    def __getitem__(self, name: str) -> TypedMap:
        return self.maps[name]

    def map_fd(self, name: str) -> int:
        """The fd of any map by name, ring buffers included."""
        return self.rings[name][0] if name in self.rings else self.maps[name].fd

    def map_size(self, name: str) -> int:
        """max_entries of any map by name (a ring buffer's: its bytes)."""
        return self.rings[name][1] if name in self.rings else self.maps[name].max_entries

    def attach(self, ifname: str, mode: str = "auto") -> Attachment:
        """Attach to an interface, atomically replacing an older carom program.

        Refuses to replace another tool's XDP program."""
        ifindex = socket.if_nametoindex(ifname)
        existing = current_xdp(ifindex)
        for emode, prog_id in existing.items():
            name = prog_name_of(prog_id)
            if name != PROGRAM:
                raise libbpf.BpfError(
                    errno.EBUSY,
                    f"{ifname} already runs XDP program '{name}' (id {prog_id}) in {emode} "
                    "mode; carom will not replace another tool's program",
                )
        wanted = {"native": ["native"], "generic": ["generic"], "auto": ["native", "generic"]}
        if mode not in wanted:
            raise ValueError(f"unknown XDP mode {mode!r}")
        order = wanted[mode]
        if existing:  # keep the mode the running program has: replacing is atomic
            order = [m for m in existing if m in order] or order
        last: Exception | None = None
        for m in order:
            flags = libbpf.XDP_FLAGS_DRV_MODE if m == "native" else libbpf.XDP_FLAGS_SKB_MODE
            old_fd = libbpf.prog_fd_by_id(existing[m]) if m in existing else None
            try:
                libbpf.xdp_attach(ifindex, self.prog_fd, flags, old_prog_fd=old_fd)
            except libbpf.BpfError as exc:
                last = exc
                if mode == "auto" and m == "native":
                    log.warning(
                        "native XDP failed on %s (%s); falling back to generic mode, "
                        "which is much slower",
                        ifname,
                        exc.strerror,
                    )
                continue
            finally:
                if old_fd is not None:
                    os.close(old_fd)
            self.write_if_mac(ifname)
            att = Attachment(ifname, ifindex, m)
            self.attachments[ifname] = att
            log.info("XDP attached to %s in %s mode", ifname, m)
            return att
        assert last is not None
        raise last

    def write_if_mac(self, ifname: str) -> bytes:
        """Record the interface's own MAC in `if_macs` (keyed by ifindex).

        The program answers ARP/NDP for the VIPs from this MAC and forwards only
        frames addressed to it; without the entry it passes everything on that
        interface (pass_no_if_mac). attach() calls this; call it again when an
        interface's MAC changes."""
        mac = interface_mac(ifname)
        ifindex = socket.if_nametoindex(ifname)
        slots = self.maps["if_macs"].max_entries
        if ifindex >= slots:
            raise ValueError(
                f"{ifname} has ifindex {ifindex}; carom's if_macs map holds ifindex "
                f"0..{slots - 1} (CAROM_MAX_IFINDEX in bpf/consts.h)"
            )
        self.maps["if_macs"].update(ifindex, abi.IfMac.of(mac))
        return mac

    def close(self) -> None:
        """Release our file descriptors; attached programs and pins stay."""
        if self.migration is not None:
            self.migration.close()
        for m in self.maps.values():
            m.unmap()
        self.obj.close()


SIOCGIFHWADDR = 0x8927


def interface_mac(ifname: str) -> bytes:
    """An interface's MAC address, asked of the kernel in this network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("256s", ifname.encode()[:15])
        res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
    return res[18:24]


def _kv(counts: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in counts.items())


def current_xdp(ifindex: int) -> dict[str, int]:
    """XDP programs attached to an interface, by mode."""
    out = {}
    for mode, flags in (
        ("native", libbpf.XDP_FLAGS_DRV_MODE),
        ("generic", libbpf.XDP_FLAGS_SKB_MODE),
    ):
        prog_id = libbpf.xdp_query_id(ifindex, flags)
        if prog_id:
            out[mode] = prog_id
    return out


def detach(ifname: str) -> bool:
    """Detach carom's program from an interface; returns whether one was there."""
    ifindex = socket.if_nametoindex(ifname)
    found = False
    for mode, prog_id in current_xdp(ifindex).items():
        if prog_name_of(prog_id) != PROGRAM:
            log.warning("%s runs a foreign XDP program (id %d); leaving it", ifname, prog_id)
            continue
        flags = libbpf.XDP_FLAGS_DRV_MODE if mode == "native" else libbpf.XDP_FLAGS_SKB_MODE
        libbpf.xdp_detach(ifindex, flags)
        found = True
        log.info("XDP detached from %s (%s mode)", ifname, mode)
    return found


def unpin(pin_dir: str) -> None:
    """Remove an instance's pinned maps (the maps die with their last user)."""
    if not os.path.isdir(pin_dir):
        return
    for name in os.listdir(pin_dir):
        os.unlink(os.path.join(pin_dir, name))
    os.rmdir(pin_dir)
