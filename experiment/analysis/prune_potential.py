"""The prune potential of a pruning method: how far a net can be pruned before its main
quantity gets worse than the dense nets' by more than a tolerance δ.

For the points of one (run, mode, method) (`experiment.report.Point`: mean over nets of the value
and of the achieved prune ratio), the prune potential is

    max { prune_ratio_mean(p) : value_mean(p) ≤ value_mean(dense) + δ },

and 0 where no point qualifies. Every main quantity is lower-is-better in plotted units (NLL in
nats, bits/dim, top-k error in %), with δ = 0.005 nats, 0.005 bits/dim and 0.5 percentage points.
"""

from __future__ import annotations

from experiment.report import Point

# Tolerance of the prune potential in plotted units (after the quantity's transform).
DELTAS = {"nll": 0.005, "bits_per_dim": 0.005, "top1_acc": 0.5}
DEFAULT_DELTA = 0.005


def delta_of(column: str) -> float:
    """δ of a metrics column: the top-k accuracies (plotted as error in %) all take top-1's."""
    if column in DELTAS:
        return DELTAS[column]
    if column.startswith("top") and column.endswith("_acc"):
        return DELTAS["top1_acc"]
    return DEFAULT_DELTA


def prune_potential(dense: Point, points: list[Point], delta: float) -> Point | None:
    """The pruned point with the largest mean achieved prune ratio whose mean value is at most
    dense + δ (None: no pruned point is within δ, a prune potential of 0)."""
    within = [point for point in points if point.value_mean <= dense.value_mean + delta]
    return max(within, key=lambda point: point.prune_ratio_mean, default=None)
