"""Seeds derived from the config's `seed`, so every random choice is reproducible and independent."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *keys: object) -> int:
    """A 31-bit seed determined by the config seed and a path of keys, e.g. (seed, "net", 2, "epoch", 7)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
