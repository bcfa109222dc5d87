"""Training losses by config name. Every model returns one tensor per batch: log-densities [B] for
flows, logits [B, C] for classifiers; a loss maps (output, target) to a scalar."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def nll_nats(log_prob: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in nats per sample."""
    return -log_prob.mean()


def bits_per_dim(log_prob: torch.Tensor, data_dim: int) -> torch.Tensor:
    """Mean bits/dim of 8-bit data dequantised to [0, 1): −(log p(x)/D − ln 256)/ln 2."""
    return -(log_prob.mean() / data_dim - math.log(256.0)) / math.log(2.0)


def build_loss(name: str, kwargs: dict, data_dim: int) -> Loss:
    """The loss function for config name `name` (one of LOSSES)."""
    if name in ("NLLPriorLoss", "NLLNatsLoss"):
        return lambda log_prob, target: nll_nats(log_prob)
    if name == "NLLBitsLoss":
        return lambda log_prob, target: bits_per_dim(log_prob, data_dim)
    if name == "CrossEntropyLoss":
        return lambda logits, target: F.cross_entropy(logits, target, **kwargs)
    raise ValueError(f"unknown loss {name!r}, expected one of {LOSSES}")


LOSSES = ("NLLPriorLoss", "NLLNatsLoss", "NLLBitsLoss", "CrossEntropyLoss")
FLOW_LOSSES = ("NLLPriorLoss", "NLLNatsLoss", "NLLBitsLoss")
# The keyword arguments (lossKwargs) each loss takes: the flows' none, cross-entropy those of
# torch.nn.functional.cross_entropy (`reduction` must leave one number per batch: "mean" or "sum").
LOSS_ARGUMENTS = {"NLLPriorLoss": (), "NLLNatsLoss": (), "NLLBitsLoss": (),
                  "CrossEntropyLoss": ("ignore_index", "label_smoothing", "reduction")}
