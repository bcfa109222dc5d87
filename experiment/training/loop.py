"""The training loop: epochs of mini-batch steps, validation every epoch, a crash-safe checkpoint
after every epoch so that an interrupted run resumes where it stopped and ends bit-identically.
A model that diverges (non-finite parameters or losses, or a solve that cannot finish) stops with
TrainingFailed; its progress file keeps the last finite epoch.

On a terminal, tqdm bars show the epochs and batches; with output redirected (cluster jobs, logs)
their redraw frames would fill the file with cursor codes, so each epoch is one plain log line instead."""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from experiment.config.settings import Schedule
from experiment.data.transforms import Transform, identity
from experiment.distributed import SINGLE, Ranks
from experiment.models import SolverError, count_nfe, solver_errors, solver_options
from experiment.pruning.rules import apply_masks
from experiment.files import atomic_torch_save, load_or_set_aside, write_curve
from experiment.seeds import derive_seed, seeded_generator
from experiment.training.evaluate import evaluate
from experiment.training.losses import Loss
from experiment.training.optim import build_optimizer, build_schedulers

log = logging.getLogger("experiment")


@dataclass(frozen=True)
class TrainData:
    """Tensors already on the training device, and the per-batch transforms of training and
    evaluation batches (e.g. dequantisation noise, random flips for images)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    data_dim: int
    train_transform: Transform = identity
    eval_transform: Transform = identity


class TrainingFailed(RuntimeError):
    """Training cannot go on: at `epoch` (0-based) the model diverged or a solve failed (`reason`)."""

    def __init__(self, epoch: int, reason: str):
        super().__init__(f"epoch {epoch}: {reason}")
        self.epoch = epoch
        self.reason = reason


def finite_parameters(model: nn.Module) -> bool:
    """Are all parameters finite? One device sync, whatever the number of parameter tensors."""
    return bool(torch.stack([torch.isfinite(parameter).all() for parameter in model.parameters()]).all())


@dataclass(frozen=True)
class TrainOutcome:
    curve: list[dict]  # one row per epoch
    seconds: float  # wall time spent training, summed over resumed sessions
    kept_epoch: int  # the epoch whose weights the model now holds (best-validation or last)


def train(model: nn.Module, schedule: Schedule, data: TrainData, loss_fn: Loss, *, seed: int, progress_file: Path,
          masks: dict[str, torch.Tensor] | None = None, description: str = "train", progress_bars: bool = True,
          ranks: Ranks = SINGLE, curve_file: Path | None = None) -> TrainOutcome:
    """Trains `model` in place with `schedule` (a config's `training` or `retraining`).

    Epochs run from `schedule.start_epoch` to `num_epochs`; every epoch's batches and random numbers
    come from generators seeded from `seed` and the epoch (`epoch_generators`), so resuming from
    `progress_file` (written after each epoch) reproduces an uninterrupted run exactly. `masks`
    (parameter name → 0/1 tensor) are enforced after every optimizer step: pruned entries stay zero.
    The tqdm bars (of epochs and of batches) are drawn only with `progress_bars` and a terminal on
    stderr; otherwise each epoch is logged as one line (`epoch_line`) on the `experiment` logger. A
    progress file that cannot be loaded is set aside (logged) and training starts from the first epoch.

    `curve_file`, if given, holds the curve so far, rewritten atomically after every epoch (before the
    progress file, so it is never behind it), for watching a running job. At the start it is made to
    match the progress file's curve (removed when training starts afresh): rows a killed process
    wrote after its last progress file are dropped, so a resumed run's curve has every epoch once.

    With several `ranks` (experiment/distributed.py) every rank calls this with the same arguments:
    each batch is split over the ranks, validation runs on rank 0 only and its loss is shared, and
    only rank 0 writes the progress file and the curve file and logs epochs; all ranks end with the
    same model.

    Raises TrainingFailed when the parameters become non-finite after a step, an epoch's training
    or validation loss is non-finite, or a solve fails (SolverError, e.g. step-size underflow or
    more than `network.maxSteps` steps); the progress file then still holds the last finite epoch.
    The checks read what all ranks share (the parameters, the summed and shared losses), so every
    rank fails at the same step; a solve that fails on one rank only stops that rank alone.
    """
    masks = masks or {}
    optimizer = build_optimizer(model.parameters(), schedule.optimizer, schedule.optimizer_kwargs)
    schedulers = build_schedulers(optimizer, schedule.lr_schedulers)
    for _ in range(schedule.start_epoch):  # a later start means the schedule is already that far along
        for scheduler in schedulers:
            scheduler.step()
    state = {"epoch": schedule.start_epoch, "curve": [], "seconds": 0.0, "best": None}
    saved = load_or_set_aside(progress_file, data.x_train.device, move=ranks.leader)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for scheduler, scheduler_state in zip(schedulers, saved["schedulers"]):
            scheduler.load_state_dict(scheduler_state)
        state = {key: saved[key] for key in state}
    apply_masks(model, masks)
    trained = ranks.wrap(model)
    if curve_file is not None and ranks.leader:
        write_curve(curve_file, state["curve"])

    early_stop = schedule.early_stop_epoch
    bars = progress_bars and ranks.leader and sys.stderr.isatty()
    epochs = tqdm(range(state["epoch"], schedule.num_epochs), desc=description, initial=state["epoch"],
                  total=schedule.num_epochs, unit="epoch", dynamic_ncols=True, disable=not bars)
    for epoch in epochs:
        started = time.perf_counter()
        order_generator, noise_generator = epoch_generators(seed, epoch, data.x_train.device, ranks)
        order = torch.randperm(len(data.x_train), generator=order_generator, device=data.x_train.device)
        try:
            train_loss, nfe_forward, nfe_backward = _train_epoch(model, trained, optimizer, data, order, loss_fn,
                                                                 schedule.batch_size, masks, epoch, bars, ranks,
                                                                 noise_generator)
            valid_loss = ranks.from_leader(evaluate(model, data.x_valid, data.y_valid, schedule.test_batch_size, loss_fn,
                                                    [], data.data_dim, data.eval_transform, noise_generator).loss
                                           if ranks.leader else None)
        except SolverError as error:
            raise TrainingFailed(epoch, f"solver failed: {error}") from error
        for what, value in (("training", train_loss), ("validation", valid_loss)):
            if not math.isfinite(value):
                raise TrainingFailed(epoch, f"non-finite {what} loss ({value})")
        learning_rate = optimizer.param_groups[0]["lr"]
        step_schedulers(schedulers, valid_loss)
        seconds = time.perf_counter() - started
        state["curve"].append({
            "epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss, "lr": learning_rate,
            "nfe_forward": nfe_forward, "nfe_backward": nfe_backward, "seconds": seconds,
        })
        state["seconds"] += seconds
        if early_stop is not None and epoch >= early_stop and (state["best"] is None or valid_loss < state["best"]["loss"]):
            state["best"] = {"loss": valid_loss, "epoch": epoch, "model": copy.deepcopy(model.state_dict())}
        state["epoch"] = epoch + 1
        epochs.set_postfix(loss=f"{train_loss:.4f}", valid=f"{valid_loss:.4f}", nfe=f"{nfe_forward:.0f}/{nfe_backward:.0f}")
        if ranks.leader:
            if not bars:
                log.info("%s", epoch_line(description, state["curve"][-1], schedule.num_epochs))
            if curve_file is not None:
                write_curve(curve_file, state["curve"])
            atomic_torch_save(progress_file, {
                **state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedulers": [scheduler.state_dict() for scheduler in schedulers],
            })
    epochs.close()

    kept_epoch = state["epoch"] - 1
    if state["best"] is not None:
        model.load_state_dict(state["best"]["model"])
        kept_epoch = state["best"]["epoch"]
    return TrainOutcome(curve=state["curve"], seconds=state["seconds"], kept_epoch=kept_epoch)


def step_schedulers(schedulers: list[torch.optim.lr_scheduler.LRScheduler], valid_loss: float) -> None:
    """One epoch's step of each scheduler; ReduceLROnPlateau steps on the epoch's validation loss."""
    for scheduler in schedulers:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(valid_loss)
        else:
            scheduler.step()


def epoch_generators(seed: int, epoch: int, device: torch.device,
                     ranks: Ranks) -> tuple[torch.Generator, torch.Generator]:
    """(order generator, noise generator) of `epoch`, on the data's `device`. The batch order (one
    `randperm`) is drawn from the generator seeded with derive_seed(seed, "epoch", epoch), the same on
    every rank. The epoch's other draws, in this order: each training batch's transform and then its
    flow's Hutchinson noise, then the validation batches' (rank 0), come from the noise generator:
    in a single process the order generator itself, continuing after the order; with several ranks,
    each rank's own generator seeded with derive_seed(seed, "epoch", epoch, "rank", rank), for its
    own samples."""
    order_generator = seeded_generator(derive_seed(seed, "epoch", epoch), device)
    if not ranks.parallel:
        return order_generator, order_generator
    return order_generator, seeded_generator(derive_seed(seed, "epoch", epoch, "rank", ranks.rank), device)


def draws_noise(model: nn.Module) -> bool:
    """Does `model`'s forward draw random numbers (a flow's Hutchinson noise), so that it takes a
    `generator` argument? Classifiers draw nothing."""
    return hasattr(model, "log_prob")


def epoch_line(description: str, row: dict, num_epochs: int) -> str:
    """One epoch's curve `row` as a log line, e.g.
    `dense_net0 epoch 3/100: train 1.2345 valid 1.2210 nfe 44/26 2.31 s lr 0.005` (epochs counted from 1)."""
    return (f"{description} epoch {row['epoch'] + 1}/{num_epochs}: train {row['train_loss']:.4f} "
            f"valid {row['valid_loss']:.4f} nfe {row['nfe_forward']:.0f}/{row['nfe_backward']:.0f} "
            f"{row['seconds']:.2f} s lr {row['lr']:.3g}")



def _train_epoch(model: nn.Module, trained: nn.Module, optimizer: torch.optim.Optimizer, data: TrainData,
                 order: torch.Tensor, loss_fn: Loss, batch_size: int, masks: dict[str, torch.Tensor], epoch: int,
                 progress_bar: bool, ranks: Ranks, generator: torch.Generator) -> tuple[float, float, float]:
    """One pass over the training batches in `order`; returns mean loss and mean NFE per iteration
    (forward solve, backward solve), averaged over the ranks. `trained` is `model` as it is called
    for training (wrapped for data-parallel training). Batch by batch, the training transform's
    random choices and then a flow's Hutchinson noise are drawn from `generator`.

    Each rank computes the mean loss of its share of a batch weighted by share size × ranks / batch
    size, so the ranks' gradients average (DistributedDataParallel) to the gradient of the whole
    batch's mean loss. A rank whose share is empty (a last batch smaller than the number of ranks)
    still runs one sample, with weight 0, because every rank must take part in every step.
    Non-finite parameters after a step raise TrainingFailed (see `train`).
    """
    trained.train()
    total_loss = total_forward = total_backward = 0.0
    batches = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch}", leave=False, unit="it", dynamic_ncols=True,
                   disable=not progress_bar)
    for count, start in enumerate(batches, start=1):
        batch = order[start:start + batch_size]
        index = ranks.share(batch)
        share = len(index) / len(batch)  # exactly 1.0 in a single process
        if len(index) == 0:
            index = batch[:1]
        nfe_start = count_nfe(model)
        inputs = data.train_transform(data.x_train[index], generator)
        output = trained(inputs, generator=generator) if draws_noise(model) else trained(inputs)
        loss = loss_fn(output, data.y_train[index])
        nfe_after_forward = count_nfe(model)
        optimizer.zero_grad(set_to_none=True)
        with solver_errors(solver_options(model)):  # the adjoint's backward solves run here
            (loss * (share * ranks.world_size)).backward()
        optimizer.step()
        apply_masks(model, masks)
        if not finite_parameters(model):
            raise TrainingFailed(epoch, f"non-finite parameters after batch {count} (its training loss {loss.item():.4g})")
        forward, backward = nfe_after_forward - nfe_start, count_nfe(model) - nfe_after_forward
        total_loss += loss.item() * share
        total_forward += forward
        total_backward += backward
        batches.set_postfix(loss=f"{loss.item():.4f}", nfe=f"{forward}/{backward}")
    total_loss, total_forward, total_backward = ranks.sum(total_loss, total_forward, total_backward)
    return total_loss / count, total_forward / count / ranks.world_size, total_backward / count / ranks.world_size
