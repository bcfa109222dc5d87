"""Test metrics by config name, computed once over a whole evaluation set.

Each metric maps the concatenated model outputs (log-densities [N] for flows, logits [N, C] for
classifiers) and targets [N] to one float. `Dummy` is accepted for compatibility with the original
configs and records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable

import torch

from experiment.training.losses import bits_per_dim, nll_nats


@dataclass(frozen=True)
class Metric:
    column: str  # column name in the metrics table
    lower_is_better: bool
    compute: Callable[..., float]  # (outputs, targets, data_dim, **kwargs) -> float
    for_flows: bool  # True: of log-densities (flows); False: of logits (classifiers)
    arguments: tuple[str, ...] = ()  # the kwargs it takes


def _top_k(outputs: torch.Tensor, targets: torch.Tensor, data_dim: int, topk: int = 1) -> float:
    """Share of samples whose target is among the k largest logits."""
    best = outputs.topk(topk, dim=1).indices
    return (best == targets[:, None]).any(dim=1).float().mean().item()


def _matthews(outputs: torch.Tensor, targets: torch.Tensor, data_dim: int) -> float:
    """Multi-class Matthews correlation coefficient (Gorodkin's R_K) of the arg-max predictions."""
    predictions = outputs.argmax(dim=1)
    num_classes = max(int(outputs.shape[1]), int(targets.max().item()) + 1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    confusion.index_put_((targets, predictions), torch.ones_like(targets, dtype=torch.float64), accumulate=True)
    true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    total, correct = confusion.sum(), confusion.trace()
    numerator = correct * total - (true_counts * predicted_counts).sum()
    denominator = ((total**2 - (predicted_counts**2).sum()) * (total**2 - (true_counts**2).sum())).sqrt()
    return 0.0 if denominator == 0 else (numerator / denominator).item()


METRICS: dict[str, Metric | None] = {
    "NLLPrior": Metric("nll", True, lambda out, tgt, dim: nll_nats(out).item(), for_flows=True),
    "NLLNats": Metric("nll", True, lambda out, tgt, dim: nll_nats(out).item(), for_flows=True),
    "NLLBits": Metric("bits_per_dim", True, lambda out, tgt, dim: bits_per_dim(out, dim).item(), for_flows=True),
    "TopK": Metric("top{topk}_acc", False, _top_k, for_flows=False, arguments=("topk",)),
    "MCorr": Metric("mcorr", False, _matthews, for_flows=False),
    "Dummy": None,
}


def metric_column(name: str, kwargs: dict) -> str:
    """The metrics-table column of metric `name` with `kwargs`, e.g. TopK(topk=1) -> top1_acc."""
    metric = METRICS[name]
    return metric.column.format(topk=kwargs.get("topk", 1)) if metric else ""


def compute_metrics(specs: Sequence[Mapping], outputs: torch.Tensor, targets: torch.Tensor, data_dim: int) -> dict[str, float]:
    """{column: value} for every non-Dummy metric spec ({type, kwargs}) in config order."""
    values = {}
    for spec in specs:
        metric = METRICS[spec["type"]]
        if metric is not None:
            values[metric_column(spec["type"], spec["kwargs"])] = metric.compute(outputs, targets, data_dim, **spec["kwargs"])
    return values
