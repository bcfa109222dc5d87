"""Dataset registry: ``load_dataset(name, data_dir, seed)`` dispatches on the class-style
name used in a config's ``network.dataset`` (SPEC section 5)."""

import os
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class DatasetInfo:
    """What a config needs to know about a dataset before loading it, and how to load it."""

    dim: int  # D, the data dimension
    num_classes: int  # distinct labels
    build: Callable[[str | os.PathLike, int], Splits]  # (data_dir, seed) -> Splits


def _toy(generator: toy.Generator, num_train: int, num_classes: int) -> DatasetInfo:
    """A 2-D toy set: independent train/test (test half the size), no separate validation; toy
    sets are generated, never cached, so the data folder is unused."""

    def build(data_dir: str | os.PathLike, seed: int) -> Splits:
        train, test = toy.make_toy_splits(generator, num_train, seed)
        return Splits(train=train, test=test, valid=None, dim=2, num_classes=num_classes)

    return DatasetInfo(dim=2, num_classes=num_classes, build=build)


DATASETS: dict[str, DatasetInfo] = {
    "ToyGaussians": _toy(toy.gaussians, 16_380, 6),
    "ToyGaussiansSpiral": _toy(toy.gaussians_spiral, 16_380, 10),
    "ToySpirals2": _toy(toy.spirals2, 32_768, 2),
    "ToyMoons": _toy(toy.moons, 1_024, 2),
    "ToyConcentric": _toy(toy.concentric, 1_024, 2),
    "ToySpirals": _toy(toy.spirals, 2_048, 2),
}

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def load_dataset(name: str, data_dir: str | os.PathLike, seed: int) -> Splits:
    """Builds/loads dataset ``name``; ``data_dir`` caches downloaded real data (unused by toy sets).

    Raises ValueError naming ``name`` and listing DATASET_NAMES when it is unknown.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    return DATASETS[name].build(data_dir, seed)
