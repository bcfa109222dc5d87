"""Optimizers and learning-rate schedulers from their config names (any `torch.optim` class)."""

from __future__ import annotations

import torch


def build_optimizer(parameters, name: str, kwargs: dict) -> torch.optim.Optimizer:
    return getattr(torch.optim, name)(parameters, **kwargs)


def build_schedulers(optimizer: torch.optim.Optimizer, specs: list[dict]) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """One scheduler per `{type, kwargs, stepKwargs}`. Schedulers are stepped once per epoch, so
    milestone-like `stepKwargs` (given in epochs, as in the original configs) apply unchanged."""
    return [getattr(torch.optim.lr_scheduler, spec["type"])(optimizer, **spec["kwargs"], **spec["stepKwargs"]) for spec in specs]
