"""Optimizers and learning-rate schedulers from their config names (any `torch.optim` class)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from experiment.config.settings import LRSchedulerSpec


def build_optimizer(parameters, name: str, kwargs: dict) -> torch.optim.Optimizer:
    return getattr(torch.optim, name)(parameters, **kwargs)


def build_schedulers(optimizer: torch.optim.Optimizer,
                     specs: Sequence[LRSchedulerSpec]) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """One scheduler per spec. Schedulers are stepped once per epoch, so milestone-like `step_kwargs`
    (given in epochs, as in the original configs) apply unchanged."""
    return [getattr(torch.optim.lr_scheduler, spec.type)(optimizer, **spec.kwargs, **spec.step_kwargs) for spec in specs]
