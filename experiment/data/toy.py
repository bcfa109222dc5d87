"""Seeded 2-D toy datasets (docs/DATASETS.md): the paper's generators (torchdyn 1.0.1 ``ToyDataset``).

Each generator is a plain function ``generator(num_samples, rng) -> (x, y)`` returning
``x`` float64 [N, 2] and ``y`` int64 [N] (the mode, arm or class of each point), in
generation order. Random numbers come only from the numpy Generator ``rng``, drawn in the
order torchdyn draws them; U below is uniform on [0, 1) (``rng.random``), N(0, I) standard
normal (``rng.standard_normal``). :func:`make_toy_splits` turns a generator into a train and a
test set: generated independently from two seeds, rows shuffled, and each set standardised with
its own single scalar mean and std over all coordinates.
"""

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

Generator = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]

DIM = 2
"""Every toy set is 2-D."""

TEST_SEED_OFFSET = 1_000_003
"""The test set of seed ``s`` is generated with seed ``s + TEST_SEED_OFFSET``."""

SPIRAL_MAX_ANGLE = np.deg2rad(780.0)
"""Largest arm angle θ of the two-arm spirals: 780° (2 1/6 turns), in radians."""

MODE_SHIFT_STD = 1e-3
"""Scale of the one random shift ``MODE_SHIFT_STD · N(0, I)`` added to all points of a Gaussian
mode (torchdyn's ``noise``)."""


def block_sizes(num_samples: int, num_blocks: int) -> np.ndarray:
    """Sizes of ``num_blocks`` consecutive blocks covering ``num_samples`` points as evenly as
    possible: ``N // K`` each, the first ``N mod K`` blocks one more."""
    sizes = np.full(num_blocks, num_samples // num_blocks)
    sizes[: num_samples % num_blocks] += 1
    return sizes


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Labels 0..K-1 in consecutive blocks of :func:`block_sizes`."""
    return np.repeat(np.arange(num_classes, dtype=np.int64), block_sizes(num_samples, num_classes))


def gaussian_modes(
    num_samples: int,
    rng: np.random.Generator,
    angles: np.ndarray,
    radii: np.ndarray,
    stds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mode k (label k, placed in this order) gets a block of :func:`block_sizes` points

        x = r_k (cos a_k, sin a_k) + std_k · N(0, I) + MODE_SHIFT_STD · s_k,   s_k ~ N(0, I),

    with one shift ``s_k`` shared by all points of the mode. Per mode, the point draws come
    first, then the shift."""
    xs = []
    for angle, radius, std, size in zip(angles, radii, stds, block_sizes(num_samples, len(angles))):
        centre = radius * np.array([np.cos(angle), np.sin(angle)])
        points = centre + std * rng.standard_normal((size, 2))
        xs.append(points + MODE_SHIFT_STD * rng.standard_normal(2))
    return np.concatenate(xs), balanced_labels(num_samples, len(angles))


def gaussians(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """6 Gaussians of std 0.5 on a circle of radius 4 (:func:`gaussian_modes`). The angle starts
    at 0 and grows by 2π/6 before each mode is placed, so mode i = 1..6 (label i − 1) is at angle
    2πi/6. ToyGaussians: 16,380 train points, 2,730 per mode."""
    num_modes = 6
    angles = 2 * np.pi * np.arange(1, num_modes + 1) / num_modes
    return gaussian_modes(
        num_samples, rng, angles, radii=np.full(num_modes, 4.0), stds=np.full(num_modes, 0.5)
    )


def gaussians_spiral(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """10 Gaussians along a spiral, 6 per loop (:func:`gaussian_modes`): the angle grows by 2π/6
    before each mode is placed, so mode i = 1..10 (label i − 1) is at angle 2πi/6, with radius
    ``linspace(4, 1, 10)[i − 1]`` and std ``linspace(0.3, 0.1, 10)[i − 1]``."""
    num_modes, modes_per_loop = 10, 6
    angles = 2 * np.pi * np.arange(1, num_modes + 1) / modes_per_loop
    return gaussian_modes(
        num_samples,
        rng,
        angles,
        radii=np.linspace(4.0, 1.0, num_modes),
        stds=np.linspace(0.3, 0.1, num_modes),
    )


def two_spirals(
    num_samples: int, rng: np.random.Generator, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two-arm spiral of ``n = num_samples / 2`` points per arm: ``θ = sqrt(U) · 780°`` (in
    radians), arm 1 (label 0) at ``(−θ cos θ + noise · U, θ sin θ + noise · U)`` with two
    independent U per point, arm 2 (label 1) the same noisy points negated. Draw order: the n
    angles, then the n x-noises, then the n y-noises. ``num_samples`` must be even."""
    if num_samples % 2:
        raise ValueError(f"two mirrored spiral arms need an even point count, got {num_samples}")
    per_arm = num_samples // 2
    theta = np.sqrt(rng.random((per_arm, 1))) * SPIRAL_MAX_ANGLE
    arm_x = -np.cos(theta) * theta + noise * rng.random((per_arm, 1))
    arm_y = np.sin(theta) * theta + noise * rng.random((per_arm, 1))
    arm = np.hstack([arm_x, arm_y])
    return np.vstack([arm, -arm]), balanced_labels(num_samples, 2)


def spirals2(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two-arm spiral density for flows: :func:`two_spirals` with noise 0.5."""
    return two_spirals(num_samples, rng, noise=0.5)


def spirals(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two-arm spiral classification: :func:`two_spirals` with noise 0.9."""
    return two_spirals(num_samples, rng, noise=0.9)


def noiseless_moons(num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's two interleaving half circles without noise: outer (label 0, ``N // 2``
    points) ``(cos t, sin t)``, inner (label 1, the other ``N − N // 2``) ``(1 − cos t,
    1 − sin t − 0.5)``, each with ``t = linspace(0, π, points of that moon)``."""
    num_outer = num_samples // 2
    num_inner = num_samples - num_outer
    outer = np.linspace(0.0, np.pi, num_outer)
    inner = np.linspace(0.0, np.pi, num_inner)
    x = np.vstack(
        [
            np.stack([np.cos(outer), np.sin(outer)], axis=1),
            np.stack([1 - np.cos(inner), 1 - np.sin(inner) - 0.5], axis=1),
        ]
    )
    return x, np.repeat(np.array([0, 1], dtype=np.int64), [num_outer, num_inner])


def moons(num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two moons (:func:`noiseless_moons`) plus ``0.1 · U`` with ONE uniform draw per point,
    added to both of its coordinates (a shift along (1, 1))."""
    x, y = noiseless_moons(num_samples)
    return x + 0.1 * rng.random((num_samples, 1)), y


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
