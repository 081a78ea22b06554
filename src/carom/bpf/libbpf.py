"""A thin, typed ctypes layer over the system libbpf (libbpf.so.1).

Only what carom needs: objects, maps, XDP attach, BTF and BPF_PROG_TEST_RUN.
Errors become BpfError with the errno and what we were doing. Everything above
this module deals in Python types; nothing above it touches ctypes pointers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("carom.libbpf")

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# libbpf_print_level
_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2


class BpfError(OSError):
    """A libbpf call failed; errno is set, the message says what we were doing."""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    return ctypes.CDLL(name, use_errno=True)


_lib = _load()
_c = ctypes
_vp = ctypes.c_void_p


def _sig(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


class TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.1)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", _vp),
        ("data_out", _vp),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", _vp),
        ("ctx_out", _vp),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpAttachOpts(ctypes.Structure):
    """struct bpf_xdp_attach_opts."""

    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


class MapBatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class BtfType(ctypes.Structure):
    """struct btf_type: name_off, info (vlen | kind << 24), size-or-type."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
    ]


class BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, _vp)

_object_open_file = _sig("bpf_object__open_file", _vp, _c.c_char_p, _vp)
_object_load = _sig("bpf_object__load", _c.c_int, _vp)
_object_close = _sig("bpf_object__close", None, _vp)
_object_find_map = _sig("bpf_object__find_map_by_name", _vp, _vp, _c.c_char_p)
_object_find_prog = _sig("bpf_object__find_program_by_name", _vp, _vp, _c.c_char_p)
_object_next_map = _sig("bpf_object__next_map", _vp, _vp, _vp)
_object_btf = _sig("bpf_object__btf", _vp, _vp)
_map_name = _sig("bpf_map__name", _c.c_char_p, _vp)
_map_fd = _sig("bpf_map__fd", _c.c_int, _vp)
_map_set_max_entries = _sig("bpf_map__set_max_entries", _c.c_int, _vp, _c.c_uint32)
_map_max_entries = _sig("bpf_map__max_entries", _c.c_uint32, _vp)
_map_set_pin_path = _sig("bpf_map__set_pin_path", _c.c_int, _vp, _c.c_char_p)
_map_key_size = _sig("bpf_map__key_size", _c.c_uint32, _vp)
_map_value_size = _sig("bpf_map__value_size", _c.c_uint32, _vp)
_map_type = _sig("bpf_map__type", _c.c_int, _vp)
_map_is_pinned = _sig("bpf_map__is_pinned", _c.c_bool, _vp)
_prog_fd = _sig("bpf_program__fd", _c.c_int, _vp)
_prog_set_autoload = _sig("bpf_program__set_autoload", _c.c_int, _vp, _c.c_bool)
_set_print = _sig("libbpf_set_print", _vp, _PRINT_FN)
_num_possible_cpus = _sig("libbpf_num_possible_cpus", _c.c_int)

_update_elem = _sig("bpf_map_update_elem", _c.c_int, _c.c_int, _vp, _vp, _c.c_uint64)
_lookup_elem = _sig("bpf_map_lookup_elem", _c.c_int, _c.c_int, _vp, _vp)
_delete_elem = _sig("bpf_map_delete_elem", _c.c_int, _c.c_int, _vp)
_get_next_key = _sig("bpf_map_get_next_key", _c.c_int, _c.c_int, _vp, _vp)
_update_batch = _sig(
    "bpf_map_update_batch", _c.c_int, _c.c_int, _vp, _vp, _c.POINTER(_c.c_uint32), _vp
)
_lookup_batch = _sig(
    "bpf_map_lookup_batch", _c.c_int, _c.c_int, _vp, _vp, _vp, _vp, _c.POINTER(_c.c_uint32), _vp
)
_delete_batch = _sig("bpf_map_delete_batch", _c.c_int, _c.c_int, _vp, _c.POINTER(_c.c_uint32), _vp)
_obj_pin = _sig("bpf_obj_pin", _c.c_int, _c.c_int, _c.c_char_p)
_obj_get = _sig("bpf_obj_get", _c.c_int, _c.c_char_p)
_prog_test_run = _sig("bpf_prog_test_run_opts", _c.c_int, _c.c_int, _c.POINTER(TestRunOpts))
_xdp_attach = _sig("bpf_xdp_attach", _c.c_int, _c.c_int, _c.c_int, _c.c_uint32, _vp)
_prog_attach = _sig("bpf_prog_attach", _c.c_int, _c.c_int, _c.c_int, _c.c_int, _c.c_uint)
_xdp_detach = _sig("bpf_xdp_detach", _c.c_int, _c.c_int, _c.c_uint32, _vp)
_xdp_query_id = _sig("bpf_xdp_query_id", _c.c_int, _c.c_int, _c.c_int, _c.POINTER(_c.c_uint32))
_prog_get_fd_by_id = _sig("bpf_prog_get_fd_by_id", _c.c_int, _c.c_uint32)
_btf_find_by_name_kind = _sig("btf__find_by_name_kind", _c.c_int32, _vp, _c.c_char_p, _c.c_uint32)
_btf_type_by_id = _sig("btf__type_by_id", _c.POINTER(BtfType), _vp, _c.c_uint32)
_btf_name_by_offset = _sig("btf__name_by_offset", _c.c_char_p, _vp, _c.c_uint32)
_btf_resolve_size = _sig("btf__resolve_size", _c.c_int64, _vp, _c.c_uint32)

# Verifier and loader messages, collected per thread while a load is running.
_print_state = threading.local()


@_PRINT_FN  # type: ignore[untyped-decorator]
def _print_cb(level: int, fmt: bytes, args: int) -> int:
    # The message is a printf format with a va_list: format it with vsnprintf.
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, _vp(args))
    text = buf.value.decode(errors="replace").rstrip()
    sink = getattr(_print_state, "sink", None)
    if sink is not None:
        sink.append(text)
    if level == _LIBBPF_WARN:
        log.warning("libbpf: %s", text)
    else:
        log.debug("libbpf: %s", text)
    return 0


_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [_c.c_char_p, _c.c_size_t, _c.c_char_p, _vp]
_set_print(_print_cb)


def _check(rc: int, what: str) -> int:
    """libbpf 1.x returns -errno; the raw syscall wrappers return -1 and set errno."""
    if rc < 0:
        err = -rc if rc != -1 else ctypes.get_errno() or errno.EINVAL
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


def num_possible_cpus() -> int:
    return int(_check(_num_possible_cpus(), "libbpf_num_possible_cpus"))


class BpfObject:
    """An opened (and later loaded) BPF ELF object."""

    def __init__(self, path: str) -> None:
        self.path = path
        ptr = _object_open_file(path.encode(), None)
        if not ptr:
            err = ctypes.get_errno() or errno.ENOENT
            raise BpfError(err, f"opening BPF object {path}: {os.strerror(err)}")
        self._ptr: int | None = ptr
        self.log: list[str] = []

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise BpfError(errno.EBADF, "BPF object already closed")
        return self._ptr

    def maps(self) -> Iterator[BpfMap]:
        m = _object_next_map(self.ptr, None)
        while m:
            yield BpfMap(m)
            m = _object_next_map(self.ptr, m)

    def map(self, name: str) -> BpfMap:
        m = _object_find_map(self.ptr, name.encode())
        if not m:
            raise BpfError(errno.ENOENT, f"no map named {name} in {self.path}")
        return BpfMap(m)

    def program_ptr(self, name: str) -> int:
        p = _object_find_prog(self.ptr, name.encode())
        if not p:
            raise BpfError(errno.ENOENT, f"no program named {name} in {self.path}")
        return int(p)

    def set_autoload(self, prog: str, autoload: bool) -> None:
        _check(_prog_set_autoload(self.program_ptr(prog), autoload), f"autoload {prog}")

    def program_fd(self, name: str) -> int:
        return _check(_prog_fd(self.program_ptr(name)), f"fd of program {name}")

    def load(self) -> None:
        """Load into the kernel; the verifier log is kept in self.log on failure."""
        _print_state.sink = self.log
        try:
            rc = _object_load(self.ptr)
        finally:
            _print_state.sink = None
        if rc < 0:
            tail = "\n".join(self.log[-30:])
            raise BpfError(-rc, f"loading {self.path}: {os.strerror(-rc)}\n{tail}")

    def btf(self) -> Btf:
        b = _object_btf(self.ptr)
        if not b:
            raise BpfError(errno.ENOENT, f"{self.path} has no BTF")
        return Btf(b, owner=self)

    def close(self) -> None:
        if self._ptr is not None:
            _object_close(self._ptr)
            self._ptr = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BpfMap:
    """A map of an object: settings before load, fd after."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    @property
    def name(self) -> str:
        return (_map_name(self.ptr) or b"").decode()

    @property
    def fd(self) -> int:
        return _check(_map_fd(self.ptr), f"fd of map {self.name}")

    @property
    def max_entries(self) -> int:
        return int(_map_max_entries(self.ptr))

    @property
    def key_size(self) -> int:
        return int(_map_key_size(self.ptr))

    @property
    def value_size(self) -> int:
        return int(_map_value_size(self.ptr))

    @property
    def map_type(self) -> int:
        return int(_map_type(self.ptr))

    @property
    def pinned(self) -> bool:
        return bool(_map_is_pinned(self.ptr))

    def set_max_entries(self, n: int) -> None:
        _check(_map_set_max_entries(self.ptr, n), f"resize map {self.name}")

    def set_pin_path(self, path: str) -> None:
        _check(_map_set_pin_path(self.ptr, path.encode()), f"pin path of map {self.name}")


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    _check(_update_elem(fd, key, value, flags), "map update")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    out = ctypes.create_string_buffer(value_size)
    rc = _lookup_elem(fd, key, out)
    if rc < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT or rc == -errno.ENOENT:
            return None
        _check(rc, "map lookup")
    return out.raw


def map_delete(fd: int, key: bytes) -> bool:
    rc = _delete_elem(fd, key)
    if rc < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT or rc == -errno.ENOENT:
            return False
        _check(rc, "map delete")
    return True


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """All keys (get_next_key walk). Keys deleted meanwhile may restart the walk."""
    prev: bytes | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        rc = _get_next_key(fd, prev, nxt)
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT or rc == -errno.ENOENT:
                return
            _check(rc, "map get_next_key")
        key = nxt.raw
        yield key
        prev = key


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int, flags: int = 0) -> None:
    """One syscall for `count` packed keys and values (BPF_MAP_UPDATE_BATCH)."""
    if count == 0:
        return
    n = ctypes.c_uint32(count)
    opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts), elem_flags=flags, flags=0)
    _check(_update_batch(fd, keys, values, ctypes.byref(n), ctypes.byref(opts)), "map batch update")


def map_delete_batch(fd: int, keys: bytes, count: int) -> None:
    if count == 0:
        return
    n = ctypes.c_uint32(count)
    opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
    _check(_delete_batch(fd, keys, ctypes.byref(n), ctypes.byref(opts)), "map batch delete")


def map_lookup_batch_raw(
    fd: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    chunk: int = 4096,
    after: bytes | None = None,
) -> Iterator[tuple[bytes, bytes, int]]:
    """Dump a hash or array map in chunks with BPF_MAP_LOOKUP_BATCH: each chunk
    as (packed keys, packed values, count), for callers that parse whole chunks
    (numpy) instead of one entry at a time.

    value_size is the full per-key size (for per-CPU maps: ncpus * rounded size).
    `after`: for arrays, start after this key (the kernel's batch cursor).
    """
    in_batch = ctypes.create_string_buffer(max(key_size, 8))
    out_batch = ctypes.create_string_buffer(max(key_size, 8))
    first = after is None
    if after is not None:
        ctypes.memmove(in_batch, after, len(after))
    chunk = max(1, min(chunk, max_entries))
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
    while True:
        n = ctypes.c_uint32(chunk)
        rc = _lookup_batch(
            fd,
            None if first else in_batch,
            out_batch,
            keys,
            values,
            ctypes.byref(n),
            ctypes.byref(opts),
        )
        err = ctypes.get_errno() if rc < 0 else 0
        if rc < 0 and err != errno.ENOENT and rc != -errno.ENOENT:
            _check(rc, "map batch lookup")
        if n.value:
            yield (
                ctypes.string_at(keys, key_size * n.value),
                ctypes.string_at(values, value_size * n.value),
                n.value,
            )
        if rc < 0:  # ENOENT: that was the last chunk
            return
        ctypes.memmove(in_batch, out_batch, len(out_batch))
        first = False


def map_lookup_batch(
    fd: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    chunk: int = 4096,
    after: bytes | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """map_lookup_batch_raw, one (key, value) pair at a time."""
    for kraw, vraw, n in map_lookup_batch_raw(fd, key_size, value_size, max_entries, chunk, after):
        for i in range(n):
            yield (
                kraw[i * key_size : (i + 1) * key_size],
                vraw[i * value_size : (i + 1) * value_size],
            )


def obj_pin(fd: int, path: str) -> None:
    _check(_obj_pin(fd, path.encode()), f"pin {path}")


def obj_get(path: str) -> int:
    return _check(_obj_get(path.encode()), f"open pinned {path}")


def prog_fd_by_id(prog_id: int) -> int:
    return _check(_prog_get_fd_by_id(prog_id), f"program id {prog_id}")


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach a program to a cgroup (or another attachable fd) by type."""
    _check(_prog_attach(prog_fd, target_fd, attach_type, flags), "bpf_prog_attach")


def xdp_attach(ifindex: int, prog_fd: int, flags: int, old_prog_fd: int | None = None) -> None:
    opts = None
    if old_prog_fd is not None:
        opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd)
        flags |= XDP_FLAGS_REPLACE
    _check(
        _xdp_attach(ifindex, prog_fd, flags, ctypes.byref(opts) if opts else None),
        f"attach XDP to ifindex {ifindex}",
    )


def xdp_detach(ifindex: int, flags: int) -> None:
    _check(_xdp_detach(ifindex, flags, None), f"detach XDP from ifindex {ifindex}")


def xdp_query_id(ifindex: int, flags: int = 0) -> int:
    """Id of the XDP program attached in the given mode (0 = none)."""
    out = ctypes.c_uint32(0)
    _check(_xdp_query_id(ifindex, flags, ctypes.byref(out)), f"query XDP on ifindex {ifindex}")
    return int(out.value)


def prog_test_run(
    prog_fd: int, data: bytes, repeat: int = 1, ctx: bytes | None = None, out_size: int = 0
) -> tuple[int, bytes, int]:
    """BPF_PROG_TEST_RUN: returns (retval, output frame, mean duration ns)."""
    out = ctypes.create_string_buffer(max(out_size, len(data) + 256))
    inp = ctypes.create_string_buffer(data, len(data))
    ctx_buf = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    opts = TestRunOpts(
        sz=ctypes.sizeof(TestRunOpts),
        data_in=ctypes.cast(inp, _vp),
        data_out=ctypes.cast(out, _vp),
        data_size_in=len(data),
        data_size_out=len(out),
        ctx_in=ctypes.cast(ctx_buf, _vp) if ctx_buf else None,
        ctx_size_in=len(ctx) if ctx else 0,
        repeat=repeat,
    )
    _check(_prog_test_run(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return int(opts.retval), out.raw[: opts.data_size_out], int(opts.duration)


BTF_KIND_INT, BTF_KIND_STRUCT, BTF_KIND_ENUM = 1, 4, 6


class Btf:
    """Read-only view of BTF: struct layouts and enums for the ABI check, and raw
    types by id for the layout migration (carom.bpf.layout)."""

    def __init__(self, ptr: int, owner: BpfObject | None) -> None:
        self.ptr: int | None = ptr
        self._owner = owner  # an object's BTF lives as long as the object
        self._owned = owner is None  # a kernel BTF is ours to free

    def close(self) -> None:
        if self._owned and self.ptr:
            _btf_free(self.ptr)
        self.ptr = None

    def _p(self) -> int:
        if not self.ptr:
            raise BpfError(errno.EBADF, "BTF already closed")
        return self.ptr

    def _find(self, name: str, kind: int) -> BtfType:
        return self.type_at(self.find(name, kind))

    def find(self, name: str, kind: int) -> int:
        """Type id of the named type of this kind; KeyError if absent."""
        tid = _btf_find_by_name_kind(self._p(), name.encode(), kind)
        if tid < 0:
            raise KeyError(name)
        return int(tid)

    def type_at(self, tid: int) -> BtfType:
        t = _btf_type_by_id(self._p(), tid)
        if not t:
            raise KeyError(tid)
        return t.contents  # type: ignore[no-any-return]

    def type_count(self) -> int:
        return int(_btf_type_cnt(self._p()))

    def name(self, off: int) -> str:
        return self._name(off)

    def _name(self, off: int) -> str:
        return (_btf_name_by_offset(self._p(), off) or b"").decode()

    def resolve_size(self, tid: int) -> int:
        return int(_check(int(_btf_resolve_size(self._p(), tid)), f"size of BTF type {tid}"))

    def raw_members(self, tid: int) -> list[tuple[str, int, int, int]]:
        """(name, bit offset, type id, bitfield bits or 0) of a struct or union."""
        t = self.type_at(tid)
        vlen = t.info & 0xFFFF
        kflag = bool(t.info >> 31)
        members = ctypes.cast(
            ctypes.addressof(t) + ctypes.sizeof(BtfType), ctypes.POINTER(BtfMember * vlen)
        ).contents
        out = []
        for m in members:
            if kflag:
                out.append((self._name(m.name_off), m.offset & 0xFFFFFF, m.type, m.offset >> 24))
            else:
                out.append((self._name(m.name_off), m.offset, m.type, 0))
        return out

    def raw_array(self, tid: int) -> tuple[int, int]:
        """(element type id, element count) of an array type."""
        t = self.type_at(tid)
        arr = BtfArray.from_address(ctypes.addressof(t) + ctypes.sizeof(BtfType))
        return int(arr.type), int(arr.nelems)

    def struct_layout(self, name: str) -> tuple[int, list[tuple[str, int, int]]]:
        """(size, [(member, byte offset, byte size)]) of a struct."""
        tid = self.find(name, BTF_KIND_STRUCT)
        t = self.type_at(tid)
        out = []
        for mname, bit_off, mtype, _ in self.raw_members(tid):
            out.append((mname, (bit_off & 0xFFFFFF) // 8, self.resolve_size(mtype)))
        return int(t.size), out

    def enum_values(self, name: str) -> dict[str, int]:
        t = self._find(name, BTF_KIND_ENUM)
        vlen = t.info & 0xFFFF
        values = ctypes.cast(
            ctypes.addressof(t) + ctypes.sizeof(BtfType), ctypes.POINTER(BtfEnum * vlen)
        ).contents
        return {self._name(v.name_off): int(v.val) for v in values}


# --- map introspection and kernel BTF (used by the layout migration) -------------------


class MapInfoC(ctypes.Structure):
    """struct bpf_map_info, up to map_extra (the kernel fills what it knows)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class BtfArray(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("index_type", ctypes.c_uint32),
        ("nelems", ctypes.c_uint32),
    ]


_obj_get_info_by_fd = _sig(
    "bpf_obj_get_info_by_fd", _c.c_int, _c.c_int, _vp, _c.POINTER(_c.c_uint32)
)
_map_get_fd_by_id = _sig("bpf_map_get_fd_by_id", _c.c_int, _c.c_uint32)
_map_flags = _sig("bpf_map__map_flags", _c.c_uint32, _vp)
_map_btf_key_type_id = _sig("bpf_map__btf_key_type_id", _c.c_uint32, _vp)
_map_btf_value_type_id = _sig("bpf_map__btf_value_type_id", _c.c_uint32, _vp)
_btf_load_from_kernel_by_id = _sig("btf__load_from_kernel_by_id", _vp, _c.c_uint32)
_btf_free = _sig("btf__free", None, _vp)
_btf_type_cnt = _sig("btf__type_cnt", _c.c_uint32, _vp)


def map_info(fd: int) -> MapInfoC:
    """The kernel's description of a map: type, sizes, flags, id, BTF ids."""
    info = MapInfoC()
    n = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)), "map info")
    return info


def map_fd_by_id(map_id: int) -> int:
    return _check(_map_get_fd_by_id(map_id), f"map id {map_id}")


def map_flags(m: BpfMap) -> int:
    return int(_map_flags(m.ptr))


def map_btf_ids(m: BpfMap) -> tuple[int, int]:
    """(key type id, value type id) of a map in its object's BTF (0 = none)."""
    return int(_map_btf_key_type_id(m.ptr)), int(_map_btf_value_type_id(m.ptr))


def clear_pin_path(m: BpfMap) -> None:
    """Create this map fresh at load instead of reusing (or making) a pin."""
    _check(_map_set_pin_path(m.ptr, None), f"clear pin path of map {m.name}")


def kernel_btf(btf_id: int) -> Btf:
    """A BTF object the kernel holds (e.g. the one a pinned map was created with).

    The caller closes it."""
    ptr = _btf_load_from_kernel_by_id(btf_id)
    if not ptr:
        err = ctypes.get_errno() or errno.ENOENT
        raise BpfError(err, f"loading BTF id {btf_id} from the kernel: {os.strerror(err)}")
    return Btf(ptr, owner=None)
