"""Dataset registry: ``load_dataset(name, data_dir, seed)`` dispatches on the class-style
name used in a config's ``network.dataset`` (docs/DATASETS.md). The loaders live in ``toy``, ``tabular``
and ``images``, each module holding its datasets' shapes, which the registry reads from there."""

import os
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import TensorDataset

from experiment.data import images, tabular, toy
from experiment.data.splits import Splits


@dataclass(frozen=True)
class DatasetInfo:
    """What a config needs to know about a dataset before loading it, and how to load it."""

    dim: int  # D, the data dimension
    num_classes: int  # distinct labels
    build: Callable[[str | os.PathLike, int], Splits]  # (data_dir, seed) -> Splits
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of image datasets, None otherwise
    revision: int = 1  # raised whenever the same name and seed start to give other data
    generated: bool = False  # made in memory from the seed (toy sets): loading it reads and writes no file


def _toy(generator: toy.Generator, num_train: int, num_classes: int, revision: int = 1) -> DatasetInfo:
    """A 2-D toy set: independent train/test (test half the size), no separate validation; toy
    sets are generated, never cached, so the data folder is unused."""

    def build(data_dir: str | os.PathLike, seed: int) -> Splits:
        train, test = toy.make_toy_splits(generator, num_train, seed)
        return Splits(train=train, test=test, valid=None, dim=toy.DIM, num_classes=num_classes)

    return DatasetInfo(dim=toy.DIM, num_classes=num_classes, build=build, revision=revision, generated=True)


def _image(load: Callable[[str | os.PathLike, int], tuple[TensorDataset, TensorDataset]],
           shape: tuple[int, int, int]) -> DatasetInfo:
    """An image set of 10 classes: x [N, C, H, W] holding 8-bit values as k/255; no separate
    validation split."""
    dim = shape[0] * shape[1] * shape[2]

    def build(data_dir: str | os.PathLike, seed: int) -> Splits:
        train, test = load(data_dir, seed)
        return Splits(train=train, test=test, valid=None, dim=dim, num_classes=10)

    return DatasetInfo(dim=dim, num_classes=10, build=build, image_shape=shape)


def _tabular(name: str, build: Callable[[str | os.PathLike, int], Splits]) -> DatasetInfo:
    """A MAF tabular density set: its own fixed validation split, every label 0."""
    return DatasetInfo(dim=tabular.DIMS[name], num_classes=1, build=build)


DATASETS: dict[str, DatasetInfo] = {
    # revision 2: the generators follow the paper's torchdyn 1.0.1 formulas (runs of revision 1 are not reused)
    "ToyGaussians": _toy(toy.gaussians, 16_380, 6, revision=2),
    "ToyGaussiansSpiral": _toy(toy.gaussians_spiral, 16_380, 10, revision=2),
    "ToySpirals2": _toy(toy.spirals2, 32_768, 2, revision=2),
    "ToyMoons": _toy(toy.moons, 1_024, 2, revision=2),
    "ToyConcentric": _toy(toy.concentric, 1_024, 2),
    "ToySpirals": _toy(toy.spirals, 2_048, 2, revision=2),
    "Power": _tabular("Power", tabular.build_power),
    "Gas": _tabular("Gas", tabular.build_gas),
    "Hepmass": _tabular("Hepmass", tabular.build_hepmass),
    "Miniboone": _tabular("Miniboone", tabular.build_miniboone),
    "Bsds300": _tabular("Bsds300", tabular.build_bsds300),
    "MNIST": _image(lambda data_dir, seed: images.load_mnist(data_dir), images.MNIST_SHAPE),
    "CIFAR10": _image(lambda data_dir, seed: images.load_cifar10(data_dir), images.CIFAR_SHAPE),
    "Digits": _image(lambda data_dir, seed: images.load_digits_splits(seed), images.DIGITS_SHAPE),
}

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def load_dataset(name: str, data_dir: str | os.PathLike, seed: int) -> Splits:
    """Builds/loads dataset ``name``; ``data_dir`` caches downloaded real data (unused by toy sets).

    Raises ValueError naming ``name`` and listing DATASET_NAMES when it is unknown.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    return DATASETS[name].build(data_dir, seed)
