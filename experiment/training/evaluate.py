"""Evaluating a model on a whole dataset: loss, metrics and forward NFE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from experiment.data.transforms import Transform, identity
from experiment.models import count_nfe
from experiment.training.losses import Loss
from experiment.training.metrics import compute_metrics

# Flows of at most this dimension are evaluated with the exact trace rather than Hutchinson's.
EXACT_TRACE_MAX_DIM = 8


@dataclass(frozen=True)
class Evaluation:
    loss: float
    metrics: dict[str, float]
    nfe_forward: float  # vector-field evaluations per batch, averaged over batches
    trace_estimator: str  # "exact" | "hutchinson" for flows, "" for classifiers


def trace_estimator_for(model: nn.Module, data_dim: int) -> str:
    if not hasattr(model, "log_prob"):
        return ""
    return "exact" if data_dim <= EXACT_TRACE_MAX_DIM else "hutchinson"


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, loss_fn: Loss,
             metric_specs: Sequence[Mapping], data_dim: int,
             transform: Transform = identity, generator: torch.Generator | None = None) -> Evaluation:
    """Loss (averaged over samples) and metrics over all of (x, y), each batch passed through
    `transform` first. Flows of dimension ≤ 8 use the exact trace, so reported NLLs carry no
    estimator noise. Batch by batch, the transform's random choices and then the flow's Hutchinson
    noise are drawn from `generator` (None: the global default generator)."""
    model.eval()
    estimator = trace_estimator_for(model, data_dim)
    outputs, batch_nfes = [], []
    for start in range(0, len(x), batch_size):
        batch = transform(x[start:start + batch_size], generator)
        nfe_before = count_nfe(model)
        if estimator:
            outputs.append(model.log_prob(batch, exact_trace=estimator == "exact", generator=generator))
        else:
            outputs.append(model(batch))
        batch_nfes.append(count_nfe(model) - nfe_before)
    output = torch.cat(outputs)
    return Evaluation(
        loss=loss_fn(output, y).item(),
        metrics=compute_metrics(metric_specs, output.cpu(), y.cpu(), data_dim),
        nfe_forward=sum(batch_nfes) / len(batch_nfes),
        trace_estimator=estimator,
    )
