"""The flow hash of bpf/hash.h in Python: MurmurHash3 x86_32 over the ten
little-endian 32-bit words of a struct flow_key. `carom explain` and the
reference model use it to predict the Maglev slot of a flow; golden vectors in
tests/unit/test_flowhash.py pin it, and the packet table proves C agrees."""

from __future__ import annotations

import struct

SEED = 0x63A70B1D
_MASK = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _MASK


def murmur3_words(data: bytes, seed: int = SEED) -> int:
    """MurmurHash3 x86_32 of `data` (length a multiple of 4, no tail)."""
    if len(data) % 4:
        raise ValueError("murmur3_words needs a multiple of 4 bytes")
    h = seed
    for (k,) in struct.iter_unpack("<I", data):
        k = (k * 0xCC9E2D51) & _MASK
        k = _rotl(k, 15)
        k = (k * 0x1B873593) & _MASK
        h ^= k
        h = _rotl(h, 13)
        h = (h * 5 + 0xE6546B64) & _MASK
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def flow_hash(flow_key_bytes: bytes) -> int:
    """Hash of a packed struct flow_key (40 bytes)."""
    if len(flow_key_bytes) != 40:
        raise ValueError(f"a flow_key is 40 bytes, got {len(flow_key_bytes)}")
    return murmur3_words(flow_key_bytes)
