"""Weighted Maglev lookup tables (Eisenbud et al., NSDI 2016), built with numpy.

Every director computes its tables on its own, and ECMP may send a flow's next
packet to any of them, so the table must be a pure function of the *set* of
(key, weight) pairs: reals are sorted by key, every tie is broken by that order,
and each real's permutation comes from BLAKE2b of its key, never from Python's
salted hash(). Golden fingerprints in tests/unit/test_maglev.py pin the result;
changing them is a protocol change.

The algorithm:

1. Quotas: real i gets exactly round(M * w_i / W) slots (largest remainder, ties
   by canonical order), so the balance is exact to one slot and weights are met.
2. Real i prefers slots (offset_i + p * skip_i) % M for p = 0, 1, ... (M prime).
3. Its c-th claim (c = 1 .. quota_i) is due at time c / quota_i, which is
   weighted round-robin: every real finishes at time 1.
4. Time advances in steps. In each step every real proposes its next unfilled
   preferred slots that fall due by the step's horizon; two proposals for one
   slot are settled by due time, then canonical order; losers retry next step.
5. Each step claims an eighth of the free slots, so steps shrink as the table
   fills and collisions stay rare: the result stays close to one-claim-at-a-time
   Maglev (measured churn within about 10% of it) at numpy speed.

Two implementations of steps 4-5 give the same tables byte for byte: the
compiled helper (maglev_fill.c through maglev_native; 1-3 ms for 65537 slots,
built by `make bpf`) and _fill_numpy, the reference (20-35 ms, mostly spent on
the windows it materialises in full: about 30 cells per slot per build, whatever
the number of reals). Without the helper the numpy path is used, logged once;
the tests compare the two on random inputs. TableCache shares one read-only
table among all services with the same (key, real id, weight) set.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
import numpy.typing as npt

from carom.sched import maglev_native

DEFAULT_TABLE_SIZE = 65537
# position * skip must fit in int64, and table entries in uint32.
MAX_TABLE_SIZE = 2**31 - 1

# Salt for the permutation hash; changing it reshuffles every table.
_PERSON = b"carom-maglev-v1"
# Fraction of the still-free table that one step may claim. Smaller is closer to
# sequential Maglev (fewer collisions), larger takes fewer steps.
_STEP = 0.125
# Window sizes are powers of two so reals with similar needs share one matrix.
_POW2 = 1 << np.arange(32, dtype=np.int64)

U32Array = npt.NDArray[np.uint32]
# Who fills the slots; see build_table.
Impl = Literal["auto", "native", "numpy"]
_I64Array = npt.NDArray[np.int64]


def is_prime(n: int) -> bool:
    """Exact primality (deterministic Miller-Rabin, valid below 3.3e24), so a
    configured table size can be checked instantly."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in bases:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@dataclass(frozen=True)
class MaglevReal:
    """One backend as Maglev sees it: an identity that seeds its permutation and
    a share of the table."""

    key: bytes  # stable identity, e.g. family byte + 16-byte address; unique per table
    weight: int  # relative share of slots, >= 0; 0 drains the real (no slots)

    def __post_init__(self) -> None:
        _check_member(self.key, self.weight)


def canonical_order(reals: Iterable[MaglevReal]) -> list[MaglevReal]:
    """The reals sorted by key: the order every tie is broken in and the order
    build_table's entries index into. Rejects duplicate keys, which would make
    the set ambiguous."""
    ordered = sorted(reals, key=lambda r: r.key)
    for a, b in pairwise(ordered):
        if a.key == b.key:
            raise ValueError(f"duplicate Maglev key {a.key.hex()}")
    return ordered


def build_table(
    reals: Iterable[MaglevReal], size: int = DEFAULT_TABLE_SIZE, *, impl: Impl = "auto"
) -> U32Array:
    """The lookup table: `size` uint32 entries, each a position in
    canonical_order(reals). Needs at least one real with weight > 0.

    impl picks who fills the slots: "native" (the compiled helper, 1-3 ms),
    "numpy" (the pure path, 20-35 ms) or "auto" (native when it was built).
    Both give the same table; tests/unit/test_maglev.py compares them."""
    _check_size(size)
    ordered = canonical_order(reals)
    return _table([r.key for r in ordered], [r.weight for r in ordered], None, size, impl)


def build_ids(
    reals: Mapping[bytes, tuple[int, int]], size: int = DEFAULT_TABLE_SIZE, *, impl: Impl = "auto"
) -> U32Array:
    """The table as the data plane stores it: real ids, from key -> (real_id,
    weight). Id 0 means "no real"; with no weight at all the whole row is 0, so
    the data plane drops rather than guesses. Same table as build_table, without
    building a MaglevReal per entry (this is the daemon's hot path)."""
    _check_size(size)
    bad_id = None
    for key, (rid, weight) in reals.items():
        _check_member(key, weight)
        if bad_id is None and not 0 <= rid <= 0xFFFFFFFF:
            bad_id = f"real id {rid} for {key.hex()} does not fit in uint32"
    if not any(w for _, w in reals.values()):
        return np.zeros(size, dtype=np.uint32)
    if bad_id is not None:
        raise ValueError(bad_id)
    keys = sorted(reals)  # dict keys are unique: no duplicate check needed
    ids = [reals[k][0] for k in keys]
    return _table(keys, [reals[k][1] for k in keys], ids, size, impl)


def fingerprint(table: npt.NDArray[np.uint32]) -> str:
    """Short digest of a table, so directors (and humans) can compare tables
    without shipping them."""
    h = hashlib.blake2b(digest_size=6)
    h.update(len(table).to_bytes(8, "little"))
    h.update(np.ascontiguousarray(table, dtype="<u4").tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CachedRow:
    """A built table and its fingerprint, shared by every caller that asked for
    the same members; the array is read-only so no caller can change it for the
    others."""

    ids: U32Array  # build_ids' result, flags.writeable False
    fingerprint: str  # fingerprint(ids), computed once


class TableCache:
    """Built tables by member set, least recently used first out, bounded in
    bytes. With thousands of services over a few hundred reals many services
    share one (key, real id, weight) set: each such table is built and
    fingerprinted once, and every service holds the same array.

    Thread-safe (builds may run in an executor). Two threads missing the same
    set at once may both build it; the first stored is the one shared."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        # 64 MiB holds 256 tables of 65537 slots.
        self.max_bytes = max_bytes
        self.hits = 0  # lookups answered from the cache
        self.misses = 0  # lookups that built a table
        self._rows: OrderedDict[tuple[int, frozenset[tuple[bytes, tuple[int, int]]]], CachedRow]
        self._rows = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def row(
        self, reals: Mapping[bytes, tuple[int, int]], size: int = DEFAULT_TABLE_SIZE
    ) -> CachedRow:
        """build_ids(reals, size) and its fingerprint, built at most once while
        cached. Bad input raises as build_ids does and is not cached."""
        key = (size, frozenset(reals.items()))
        with self._lock:
            hit = self._rows.get(key)
            if hit is not None:
                self._rows.move_to_end(key)
                self.hits += 1
                return hit
            self.misses += 1
        ids = build_ids(reals, size)
        ids.flags.writeable = False
        built = CachedRow(ids=ids, fingerprint=fingerprint(ids))
        with self._lock:
            stored = self._rows.setdefault(key, built)
            if stored is built:
                self._bytes += ids.nbytes
                while self._bytes > self.max_bytes and self._rows:
                    _, old = self._rows.popitem(last=False)
                    self._bytes -= old.ids.nbytes
            return stored

    def build_ids(
        self, reals: Mapping[bytes, tuple[int, int]], size: int = DEFAULT_TABLE_SIZE
    ) -> U32Array:
        """Like build_ids, but shared and read-only: copy before changing it."""
        return self.row(reals, size).ids

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        """Bytes of table data held."""
        return self._bytes


# The process-wide cache build_ids_cached uses.
shared_cache = TableCache()


def build_ids_cached(
    reals: Mapping[bytes, tuple[int, int]], size: int = DEFAULT_TABLE_SIZE
) -> U32Array:
    """build_ids through the process-wide TableCache: identical member sets get
    the same read-only array, built once."""
    return shared_cache.build_ids(reals, size)


def _check_size(size: int) -> None:
    if size < 3:
        raise ValueError(f"Maglev table size must be at least 3, got {size}")
    if size > MAX_TABLE_SIZE:
        raise ValueError(f"Maglev table size must be at most {MAX_TABLE_SIZE}, got {size}")
    if not is_prime(size):
        raise ValueError(f"Maglev table size must be prime, got {size}")


def _quotas(weights: list[int], size: int) -> list[int]:
    """Slots per real, summing to exactly `size`: floor(size * w / W) plus one
    for the largest remainders (ties to the earlier real). Exact integers, so no
    platform can round differently."""
    total = sum(weights)
    if total == 0:
        raise ValueError("a Maglev table needs at least one real with weight > 0")
    quota = [size * w // total for w in weights]
    spare = size - sum(quota)
    if spare:
        remainder = [size * w % total for w in weights]
        # A stable sort keeps equal remainders in real order, reverse=True too.
        by_remainder = sorted(range(len(weights)), key=remainder.__getitem__, reverse=True)
        for i in by_remainder[:spare]:
            quota[i] += 1
    return quota


def _check_member(key: bytes, weight: int) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"MaglevReal key must be bytes, got {type(key).__name__}")
    if not isinstance(weight, int):
        raise TypeError(f"MaglevReal weight must be int, got {type(weight).__name__}")
    if weight < 0:
        raise ValueError(f"negative weight {weight} for real {key.hex()}")


def _check_impl(impl: str) -> None:
    if impl not in ("auto", "native", "numpy"):
        raise ValueError(f"unknown Maglev implementation {impl!r}: auto, native or numpy")


def _table(
    keys: list[bytes], weights: list[int], values: list[int] | None, size: int, impl: Impl
) -> U32Array:
    """The filled table over unique keys in canonical order: each slot holds
    values[i] of its real i (None: i itself, a position)."""
    _check_impl(impl)
    quota = _quotas(weights, size)
    live = [i for i, q in enumerate(quota) if q > 0]
    value = np.array(live if values is None else [values[i] for i in live], dtype=np.uint32)
    if len(live) == 1:
        return np.full(size, value[0], dtype=np.uint32)
    offset, skip = _offset_skip([keys[i] for i in live], size)
    live_quota = np.array([quota[i] for i in live], dtype=np.int64)
    if impl == "native" or (impl == "auto" and maglev_native.available()):
        return maglev_native.fill(offset, skip, live_quota, value, size)
    table: U32Array = value[_fill_numpy(offset, skip, live_quota, size)]
    return table


def _offset_skip(keys: list[bytes], size: int) -> tuple[_I64Array, _I64Array]:
    """Where each real's permutation starts and how it strides, from BLAKE2b of
    its key: stable across processes and machines, unlike hash(). The digest's
    two little-endian 64-bit halves, reduced with exact uint64 arithmetic."""
    digests = b"".join([hashlib.blake2b(k, digest_size=16, person=_PERSON).digest() for k in keys])
    halves = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
    offset = halves[:, 0] % np.uint64(size)
    skip = halves[:, 1] % np.uint64(size - 1) + np.uint64(1)
    return offset.astype(np.int64), skip.astype(np.int64)


def _fill_numpy(offset: _I64Array, skip: _I64Array, quota: _I64Array, size: int) -> _I64Array:
    """Owner (index into the arguments) of every slot; see the module docstring.
    Only exact float operations (+, *, /, floor) and integer maths decide the
    result, so it is bit-identical on every IEEE-754 machine."""
    n = len(quota)
    owner = np.full(size, -1, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    # Position in each permutation before which every slot is known to be filled.
    pos = np.zeros(n, dtype=np.int64)
    quota_f = quota.astype(np.float64)
    horizon = 0.0
    unfilled = size
    while unfilled:
        # Advance at least one claim of the largest active real so every step
        # makes progress and the tail does not crawl.
        q_max = int(quota[count < quota].max())
        horizon = min(1.0, horizon + max(_STEP * unfilled / size, 1.0 / q_max))
        due = np.minimum(quota, np.floor(horizon * quota_f).astype(np.int64)) - count
        proposers = np.flatnonzero(due > 0)
        if not len(proposers):
            continue  # rounding kept the horizon just short of the next claim
        want = due[proposers]
        # Expect 1.25x the wanted free slots in the window; a real that finds too
        # few proposes fewer and catches up next step.
        need = (want + want // 4 + 2) * size // unfilled + 1
        exponent = np.minimum(np.searchsorted(_POW2, need), len(_POW2) - 1)

        windows: list[tuple[_I64Array, _I64Array, npt.NDArray[np.bool_], int]] = []
        slot_parts: list[_I64Array] = []
        real_parts: list[_I64Array] = []
        time_parts: list[npt.NDArray[np.float64]] = []
        for e in np.unique(exponent):
            rows = proposers[exponent == e]
            width = int(min(_POW2[e], size))
            p = pos[rows, None] + np.arange(width, dtype=np.int64)
            valid = p < size
            slots = (offset[rows, None] + p * skip[rows, None]) % size
            free = valid & (owner[slots] < 0)
            rank = np.cumsum(free, axis=1)
            r, c = np.nonzero(free & (rank <= due[rows, None]))
            real = rows[r]
            slot_parts.append(slots[r, c])
            real_parts.append(real)
            time_parts.append((count[real] + rank[r, c]) / quota_f[real])
            windows.append((rows, slots, valid, width))

        prop_slot = np.concatenate(slot_parts)
        prop_real = np.concatenate(real_parts)
        prop_time = np.concatenate(time_parts)
        # Per slot, the earliest-due proposal wins; equal times go to the
        # canonically first real. lexsort's last key is the primary one.
        order = np.lexsort((prop_real, prop_time, prop_slot))
        sorted_slot = prop_slot[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = sorted_slot[1:] != sorted_slot[:-1]
        won = order[first]
        owner[prop_slot[won]] = prop_real[won]
        count += np.bincount(prop_real[won], minlength=n)
        unfilled -= len(won)

        for rows, slots, valid, width in windows:
            free = valid & (owner[slots] < 0)
            pos[rows] += np.where(free.any(axis=1), free.argmax(axis=1), width)
    return owner
