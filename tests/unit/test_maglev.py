"""Maglev tables: exact balance, weights, small disruption, independence from
input order, and golden fingerprints that every director must reproduce; the
compiled fill against the numpy one; the shared table cache."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import random
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carom.sched import maglev_native
from carom.sched.maglev import (
    DEFAULT_TABLE_SIZE,
    Impl,
    MaglevReal,
    TableCache,
    _offset_skip,
    _quotas,
    build_ids,
    build_ids_cached,
    build_table,
    canonical_order,
    fingerprint,
    is_prime,
    shared_cache,
)

M = DEFAULT_TABLE_SIZE
# Both fills; "native" fails loudly if `make bpf` did not build the helper.
IMPLS: list[Impl] = ["native", "numpy"]


def key(address: str) -> bytes:
    """The daemon's real key: family byte + address padded to 16 bytes."""
    ip = ipaddress.ip_address(address)
    return bytes([ip.version]) + ip.packed.ljust(16, b"\0")


def reals(n: int, weight: int = 1, first: int = 1) -> list[MaglevReal]:
    return [
        MaglevReal(key=key(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"), weight=weight)
        for i in range(first, first + n)
    ]


_IDS: dict[bytes, int] = {}


def ident(k: bytes) -> int:
    """A small int per key, so tables over different sets compare slot by slot."""
    return _IDS.setdefault(k, len(_IDS) + 1)


def key_table(rs: list[MaglevReal], size: int = M) -> npt.NDArray[np.int64]:
    """The table as owner identities instead of positions in one particular set."""
    ids = np.array([ident(r.key) for r in canonical_order(rs)], dtype=np.int64)
    return ids[build_table(rs, size)]


def slot_counts(rs: list[MaglevReal], size: int = M) -> npt.NDArray[np.int64]:
    return np.bincount(build_table(rs, size), minlength=len(rs))


# --- primes and sizes ------------------------------------------------------------------


def test_is_prime_agrees_with_trial_division() -> None:
    def slow(n: int) -> bool:
        return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))

    assert [n for n in range(2000) if is_prime(n)] == [n for n in range(2000) if slow(n)]
    assert is_prime(65537)
    assert is_prime(2**31 - 1)
    assert not is_prime(65535)
    assert not is_prime(3215031751)  # strong pseudoprime to bases 2, 3, 5 and 7


# --- balance and weights ----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 1000])
def test_equal_weights_balance_to_one_slot(n: int) -> None:
    counts = slot_counts(reals(n))
    assert counts.sum() == M
    assert counts.max() - counts.min() <= 1
    assert counts.min() == M // n


def test_weight_two_gets_twice_the_slots() -> None:
    rs = [*reals(5, weight=1), *reals(5, weight=2, first=100)]
    counts = slot_counts(rs)
    order = canonical_order(rs)
    ones = [c for r, c in zip(order, counts, strict=True) if r.weight == 1]
    twos = [c for r, c in zip(order, counts, strict=True) if r.weight == 2]
    # 65537 / 15 = 4369.1 per unit of weight.
    assert set(ones) <= {4369, 4370}
    assert set(twos) <= {8738, 8739}


def test_weight_zero_drains() -> None:
    rs = [*reals(3), MaglevReal(key=key("10.9.9.9"), weight=0)]
    order = canonical_order(rs)
    table = build_table(rs)
    drained = next(i for i, r in enumerate(order) if r.weight == 0)
    assert drained not in set(table.tolist())
    # A drained real does not disturb the others: same table as without it.
    assert (key_table(rs) == key_table(reals(3))).all()


def test_quotas_are_largest_remainder() -> None:
    assert _quotas([1, 1, 1], 13) == [5, 4, 4]  # the tie goes to the first real
    assert _quotas([1, 2, 0], 7) == [2, 5, 0]  # 7/3 = 2.33 and 14/3 = 4.67
    assert _quotas([5], 13) == [13]


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=40).filter(any),
    size=st.sampled_from([3, 5, 7, 13, 101, 1009, 4099]),
)
def test_every_real_gets_exactly_its_quota(impl: Impl, weights: list[int], size: int) -> None:
    rs = [MaglevReal(key=bytes([4, i]), weight=w) for i, w in enumerate(weights)]
    table = build_table(rs, size, impl=impl)
    assert table.dtype == np.uint32
    assert len(table) == size
    assert np.bincount(table, minlength=len(rs)).tolist() == _quotas(weights, size)


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=60).filter(
        any
    ),
    size=st.sampled_from([3, 13, 101, 65537, 2**31 - 1]),
)
def test_quotas_match_their_definition(weights: list[int], size: int) -> None:
    # Written out plainly: floor shares, then +1 by largest remainder, ties by index.
    total = sum(weights)
    plain = [size * w // total for w in weights]
    ranked = sorted(range(len(weights)), key=lambda i: (-(size * weights[i] % total), i))
    for i in ranked[: size - sum(plain)]:
        plain[i] += 1
    assert _quotas(weights, size) == plain


@settings(max_examples=50, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=40), min_size=1, max_size=20),
    size=st.sampled_from([3, 13, 65537, 2**31 - 1]),
)
def test_offsets_and_skips_match_their_definition(keys: list[bytes], size: int) -> None:
    # The permutation seeds, one key at a time with Python integers.
    offset, skip = _offset_skip(keys, size)
    for k, o, s in zip(keys, offset.tolist(), skip.tolist(), strict=True):
        d = hashlib.blake2b(k, digest_size=16, person=b"carom-maglev-v1").digest()
        assert o == int.from_bytes(d[:8], "little") % size
        assert s == int.from_bytes(d[8:], "little") % (size - 1) + 1


# --- disruption -------------------------------------------------------------------------
# Maglev does not promise minimal disruption: when the set changes, a few slots
# also move between reals that stayed. Measured over random sets (M = 65537), for
# this implementation and for one-claim-at-a-time weighted Maglev alike: 0.2-0.4%
# of M for N = 10 and about 0.6% for N = 100, never above 0.75%.
SURVIVOR_CHURN_BOUND = 0.01 * M


@pytest.mark.parametrize("n", [10, 100])
def test_removing_a_real_moves_little_else(n: int) -> None:
    base = reals(n)
    before = key_table(base)
    for gone in (base[0], base[n // 2], base[-1]):
        after = key_table([r for r in base if r is not gone])
        was_gone = before == ident(gone.key)
        assert not (after == ident(gone.key)).any()
        assert (before != after)[was_gone].all()
        churn = int(((before != after) & ~was_gone).sum())
        assert churn < SURVIVOR_CHURN_BOUND
        # Total moved is the removed real's share plus that churn.
        assert abs(int((before != after).sum()) - M / n) < 1 + SURVIVOR_CHURN_BOUND


@pytest.mark.parametrize("n", [10, 100])
def test_adding_a_real_moves_little_else(n: int) -> None:
    base = reals(n)
    before = key_table(base)
    for extra in (reals(1, first=1000)[0], reals(1, first=5000)[0]):
        after = key_table([*base, extra])
        to_new = after == ident(extra.key)
        assert abs(int(to_new.sum()) - M / (n + 1)) <= 1
        churn = int(((before != after) & ~to_new).sum())
        assert churn < SURVIVOR_CHURN_BOUND


def test_weight_change_moves_little_else() -> None:
    base = reals(10)
    heavier = [MaglevReal(key=r.key, weight=2 if i == 3 else 1) for i, r in enumerate(base)]
    before, after = key_table(base), key_table(heavier)
    gained = after == ident(base[3].key)
    assert int(gained.sum()) in (M * 2 // 11, M * 2 // 11 + 1)
    # Every slot the heavier real gained came from someone; little else moves.
    churn = int(((before != after) & ~gained).sum())
    assert churn < SURVIVOR_CHURN_BOUND


# --- determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=25, deadline=None)
@given(
    keys=st.sets(st.binary(min_size=17, max_size=17), min_size=1, max_size=30),
    data=st.data(),
    size=st.sampled_from([13, 251, 65537]),
)
def test_order_of_input_does_not_matter(
    impl: Impl, keys: set[bytes], data: st.DataObject, size: int
) -> None:
    rs = [
        MaglevReal(key=k, weight=data.draw(st.integers(min_value=0, max_value=3)))
        for k in sorted(keys)
    ]
    if not any(r.weight for r in rs):
        rs[0] = MaglevReal(key=rs[0].key, weight=1)
    shuffled = data.draw(st.permutations(rs))
    a, b = build_table(rs, size, impl=impl), build_table(shuffled, size, impl=impl)
    assert (a == b).all()
    assert fingerprint(a) == fingerprint(b)
    ids = {r.key: (i + 1, r.weight) for i, r in enumerate(rs)}
    shuffled_ids = dict(random.Random(0).sample(sorted(ids.items()), len(ids)))
    assert (build_ids(ids, size, impl=impl) == build_ids(shuffled_ids, size, impl=impl)).all()


GOLDEN_REALS = [
    MaglevReal(key=key("10.0.0.1"), weight=1),
    MaglevReal(key=key("10.0.0.2"), weight=2),
    MaglevReal(key=key("2001:db8::3"), weight=1),
]


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_vectors(impl: Impl) -> None:
    # Changing these changes which backend every director picks: a protocol change.
    small = build_table(GOLDEN_REALS, 13, impl=impl)
    assert small.tolist() == [2, 1, 2, 0, 2, 1, 1, 0, 1, 1, 1, 0, 1]
    assert fingerprint(small) == "e1d90a38a77c"
    assert fingerprint(build_table(GOLDEN_REALS, impl=impl)) == "256587309087"
    assert fingerprint(build_table(reals(100), impl=impl)) == "b2a464f54c17"


def test_fingerprint_covers_size_and_content() -> None:
    t = np.arange(13, dtype=np.uint32)
    assert len(fingerprint(t)) == 12
    assert fingerprint(t) != fingerprint(t[::-1].copy())
    assert fingerprint(np.zeros(13, np.uint32)) != fingerprint(np.zeros(17, np.uint32))


# --- build_ids ----------------------------------------------------------------------------


def test_build_ids_maps_to_real_ids() -> None:
    members = {r.key: (100 + i, r.weight) for i, r in enumerate(GOLDEN_REALS)}
    ids = build_ids(members, 13)
    positions = build_table(GOLDEN_REALS, 13)
    order = canonical_order(GOLDEN_REALS)
    assert ids.tolist() == [members[order[p].key][0] for p in positions.tolist()]


def test_build_ids_with_no_weight_is_all_empty() -> None:
    assert not build_ids({}, 13).any()
    assert not build_ids({key("10.0.0.1"): (7, 0)}, 13).any()
    assert build_ids({}, 13).dtype == np.uint32


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 4, 65536, 65535, 2**31 + 11])
def test_rejects_bad_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="size"):
        build_table(reals(2), size)
    with pytest.raises(ValueError, match="size"):
        build_ids({}, size)


def test_rejects_duplicates_negative_weights_and_empty_sets() -> None:
    dup = [*reals(2), MaglevReal(key=reals(1)[0].key, weight=3)]
    with pytest.raises(ValueError, match="duplicate"):
        build_table(dup, 13)
    with pytest.raises(ValueError, match="negative"):
        MaglevReal(key=key("10.0.0.1"), weight=-1)
    with pytest.raises(ValueError, match="negative"):
        build_ids({key("10.0.0.1"): (1, -1)}, 13)
    with pytest.raises(ValueError, match="weight > 0"):
        build_table([], 13)
    with pytest.raises(ValueError, match="weight > 0"):
        build_table([MaglevReal(key=key("10.0.0.1"), weight=0)], 13)
    with pytest.raises(ValueError, match="uint32"):
        build_ids({key("10.0.0.1"): (2**32, 1)}, 13)


# --- the compiled fill against the numpy one ------------------------------------------
# Peers compare tables by fingerprint, so the helper must reproduce the numpy path
# bit for bit, on every input: many reals, few slots, skewed weights, big tables.


@settings(max_examples=150, deadline=None)
@given(
    members=st.dictionaries(
        st.binary(min_size=1, max_size=17),
        st.one_of(
            st.integers(min_value=0, max_value=4),
            st.integers(min_value=0, max_value=10**6),
        ),
        min_size=1,
        max_size=120,
    ).filter(lambda m: any(m.values())),
    size=st.sampled_from([3, 5, 13, 101, 1009, 4099, 65537]),
)
def test_native_fill_equals_numpy_fill(members: dict[bytes, int], size: int) -> None:
    rs = [MaglevReal(key=k, weight=w) for k, w in members.items()]
    native = build_table(rs, size, impl="native")
    numpy_ = build_table(rs, size, impl="numpy")
    assert native.dtype == numpy_.dtype == np.uint32
    assert native.tobytes() == numpy_.tobytes()


@pytest.mark.parametrize(
    ("n", "size", "seed"),
    [(1000, M, 1), (2000, M, 2), (300, 131071, 3), (50, 262139, 4), (5000, 4099, 5)],
)
def test_native_equals_numpy_at_scale(n: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    members = {
        bytes([4]) + rng.bytes(16): (i + 1, int(rng.choice([0, 1, 1, 2, 3, 50]))) for i in range(n)
    }
    native = build_ids(members, size, impl="native")
    assert native.tobytes() == build_ids(members, size, impl="numpy").tobytes()


def test_native_builds_in_parallel_threads_match_sequential_ones() -> None:
    # The helper drops the GIL and each thread lends it its own scratch memory.
    rng = np.random.default_rng(11)
    sets = [
        {bytes([4]) + rng.bytes(16): (i + 1, int(rng.integers(0, 4)) or 1) for i in range(n)}
        for n in (3, 40, 300, 40, 3, 300)
    ]
    sizes = [13, 4099, M, M, 101, 65521]
    expected = [build_ids(s, z, impl="numpy").tobytes() for s, z in zip(sets, sizes, strict=True)]
    got: dict[int, list[bytes]] = {}
    start = threading.Barrier(len(sets))

    def build(k: int) -> None:
        start.wait()
        got[k] = [build_ids(sets[k], sizes[k], impl="native").tobytes() for _ in range(5)]

    threads = [threading.Thread(target=build, args=(k,)) for k in range(len(sets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, want in enumerate(expected):
        assert got[k] == [want] * 5


def test_unknown_impl_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, native or numpy"):
        build_table(reals(3), 13, impl="fast")  # type: ignore[arg-type]


def test_native_fill_refuses_inconsistent_input() -> None:
    one = np.array([1, 1], dtype=np.int64)
    value = np.array([5, 6], dtype=np.uint32)
    with pytest.raises(ValueError, match="sum to 13"):
        maglev_native.fill(one, one, np.array([6, 6], dtype=np.int64), value, 13)
    with pytest.raises(ValueError, match="sum to 13"):
        maglev_native.fill(one, np.array([1, 13]), np.array([6, 7]), value, 13)
    with pytest.raises(ValueError, match="one entry per real"):
        maglev_native.fill(one, one, np.array([6, 7]), value[:1], 13)
    table = maglev_native.fill(one, np.array([1, 2]), np.array([6, 7]), value, 13)
    assert np.bincount(table, minlength=7)[5:].tolist() == [6, 7]


def _forget_helper(monkeypatch: pytest.MonkeyPatch, library: Path) -> None:
    monkeypatch.setattr(maglev_native, "LIBRARY", library)
    monkeypatch.setattr(maglev_native, "_loaded", False)
    monkeypatch.setattr(maglev_native, "_lib", None)


def test_missing_helper_falls_back_to_numpy_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    expected = build_table(GOLDEN_REALS, impl="native")
    _forget_helper(monkeypatch, tmp_path / "absent.so")
    with caplog.at_level(logging.WARNING, logger="carom.maglev"):
        first = build_table(GOLDEN_REALS)
        second = build_ids({r.key: (7, r.weight) for r in GOLDEN_REALS})
    assert first.tobytes() == expected.tobytes()
    assert set(second.tolist()) == {7}
    warnings = [r for r in caplog.records if "numpy path" in r.getMessage()]
    assert len(warnings) == 1
    assert not maglev_native.available()
    with pytest.raises(RuntimeError, match="not available"):
        build_table(GOLDEN_REALS, impl="native")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a stale helper")
def test_helper_from_other_source_version_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    stale = tmp_path / "stale.so"
    source = Path(maglev_native.__file__).with_name("maglev_fill.c")
    subprocess.run(
        ["gcc", "-O0", "-shared", "-fPIC", "-DCAROM_MAGLEV_ABI=99", str(source), "-o", str(stale)],
        check=True,
        timeout=60,
    )
    _forget_helper(monkeypatch, stale)
    with caplog.at_level(logging.WARNING, logger="carom.maglev"):
        assert not maglev_native.available()
    assert "ABI 99" in caplog.text


# --- the shared table cache ----------------------------------------------------------------


def members_of(rs: list[MaglevReal]) -> dict[bytes, tuple[int, int]]:
    return {r.key: (ident(r.key), r.weight) for r in rs}


def test_cache_builds_each_member_set_once_and_shares_it() -> None:
    cache = TableCache()
    a = members_of(reals(10))
    row = cache.row(a, 101)
    again = cache.row(dict(reversed(list(a.items()))), 101)  # same set, other order
    assert again is row
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    assert row.ids.tobytes() == build_ids(a, 101).tobytes()
    assert row.fingerprint == fingerprint(build_ids(a, 101))
    with pytest.raises(ValueError, match="read-only"):
        row.ids[0] = 0
    # Any change of weight, id, member or size is another table.
    heavier = {**a, next(iter(a)): (next(iter(a.values()))[0], 2)}
    other_id = {**a, next(iter(a)): (999, 1)}
    fewer = dict(list(a.items())[1:])
    for variant, size in ((heavier, 101), (other_id, 101), (fewer, 101), (a, 103)):
        assert cache.row(variant, size) is not row
    assert (cache.hits, cache.misses, len(cache)) == (1, 5, 5)
    assert cache.build_ids(a, 101) is row.ids


def test_cache_is_bounded_in_bytes_and_evicts_least_recently_used() -> None:
    cache = TableCache(max_bytes=2 * 13 * 4)  # two 13-slot tables
    sets = [members_of(reals(3, first=1 + 10 * i)) for i in range(3)]
    first = cache.row(sets[0], 13)
    cache.row(sets[1], 13)
    assert cache.row(sets[0], 13) is first  # now the most recently used
    cache.row(sets[2], 13)  # evicts sets[1]
    assert (len(cache), cache.nbytes) == (2, 2 * 13 * 4)
    assert cache.row(sets[0], 13) is first
    misses = cache.misses
    cache.row(sets[1], 13)
    assert cache.misses == misses + 1
    cache.clear()
    assert (len(cache), cache.nbytes) == (0, 0)


def test_cache_refuses_bad_input_and_stores_nothing() -> None:
    cache = TableCache()
    with pytest.raises(ValueError, match="negative"):
        cache.row({key("10.0.0.1"): (1, -1)}, 13)
    with pytest.raises(ValueError, match="size"):
        cache.row(members_of(reals(2)), 12)
    assert (len(cache), cache.nbytes) == (0, 0)


def test_cache_shares_one_table_between_threads() -> None:
    cache = TableCache()
    members = members_of(reals(200))
    start = threading.Barrier(4)
    got: list[object] = []

    def build() -> None:
        start.wait()
        got.append(cache.row(members, M))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(g is got[0] for g in got)
    assert len(cache) == 1


def test_build_ids_cached_uses_the_shared_cache() -> None:
    members = members_of(reals(5, first=7000))
    row = build_ids_cached(members, 13)
    assert build_ids_cached(dict(members), 13) is row
    assert shared_cache.row(members, 13).ids is row
    assert row.tobytes() == build_ids(members, 13).tobytes()
