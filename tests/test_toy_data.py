"""Toy datasets and the train/validation index split (SPEC section 5)."""

import numpy as np
import pytest
import torch

from experiment.data import DATASET_NAMES, Splits, load_dataset
from experiment.data.splits import train_valid_indices
from experiment.data.toy import make_toy_set

SIZES = {
    "ToyGaussians": (16_380, 8_190, 6),
    "ToyGaussiansSpiral": (16_380, 8_190, 10),
    "ToySpirals2": (32_768, 16_384, 2),
    "ToyMoons": (1_024, 512, 2),
    "ToyConcentric": (1_024, 512, 2),
    "ToySpirals": (2_048, 1_024, 2),
}


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
    the spec's centres r_k (cos 2πk/6, sin 2πk/6), r_k = 4 → 1, then check the mode stds."""
    x, y = arrays(loaded["ToyGaussiansSpiral"].train)
    angles = 2 * np.pi * np.arange(10) / 6
    centres = np.linspace(4.0, 1.0, 10)[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
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
    """Arm 1 is arm 0 negated (before noise), so the arm means mirror each other."""
    x, y = arrays(loaded[name].train)
    centre = x.mean(axis=0)
    mean0 = x[y == 0].mean(axis=0) - centre
    mean1 = x[y == 1].mean(axis=0) - centre
    np.testing.assert_allclose(mean0, -mean1, atol=0.05)
    assert np.linalg.norm(mean0) > 0.1


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
