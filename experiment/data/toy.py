"""Seeded 2-D toy datasets (SPEC section 5).

Each generator is a plain function ``generator(num_samples, rng) -> (x, y)`` returning
``x`` float64 [N, 2] and ``y`` int64 [N] (the mode, arm or class of each point), in
generation order. :func:`make_toy_splits` turns a generator into a train and a test set:
generated independently from two seeds, rows shuffled, and each set standardised with its
own single scalar mean and std over all coordinates.
"""

from collections.abc import Callable

import numpy as np
import torch
from sklearn.datasets import make_moons
from torch.utils.data import TensorDataset

Generator = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]

TEST_SEED_OFFSET = 1_000_003
"""The test set of seed ``s`` is generated with seed ``s + TEST_SEED_OFFSET``."""

SPIRAL_MAX_ANGLE = np.deg2rad(540.0)
"""Largest arm angle of the two-arm spirals (1.5 turns)."""


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Labels 0..K-1 in blocks of equal size (the first ``N mod K`` labels get one extra)."""
    counts = np.full(num_classes, num_samples // num_classes)
    counts[: num_samples % num_classes] += 1
    return np.repeat(np.arange(num_classes, dtype=np.int64), counts)


def gaussian_mixture(
    centres: np.ndarray, stds: np.ndarray, num_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Equal-weight isotropic mixture: point of mode k is ``centres[k] + stds[k] * N(0, I)``."""
    y = balanced_labels(num_samples, len(centres))
    x = centres[y] + stds[y, None] * rng.standard_normal((num_samples, 2))
    return x, y


def gaussians(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """6 Gaussians, std 0.5, centred at ``4 (cos θ_k, sin θ_k)`` with ``θ_k = 2πk/6``."""
    angles = 2 * np.pi * np.arange(6) / 6
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return gaussian_mixture(centres, np.full(6, 0.5), num_samples, rng)


def gaussians_spiral(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """10 Gaussians along a spiral: mode k at angle ``2πk/6`` (6 per loop), radius
    linearly 4 → 1 and std linearly 0.3 → 0.1 over k = 0..9."""
    angles = 2 * np.pi * np.arange(10) / 6
    radii = np.linspace(4.0, 1.0, 10)
    centres = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return gaussian_mixture(centres, np.linspace(0.3, 0.1, 10), num_samples, rng)


def two_spirals(
    num_samples: int, rng: np.random.Generator, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two-arm spiral: ``n = sqrt(U[0,1)) · 540°``, arm 0 at ``(−n cos n, n sin n)``, arm 1 at
    its negation, each plus ``noise · U[0,1)`` per coordinate; label = arm."""
    y = balanced_labels(num_samples, 2)
    n = np.sqrt(rng.random(num_samples)) * SPIRAL_MAX_ANGLE
    arm = np.stack([-np.cos(n) * n, np.sin(n) * n], axis=1)
    sign = np.where(y == 0, 1.0, -1.0)[:, None]
    x = sign * arm + noise * rng.random((num_samples, 2))
    return x, y


def spirals2(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two-arm spiral density for flows: :func:`two_spirals` with noise 0.5."""
    return two_spirals(num_samples, rng, noise=0.5)


def spirals(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two-arm spiral classification: :func:`two_spirals` with noise 0.9."""
    return two_spirals(num_samples, rng, noise=0.9)


def moons(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's two interleaving half circles with Gaussian noise std 0.1; label = moon."""
    seed = int(rng.integers(2**31 - 1))
    x, y = make_moons(n_samples=num_samples, noise=0.1, shuffle=False, random_state=seed)
    return x, y.astype(np.int64)


def concentric(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric circles, radius 0.75 (label 0) and 1.5 (label 1), in equal halves:
    ``r_y (cos φ, sin φ) + 0.1 · N(0, I)`` with ``φ ~ U[0, 2π)``."""
    y = balanced_labels(num_samples, 2)
    radii = np.array([0.75, 1.5])[y]
    phi = 2 * np.pi * rng.random(num_samples)
    circle = radii[:, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    x = circle + 0.1 * rng.standard_normal((num_samples, 2))
    return x, y


def standardise(x: np.ndarray) -> np.ndarray:
    """``(x − mean(x)) / std(x)`` with one scalar mean and std over all coordinates."""
    return (x - x.mean()) / x.std()


def make_toy_set(generator: Generator, num_samples: int, seed: int) -> TensorDataset:
    """One seeded set: generate, shuffle the rows (labels aligned), standardise (scalar)."""
    rng = np.random.default_rng(seed)
    x, y = generator(num_samples, rng)
    order = rng.permutation(num_samples)
    x = standardise(x[order])
    return TensorDataset(
        torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y[order].astype(np.int64))
    )


def make_toy_splits(
    generator: Generator, num_train: int, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    """Train (``num_train`` points, seed ``seed``) and an independently generated test set
    (``num_train // 2`` points, seed ``seed + TEST_SEED_OFFSET``)."""
    train = make_toy_set(generator, num_train, seed)
    test = make_toy_set(generator, num_train // 2, seed + TEST_SEED_OFFSET)
    return train, test
