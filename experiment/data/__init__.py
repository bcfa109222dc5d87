"""Dataset registry: ``load_dataset(name, data_dir, seed)`` dispatches on the class-style
name used in a config's ``network.dataset`` (SPEC section 5)."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch.utils.data import TensorDataset

from experiment.data import toy


@dataclass(frozen=True)
class Splits:
    """A dataset's splits: each a TensorDataset of (x float32 [N, D], y int64 [N])."""

    train: TensorDataset
    test: TensorDataset
    valid: TensorDataset | None  # None: the caller carves a validation split out of train
    dim: int  # D, the data dimension
    num_classes: int  # distinct labels (modes for flow data, classes for classifiers)


Builder = Callable[[str | os.PathLike, int], Splits]


def _build_toy(
    generator: toy.Generator,
    num_train: int,
    num_classes: int,
    data_dir: str | os.PathLike,
    seed: int,
) -> Splits:
    """A 2-D toy set: independent train/test (test half the size), no separate validation."""
    del data_dir  # toy sets are generated, never cached
    train, test = toy.make_toy_splits(generator, num_train, seed)
    return Splits(train=train, test=test, valid=None, dim=2, num_classes=num_classes)


_BUILDERS: dict[str, Builder] = {
    "ToyGaussians": partial(_build_toy, toy.gaussians, 16_380, 6),
    "ToyGaussiansSpiral": partial(_build_toy, toy.gaussians_spiral, 16_380, 10),
    "ToySpirals2": partial(_build_toy, toy.spirals2, 32_768, 2),
    "ToyMoons": partial(_build_toy, toy.moons, 1_024, 2),
    "ToyConcentric": partial(_build_toy, toy.concentric, 1_024, 2),
    "ToySpirals": partial(_build_toy, toy.spirals, 2_048, 2),
}

DATASET_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def load_dataset(name: str, data_dir: str | os.PathLike, seed: int) -> Splits:
    """Builds/loads dataset ``name``; ``data_dir`` caches downloaded real data (unused by toy sets).

    Raises ValueError naming ``name`` and listing DATASET_NAMES when it is unknown.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    return _BUILDERS[name](data_dir, seed)
