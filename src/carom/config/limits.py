"""`limits:`: the sizes of the pinned BPF maps, and the kernel memory they take.

This is the one Limits model: the config validates it, the loader sizes the maps
from it (`map_entries`), and `carom check` prints what it costs (`memory`). The
maps are preallocated by the kernel, so the whole cost is paid at start, whatever
the traffic: a typo in a size must be refused here, not found by the OOM killer.

The estimate follows the kernel's own accounting (map_mem_usage, shown as
`memlock` in /proc/PID/fdinfo/FD since Linux 6.4); tests/dataplane checks it
against a loaded data plane."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from carom import abi
from carom.config.fields import (
    MAGLEV_MAX,
    MAGLEV_MIN,
    ConfigProblems,
    Int,
    StrictModel,
    check_maglev_size,
    fail,
    int_range,
)

# Refused whatever the machine: no sensible director needs more, and a total
# this large is a typo (one zero too many) that would fail at start or worse.
MAX_KERNEL_MEMORY = 16 << 30

MAX_SERVICES = 4096
MAX_REALS = 65536
MAX_VIPS = 65536

# mmap_array: an array created BPF_F_MMAPABLE (maglev), kept in whole pages
MapKind = Literal["array", "mmap_array", "percpu_array", "hash", "lru_hash", "ringbuf"]

# The maps whose size comes from the limits, and their kernel map type (bpf/maps.h).
MAP_KINDS: dict[str, MapKind] = {
    "vip_addrs": "hash",
    "services": "hash",
    "svc_stats": "percpu_array",
    "maglev": "mmap_array",
    "reals": "array",
    "real_stats": "percpu_array",
    "real_macs": "hash",
    "conn_table": "lru_hash",
    "persist_table": "lru_hash",
    "conn_events": "ringbuf",
    "real_down": "array",
}

# Kernel bookkeeping on x86-64 (kernel/bpf/hashtab.c): struct htab_elem before
# each key, and one struct bucket per power-of-two hash slot.
HTAB_ELEM_BYTES = 48
HTAB_BUCKET_BYTES = 16
# kernel/bpf/ringbuf.c: a ring buffer maps its data pages twice (a page pointer
# each) behind a few pages of header and consumer/producer positions.
PAGE_SIZE = 4096
RINGBUF_META_PAGES = 3
CONN_EVENT_BYTES = ctypes.sizeof(abi.ConnEventRecord) + 8  # record + ring header


def check_ring_size(value: int) -> int:
    """A ring buffer's size: the kernel wants a power of two of whole pages."""
    if value & (value - 1):
        lower = 1 << (value.bit_length() - 1)
        fail(f"{value} is not a power of two; a ring buffer needs one: use {lower} or {lower * 2}")
    return value


class Limits(StrictModel):
    """Sizes of the pinned BPF maps. Fixed for the life of the maps: changing them
    needs `carom stop --detach` and a start."""

    max_services: Annotated[Int, int_range(1, MAX_SERVICES)] = Field(
        default=64, description="services (rows of the Maglev map)", examples=[64]
    )
    max_reals: Annotated[Int, int_range(2, MAX_REALS)] = Field(
        default=4096, description="real ids are 1..max_reals-1 (0 means none)", examples=[4096]
    )
    max_vips: Annotated[Int, int_range(1, MAX_VIPS)] = Field(
        default=256, description="distinct vip addresses (entries of vip_addrs)", examples=[256]
    )
    maglev_table_size: Annotated[
        Int, int_range(MAGLEV_MIN, MAGLEV_MAX), AfterValidator(check_maglev_size)
    ] = Field(default=65537, description="slots per service; prime", examples=[65537])
    conn_table_size: Annotated[Int, int_range(1024, 67108864)] = Field(
        default=1048576, description="entries of the LRU connection table", examples=[1048576]
    )
    persist_table_size: Annotated[Int, int_range(1024, 16777216)] = Field(
        default=65536, description="entries of the LRU client-persistence table", examples=[65536]
    )

    conn_events_bytes: Annotated[
        Int, int_range(1 << 16, 1 << 30), AfterValidator(check_ring_size)
    ] = Field(
        default=4 << 20,
        description="bytes of the conn_events ring buffer (a power of two); 56 bytes per "
        "new or re-pointed connection, so the default holds about 75,000 events, 0.75 s of "
        "100k new flows/s, if connection sync stops reading them",
        examples=[4194304],
    )

    def map_entries(self) -> dict[str, int]:
        """max_entries of every map the limits size, by map name."""
        return {
            "vip_addrs": self.max_vips,
            "services": self.max_services,
            "svc_stats": self.max_services,
            "maglev": self.max_services * self.maglev_table_size,
            "reals": self.max_reals,
            "real_stats": self.max_reals,
            "real_macs": self.max_reals,
            "conn_table": self.conn_table_size,
            "persist_table": self.persist_table_size,
            "conn_events": self.conn_events_bytes,
            "real_down": self.max_services * abi.real_down_words(self.max_reals),
        }

    def memory(self, cpus: int | None = None) -> list[MapMemory]:
        """The kernel memory of each sized map, largest first."""
        ncpu = cpus or os.cpu_count() or 1
        out = [
            map_memory(name, MAP_KINDS[name], entries, ncpu)
            for name, entries in self.map_entries().items()
        ]
        rows = f"{self.max_services} rows x {self.maglev_table_size} slots"
        out = [replace(m, shape=rows) if m.name == "maglev" else m for m in out]
        bits = f"{self.max_services} rows x {abi.real_down_words(self.max_reals)} words"
        out = [replace(m, shape=bits) if m.name == "real_down" else m for m in out]
        return sorted(out, key=lambda m: -m.bytes)

    @model_validator(mode="after")
    def _check_memory(self) -> Limits:
        maps = self.memory()
        total = sum(m.bytes for m in maps)
        if total > MAX_KERNEL_MEMORY:
            top = "; ".join(m.describe() for m in maps[:2])
            raise ConfigProblems(
                [
                    (
                        (),
                        f"these sizes need {format_bytes(total)} of kernel memory, more than "
                        f"the {format_bytes(MAX_KERNEL_MEMORY)} carom allows ({top}); "
                        "lower the largest: the maps are allocated in full at start",
                    )
                ]
            )
        return self


@dataclass(frozen=True)
class MapMemory:
    """What one map costs."""

    name: str  # the map's name in bpf/maps.h
    kind: MapKind  # kernel map type
    entries: int  # max_entries
    entry_bytes: int  # bytes per entry, bookkeeping included (all CPUs for per-CPU maps)
    bytes: int  # the whole map
    shape: str = ""  # how the entries come about, e.g. "64 rows x 65537 slots"

    def describe(self) -> str:
        if self.kind == "ringbuf":
            return f"{self.name} {format_bytes(self.bytes)} (ring buffer of {self.entries} bytes)"
        shape = f" ({self.shape})" if self.shape else ""
        return (
            f"{self.name} {format_bytes(self.bytes)} = {self.entries} entries{shape} x "
            f"{self.entry_bytes} B"
        )


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _sizeof(tp: object) -> int:
    return ctypes.sizeof(tp)  # type: ignore[arg-type]


def map_memory(name: str, kind: MapKind, entries: int, cpus: int) -> MapMemory:
    """The kernel's own sum for one map (kernel/bpf/arraymap.c, hashtab.c,
    ringbuf.c: their map_mem_usage), to within its small fixed headers."""
    if kind == "ringbuf":
        pages = entries // PAGE_SIZE
        total = entries + RINGBUF_META_PAGES * PAGE_SIZE + (RINGBUF_META_PAGES + 2 * pages) * 8
        return MapMemory(name, kind, entries, 1, total, shape="ring buffer: entries are bytes")
    key_t, value_t = abi.MAPS[name]
    key, value = _round8(_sizeof(key_t)), _round8(_sizeof(value_t))
    if kind == "array":
        per = value
        total = entries * per
    elif kind == "mmap_array":  # header and values each in whole pages
        per = value
        total = PAGE_SIZE + -(-entries * per // PAGE_SIZE) * PAGE_SIZE
    elif kind == "percpu_array":
        per = value * cpus + 8  # a per-CPU pointer per entry
        total = entries * per
    else:
        per = HTAB_ELEM_BYTES + key + value
        buckets = 1 << max(entries - 1, 0).bit_length()
        total = entries * per + buckets * HTAB_BUCKET_BYTES
    return MapMemory(name, kind, entries, per, total)


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
