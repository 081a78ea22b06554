"""The Python flow hash equals reference MurmurHash3 and pinned golden values."""

from __future__ import annotations

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carom.sched.flowhash import SEED, flow_hash, murmur3_words


@given(st.binary(min_size=0, max_size=64).filter(lambda b: len(b) % 4 == 0))
def test_matches_reference_murmur3(data: bytes) -> None:
    assert murmur3_words(data) == mmh3.hash(data, SEED, signed=False)


def test_golden_values() -> None:
    # Changing these changes every director's choices: a protocol change.
    assert flow_hash(bytes(40)) == 0xAC799F24
    assert flow_hash(bytes(range(40))) == 0xA09DF1AC


def test_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        flow_hash(bytes(39))
