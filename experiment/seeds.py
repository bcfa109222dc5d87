"""Seeds derived from the config's `seed`, so every random choice is reproducible and independent, and
the explicit torch generators seeded with them that every random draw of a run comes from."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 31-bit seed determined by the config seed and a path of keys, e.g. (seed, "net", 2, "epoch", 7)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seeded_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch generator on `device` seeded with `seed`: it yields the stream the device's default
    generator yields after `torch.manual_seed(seed)`, without touching that global state."""
    return torch.Generator(device=device).manual_seed(seed)
