"""A trained model's final checkpoint in its run folder, and the one way the runner gets a trained
model: loaded from its checkpoint if that is there, else trained and saved (`load_or_train`).

The protocol, crash-safe at every point: while a model trains, its progress file and curve file are
kept up to date epoch by epoch (experiment/training/loop.py); once it has finished, `save` writes the
final checkpoint (which holds the curve too), then the curve file, then deletes the progress file, and
`load` completes the last two if a kill came in between. A checkpoint that cannot be loaded is set
aside (`*.corrupt-{time}`, logged) and its model trained again. Of several ranks training one model
together (experiment/distributed.py), rank 0 alone writes, completes or sets aside files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from experiment.files import atomic_torch_save, load_or_set_aside
from experiment.pruning.liveness import Masks
from experiment.results.tree import RunDir
from experiment.training.loop import TrainOutcome


@dataclass(frozen=True)
class Checkpoints:
    """The final checkpoints of the run folder `run`, loaded onto `device`; `leader`: this process is
    rank 0, the one that writes."""

    run: RunDir
    device: torch.device
    leader: bool

    def save(self, name: str, model: nn.Module, outcome: TrainOutcome, masks: Masks, extra: dict,
             progress: str | None) -> None:
        """The final checkpoint of model `name` (weights, `masks`, the training `outcome` and the
        entries of `extra`), then its curve file (which training kept up to date; written again for a
        model that was not retrained), then the progress file `progress` (a name) goes."""
        if not self.leader:
            return
        atomic_torch_save(self.run.checkpoint(name), {
            "model": model.state_dict(), "masks": masks, "train_seconds": outcome.seconds, "curve": outcome.curve,
            "epochs": len(outcome.curve), "kept_epoch": outcome.kept_epoch, "progress": progress or "", **extra,
        })
        self.run.write_curve(name, outcome.curve)
        if progress is not None:
            self.run.progress(progress).unlink(missing_ok=True)

    def load(self, name: str) -> dict | None:
        """The final checkpoint of model `name`, with the bookkeeping of `save` completed if it was
        interrupted; None if there is none, or if it is damaged (then set aside, and the model is to
        be trained again)."""
        checkpoint = load_or_set_aside(self.run.checkpoint(name), self.device, move=self.leader)
        if checkpoint is None or not self.leader:
            return checkpoint
        if not self.run.curve(name).exists():
            self.run.write_curve(name, checkpoint["curve"])
        if checkpoint["progress"]:
            self.run.progress(checkpoint["progress"]).unlink(missing_ok=True)
        return checkpoint


@dataclass(frozen=True)
class Training:
    """What a training callback of `load_or_train` hands back: the trained model and what its
    checkpoint records besides the weights."""

    model: nn.Module
    outcome: TrainOutcome
    masks: Masks
    progress: str | None  # the progress file it trained with, deleted once the checkpoint is written
    extra: dict = field(default_factory=dict)  # further checkpoint entries (a prune step's ratio history)


@dataclass(frozen=True)
class Trained:
    """A model `load_or_train` got: trained now (`fresh`) or loaded from its checkpoint."""

    model: nn.Module
    masks: Masks
    seconds: float  # wall time its training took, summed over resumed sessions
    epochs: int
    fresh: bool


def load_or_train(checkpoints: Checkpoints, name: str, new_model: Callable[[], nn.Module],
                  train: Callable[[], Training | None],
                  usable: Callable[[dict], bool] = lambda checkpoint: True) -> Trained | None:
    """Model `name`: a `new_model()` holding the weights of its checkpoint, if one loads and is
    `usable` (a prune step's is only for the same ratio history); else `train()`'s model, its
    checkpoint saved. None when training fails (`train()` returns None, having recorded why)."""
    checkpoint = checkpoints.load(name)
    if checkpoint is not None and usable(checkpoint):
        model = new_model()
        model.load_state_dict(checkpoint["model"])
        return Trained(model, checkpoint["masks"], checkpoint["train_seconds"], checkpoint["epochs"], fresh=False)
    training = train()
    if training is None:
        return None
    checkpoints.save(name, training.model, training.outcome, training.masks, training.extra, training.progress)
    return Trained(training.model, training.masks, training.outcome.seconds, len(training.outcome.curve), fresh=True)
