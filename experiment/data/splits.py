"""A dataset's splits (`Splits`, what every loader of the registry returns) and the deterministic
train/validation split of a training set's row indices, for datasets without their own validation set."""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset


@dataclass(frozen=True)
class Splits:
    """A dataset's splits: each a TensorDataset of (x float32 [N, D], y int64 [N]); image datasets'
    x is [N, C, H, W] with D = C·H·W."""

    train: TensorDataset
    test: TensorDataset
    valid: TensorDataset | None  # None: the caller carves a validation split out of train
    dim: int  # D, the data dimension
    num_classes: int  # distinct labels (modes for flow data, classes for classifiers)


def train_valid_indices(
    num_train: int, seed: int, valid_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(num_train)`` by a random permutation from ``np.random.default_rng(seed)``.

    The first ``round(valid_fraction · num_train)`` permuted indices form the validation
    split, the rest the training split. Returns ``(train_idx, valid_idx)``, each sorted
    int64: disjoint, and together all of ``range(num_train)``.
    """
    if not 0.0 <= valid_fraction <= 1.0:
        raise ValueError(f"valid_fraction must lie in [0, 1], got {valid_fraction}")
    permutation = np.random.default_rng(seed).permutation(num_train).astype(np.int64)
    num_valid = round(valid_fraction * num_train)
    return np.sort(permutation[num_valid:]), np.sort(permutation[:num_valid])


def split_tensors(splits: Splits, indices: tuple[np.ndarray, np.ndarray] | None
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "valid", "test"} → (x, y) tensors of a dataset's `Splits`; a dataset without its
    own validation set is split by `indices` = (train_idx, valid_idx) (see train_valid_indices)."""
    x_train, y_train = splits.train.tensors
    if splits.valid is None:
        train_index, valid_index = indices
        return {"train": (x_train[train_index], y_train[train_index]),
                "valid": (x_train[valid_index], y_train[valid_index]),
                "test": splits.test.tensors}
    return {"train": (x_train, y_train), "valid": splits.valid.tensors, "test": splits.test.tensors}
