"""Toy datasets and the train/validation index split (docs/DATASETS.md)."""

import numpy as np
import pytest
import torch

from experiment.data import DATASET_NAMES, Splits, load_dataset
from experiment.data.splits import train_valid_indices
from experiment.data import toy
from experiment.data.toy import make_toy_set

SIZES = {
    "ToyGaussians": (16_380, 8_190, 6),
    "ToyGaussiansSpiral": (16_380, 8_190, 10),
    "ToySpirals2": (32_768, 16_384, 2),
    "ToyMoons": (1_024, 512, 2),
    "ToyConcentric": (1_024, 512, 2),
    "ToySpirals": (2_048, 1_024, 2),
}


SPIRAL_MAX_ANGLE = 780 * 2 * np.pi / 360


def spiral_centres() -> np.ndarray:
    """Spec centres of ToyGaussiansSpiral: mode i = 1..10 at angle 2πi/6, radius 4 → 1."""
    angles = 2 * np.pi * np.arange(1, 11) / 6
    return np.linspace(4.0, 1.0, 10)[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)


@pytest.fixture(scope="module")
def loaded() -> dict[str, Splits]:
    return {name: load_dataset(name, "unused", seed=0) for name in SIZES}


def arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    x, y = dataset.tensors
    return x.numpy().astype(np.float64), y.numpy()


def test_registry_names():
    assert set(SIZES) <= set(DATASET_NAMES)


@pytest.mark.parametrize("name", list(SIZES))
def test_shapes_dtypes_and_sizes(loaded, name):
    num_train, num_test, num_classes = SIZES[name]
    splits = loaded[name]
    assert splits.valid is None
    assert splits.dim == 2
    assert splits.num_classes == num_classes
    for dataset, size in ((splits.train, num_train), (splits.test, num_test)):
        x, y = dataset.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (size, 2) and y.shape == (size,)
        assert set(y.unique().tolist()) == set(range(num_classes))


@pytest.mark.parametrize("name", list(SIZES))
def test_each_split_standardised_with_scalars(loaded, name):
    for dataset in (loaded[name].train, loaded[name].test):
        x, _ = arrays(dataset)
        assert abs(x.mean()) < 1e-5
        assert abs(x.std() - 1.0) < 1e-5


def test_standardisation_is_one_scalar_pair_not_per_column():
    """Rows carry their index as label, so the output can be matched to the raw data."""

    def raw(num_samples, rng):
        index = np.arange(num_samples)
        return np.stack([index, 10.0 * index + 3.0], axis=1), index

    x, y = arrays(make_toy_set(raw, 100, seed=0))
    source, _ = raw(100, None)
    expected = (source - source.mean()) / source.std()
    np.testing.assert_allclose(x, expected[y], atol=1e-5)
    assert not np.array_equal(y, np.arange(100))


@pytest.mark.parametrize("name", list(SIZES))
def test_balanced_labels(loaded, name):
    num_classes = SIZES[name][2]
    for dataset in (loaded[name].train, loaded[name].test):
        _, y = arrays(dataset)
        counts = np.bincount(y, minlength=num_classes)
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("name", list(SIZES))
def test_rows_shuffled(loaded, name):
    _, y = arrays(loaded[name].train)
    prefix = y[: len(y) // 10]
    assert len(np.unique(prefix)) == SIZES[name][2]


@pytest.mark.parametrize("name", list(SIZES))
def test_deterministic_in_seed_and_test_independent(loaded, name):
    again = load_dataset(name, "unused", seed=0)
    other = load_dataset(name, "unused", seed=1)
    for split in ("train", "test"):
        for a, b in zip(getattr(loaded[name], split).tensors, getattr(again, split).tensors):
            assert torch.equal(a, b)
        assert not torch.equal(
            getattr(loaded[name], split).tensors[0], getattr(other, split).tensors[0]
        )
    train_x = loaded[name].train.tensors[0]
    test_x = loaded[name].test.tensors[0]
    assert not torch.equal(train_x[: len(test_x)], test_x)


def test_gaussians_modes_on_circle(loaded):
    """Label means: equal norm, 60° apart in label order, norm/within-mode std = 4/0.5."""
    x, y = arrays(loaded["ToyGaussians"].train)
    means = np.stack([x[y == k].mean(axis=0) for k in range(6)])
    norms = np.linalg.norm(means, axis=1)
    np.testing.assert_allclose(norms, norms.mean(), rtol=0.02)
    angles = np.arctan2(means[:, 1], means[:, 0])
    steps = np.rad2deg(np.mod(np.diff(np.append(angles, angles[0])), 2 * np.pi))
    np.testing.assert_allclose(steps, 60.0, atol=1.5)
    within_std = np.mean([x[y == k].std(axis=0) for k in range(6)])
    assert norms.mean() / within_std == pytest.approx(8.0, rel=0.05)


def test_gaussians_spiral_geometry(loaded):
    """Scalar standardisation maps c ↦ a·c + t·(1, 1); fit (a, t) to the label means against
    the spec's centres r_i (cos 2πi/6, sin 2πi/6), i = 1..10, r = 4 → 1, then check the mode
    stds."""
    x, y = arrays(loaded["ToyGaussiansSpiral"].train)
    centres = spiral_centres()
    means = np.stack([x[y == k].mean(axis=0) for k in range(10)])
    design = np.stack([centres.ravel(), np.ones(20)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, means.ravel(), rcond=None)
    assert scale > 0
    np.testing.assert_allclose(design @ [scale, shift], means.ravel(), atol=0.02)
    stds = np.stack([x[y == k].std(axis=0) for k in range(10)])
    expected = np.repeat(np.linspace(0.3, 0.1, 10)[:, None], 2, axis=1)
    np.testing.assert_allclose(stds / scale, expected, rtol=0.1)


def test_concentric_radii_ratio(loaded):
    x, y = arrays(loaded["ToyConcentric"].train)
    radii = np.linalg.norm(x - x.mean(axis=0), axis=1)
    assert radii[y == 1].mean() / radii[y == 0].mean() == pytest.approx(2.0, rel=0.03)


@pytest.mark.parametrize("name", ["ToySpirals2", "ToySpirals"])
def test_spiral_arms_point_symmetric(loaded, name):
    """Arm 2 is the noisy arm 1 negated, so the raw mean is 0, standardisation keeps the point
    symmetry and each standardised arm is the other negated (as sets of points)."""
    x, y = arrays(loaded[name].train)
    arm0 = x[y == 0]
    arm1 = -x[y == 1]
    np.testing.assert_allclose(arm0[np.lexsort(arm0.T)], arm1[np.lexsort(arm1.T)], atol=1e-6)
    assert np.linalg.norm(arm0.mean(axis=0)) > 0.1


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="NoSuchData") as info:
        load_dataset("NoSuchData", "unused", seed=0)
    assert "ToyGaussians" in str(info.value)


@pytest.mark.parametrize("num_train", [0, 1, 10, 1_024, 16_381])
def test_train_valid_indices(num_train):
    train_idx, valid_idx = train_valid_indices(num_train, seed=3)
    assert train_idx.dtype == np.int64 and valid_idx.dtype == np.int64
    assert len(valid_idx) == round(0.1 * num_train)
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(valid_idx) > 0)
    assert not np.intersect1d(train_idx, valid_idx).size
    np.testing.assert_array_equal(np.union1d(train_idx, valid_idx), np.arange(num_train))
    again = train_valid_indices(num_train, seed=3)
    np.testing.assert_array_equal(again[0], train_idx)
    np.testing.assert_array_equal(again[1], valid_idx)


def test_train_valid_indices_depend_on_seed_and_fraction():
    _, valid_a = train_valid_indices(1_000, seed=0)
    _, valid_b = train_valid_indices(1_000, seed=1)
    assert not np.array_equal(valid_a, valid_b)
    _, valid_c = train_valid_indices(1_000, seed=0, valid_fraction=0.25)
    assert len(valid_c) == 250


# --- The generators against the paper's (torchdyn 1.0.1 ``ToyDataset``) formulas -------------
# Reference implementations written from the formulas, drawing from the rng in torchdyn's order.


def reference_spirals(n_per_arm, noise, rng):
    theta = np.sqrt(rng.random((n_per_arm, 1))) * 780 * (2 * np.pi) / 360
    d1x = -np.cos(theta) * theta + rng.random((n_per_arm, 1)) * noise
    d1y = np.sin(theta) * theta + rng.random((n_per_arm, 1)) * noise
    x = np.vstack((np.hstack((d1x, d1y)), np.hstack((-d1x, -d1y))))
    return x, np.hstack((np.zeros(n_per_arm), np.ones(n_per_arm))).astype(np.int64)


def reference_moons_noiseless(n):
    n_out, n_in = n // 2, n - n // 2
    t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    outer = np.stack([np.cos(t_out), np.sin(t_out)], axis=1)
    inner = np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], axis=1)
    return np.vstack([outer, inner]), np.hstack([np.zeros(n_out), np.ones(n_in)]).astype(np.int64)


def reference_moons(n, noise, rng):
    x, y = reference_moons_noiseless(n)
    return x + rng.random((n, 1)) * noise, y


def reference_gaussians_spiral(n_per_mode, k, per_loop, radii, stds, rng, noise=1e-3):
    """torchdyn's loop; with per_loop = K and constant radii/stds it is ``generate_gaussians``."""
    x = np.zeros((n_per_mode * k, 2))
    y = np.zeros(n_per_mode * k, dtype=np.int64)
    angle = 0.0
    for i in range(k):
        angle += 2 * np.pi / per_loop
        loc = np.array([radii[i] * np.cos(angle), radii[i] * np.sin(angle)])
        sample = loc + stds[i] * rng.standard_normal((n_per_mode, 2))
        x[i * n_per_mode : (i + 1) * n_per_mode] = sample + rng.standard_normal(2) * noise
        y[i * n_per_mode : (i + 1) * n_per_mode] = i
    return x, y


REFERENCES = {
    "spirals2": (toy.spirals2, 600, lambda rng: reference_spirals(300, 0.5, rng)),
    "spirals": (toy.spirals, 600, lambda rng: reference_spirals(300, 0.9, rng)),
    "moons": (toy.moons, 600, lambda rng: reference_moons(600, 0.1, rng)),
    "gaussians": (
        toy.gaussians,
        600,
        lambda rng: reference_gaussians_spiral(100, 6, 6, np.full(6, 4.0), np.full(6, 0.5), rng),
    ),
    "gaussians_spiral": (
        toy.gaussians_spiral,
        600,
        lambda rng: reference_gaussians_spiral(
            60, 10, 6, np.linspace(4.0, 1.0, 10), np.linspace(0.3, 0.1, 10), rng
        ),
    ),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_generator_matches_reference_implementation(name):
    generator, num_samples, reference = REFERENCES[name]
    x, y = generator(num_samples, np.random.default_rng(7))
    x_ref, y_ref = reference(np.random.default_rng(7))
    assert x.dtype == np.float64 and y.dtype == np.int64
    assert x.shape == (num_samples, 2) and y.shape == (num_samples,)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("generator, noise", [(toy.spirals2, 0.5), (toy.spirals, 0.9)])
def test_spiral_arm_two_is_arm_one_negated(generator, noise):
    x, y = generator(4_000, np.random.default_rng(3))
    np.testing.assert_array_equal(y, np.repeat([0, 1], 2_000))
    np.testing.assert_array_equal(x[2_000:], -x[:2_000])
    # The noise is not symmetric before the negation: arm 1 is shifted towards +(1, 1)·noise/2.
    noiseless, _ = toy.two_spirals(4_000, np.random.default_rng(3), noise=0.0)
    offset = x[:2_000] - noiseless[:2_000]
    assert offset.min() >= 0 and offset.max() < noise
    assert offset.max() > 0.95 * noise
    np.testing.assert_allclose(offset.mean(axis=0), noise / 2, rtol=0.1)
    assert abs(np.corrcoef(offset.T)[0, 1]) < 0.1  # one independent U per coordinate


def test_spiral_angle_range_is_780_degrees():
    """Noiseless arm 1 is (−θ cos θ, θ sin θ): its norm is θ, its polar angle π − θ (mod 2π)."""
    x, _ = toy.two_spirals(4_000, np.random.default_rng(5), noise=0.0)
    arm = x[:2_000]
    theta = np.linalg.norm(arm, axis=1)
    assert theta.min() >= 0 and theta.max() <= SPIRAL_MAX_ANGLE + 1e-12
    assert theta.max() > 0.99 * SPIRAL_MAX_ANGLE
    polar = np.arctan2(arm[:, 1], arm[:, 0])
    residual = np.mod(polar - (np.pi - theta) + np.pi, 2 * np.pi) - np.pi
    np.testing.assert_allclose(residual, 0.0, atol=1e-9)
    # θ = sqrt(U)·θ_max: θ² is uniform on [0, θ_max²), so its mean is θ_max²/2.
    assert np.mean(theta**2) / SPIRAL_MAX_ANGLE**2 == pytest.approx(0.5, abs=0.03)
    assert toy.SPIRAL_MAX_ANGLE == pytest.approx(SPIRAL_MAX_ANGLE)


def test_spirals_reject_odd_counts():
    with pytest.raises(ValueError, match="even"):
        toy.spirals(101, np.random.default_rng(0))


@pytest.mark.parametrize("num_samples", [1_024, 1_025])
def test_moons_one_uniform_offset_per_point(num_samples):
    x, y = toy.moons(num_samples, np.random.default_rng(11))
    noiseless, labels = reference_moons_noiseless(num_samples)
    np.testing.assert_array_equal(y, labels)
    offset = x - noiseless
    np.testing.assert_allclose(offset[:, 0], offset[:, 1], rtol=0, atol=1e-12)
    assert offset.min() >= 0 and offset.max() < 0.1
    assert offset.min() < 0.005 and offset.max() > 0.095
    assert offset.mean() == pytest.approx(0.05, abs=0.005)


def check_modes(x, y, centres, stds):
    """Label k's sample mean within 5 standard errors of centres[k]; sample stds within 10%."""
    for k, (centre, std) in enumerate(zip(centres, stds)):
        points = x[y == k]
        standard_error = std / np.sqrt(len(points))
        np.testing.assert_allclose(points.mean(axis=0), centre, atol=5 * standard_error + 5e-3)
        np.testing.assert_allclose(points.std(axis=0), std, rtol=0.1)


def test_gaussians_mode_i_at_angle_2pi_i_over_6():
    x, y = toy.gaussians(16_380, np.random.default_rng(13))
    np.testing.assert_array_equal(np.bincount(y), np.full(6, 2_730))
    assert np.all(np.diff(y) >= 0)  # labels in placement order
    angles = 2 * np.pi * np.arange(1, 7) / 6
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    check_modes(x, y, centres, np.full(6, 0.5))


def test_gaussians_spiral_modes_along_spiral():
    x, y = toy.gaussians_spiral(16_380, np.random.default_rng(17))
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 1_638))
    assert np.all(np.diff(y) >= 0)
    check_modes(x, y, spiral_centres(), np.linspace(0.3, 0.1, 10))
    radii = np.stack([np.linalg.norm(x[y == k].mean(axis=0)) for k in range(10)])
    np.testing.assert_allclose(radii, np.linspace(4.0, 1.0, 10), atol=0.03)


def test_gaussian_modes_share_one_shift_per_mode():
    """With zero std every point of a mode is centre + shift: one shift per mode, of size ~1e-3,
    different between modes."""
    angles = 2 * np.pi * np.arange(1, 5) / 4
    x, y = toy.gaussian_modes(
        400, np.random.default_rng(19), angles, radii=np.full(4, 2.0), stds=np.zeros(4)
    )
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    shifts = x - centres[y]
    for k in range(4):
        np.testing.assert_array_equal(shifts[y == k], np.tile(shifts[y == k][0], (100, 1)))
    per_mode = shifts[:: 100]
    assert np.all(np.abs(per_mode) < 5 * toy.MODE_SHIFT_STD)
    assert np.all(np.linalg.norm(per_mode, axis=1) > 0)
    assert len(np.unique(per_mode, axis=0)) == 4


def test_gaussian_modes_uneven_counts():
    """Counts not divisible by K: the first N mod K modes get one point more."""
    x, y = toy.gaussians(605, np.random.default_rng(0))
    assert x.shape == (605, 2)
    np.testing.assert_array_equal(np.bincount(y), [101, 101, 101, 101, 101, 100])
