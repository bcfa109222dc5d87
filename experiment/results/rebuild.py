"""A run's model and data rebuilt from its settings: the one recipe for both the runner, which trains
the run and writes its folder, and `Run` (experiment/results/run.py), which reads it back, so that a
reader gets the very model and data splits the run's models were trained and measured with."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from experiment.data import load_dataset
from experiment.data.splits import split_tensors, train_valid_indices
from experiment.config.settings import NetworkSettings, Settings
from experiment.models import build_model
from experiment.results.tree import RunDir, read_split
from experiment.seeds import derive_seed


def build_run_model(network: NetworkSettings, device: str | torch.device,
                    generator: torch.Generator | None = None) -> nn.Module:
    """A new (untrained) model of the run's `network` settings, on `device`, its parameters drawn on
    the CPU from `generator` (None: the global default generator; see `build_model`)."""
    return build_model(network.name, network.output_size, network.atol, network.rtol, network.max_steps,
                       generator, network.solver_backend).to(device)


@dataclass(frozen=True)
class RunData:
    """A run's data, as its models saw it (on the CPU)."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # "train", "valid", "test" → (x, y)
    dim: int  # D, the data dimension
    split_drawn: bool = False  # the train/valid split was drawn again in memory (no data_split.npz)


def load_run_data(settings: Settings, run: RunDir, *, make_split: bool = False, draw_missing_split: bool = False) -> RunData:
    """The run's dataset split as its models were trained: a dataset without a validation set of its
    own is split by the run folder's persisted data_split.npz. With `make_split` (the runner) the
    split file is made from the settings' seed on first use, under its lock; without (a reader, which
    never writes), it must be there — or, with `draw_missing_split` (a copy of a run trimmed to its
    results), is drawn again in memory from the seed as the runner drew it: the same split as long as
    the dataset and experiment/data/splits.py are unchanged since the run."""
    seed = settings.seed
    splits = load_dataset(settings.network.dataset, settings.directories.training_data, derive_seed(seed, "data"))
    indices, drawn = None, False
    if splits.valid is None:
        num_train = len(splits.train)
        draw = lambda: train_valid_indices(num_train, derive_seed(seed, "split"))  # noqa: E731
        if make_split:
            indices = run.data_split(draw)
        elif draw_missing_split and not run.split_file.exists():
            indices, drawn = draw(), True
        else:
            indices = read_split(run.split_file)
    return RunData(split_tensors(splits, indices), splits.dim, drawn)
