"""What a pruned model is measured against besides the dense nets it was pruned from.

* The NoPrune control at the same step (`differences_to_control`): the control retrains the same
  chain for as long as the pruning methods do but prunes nothing, so a pruned model's value minus
  the control's, net by net at the same step, is what pruning itself changed; the value minus the
  dense nets' mixes it with the extra training.
* For flows on a mixture of per-label Gaussians (ToyGaussians, ToyGaussiansSpiral), the mixture
  fitted to the training split (`mixture_floor_nll`): the data's own density up to estimation
  error, so its test NLL is about as low as any model's can be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from experiment.analysis.mode_collapse import mahalanobis_distances, mode_statistics, unmeasurable_reason
from experiment.pruning.rules import CONTROL_METHOD
from experiment.files import numeric
from experiment.plan import step_prune_ratio
from experiment.results import Run


@dataclass(frozen=True)
class ControlDifference:
    """A pruning method's value minus the NoPrune control's for one net at one step, in plotted
    units (each side first averaged over the net's repetitions)."""

    mode: str
    method: str
    net: int
    step_prune_ratio: float  # the step's scheduled prune ratio (`step_prune_ratio`)
    difference: float


def differences_to_control(rows: list[dict], column: str,
                           transform: Callable[[float], float] = lambda value: value) -> list[ControlDifference]:
    """Per (mode, pruning method, net, step) with a NoPrune model of the same mode, net and step:
    transform(value) of the method minus transform(value) of the control, each averaged over the
    net's repetitions; rows without a finite value in `column` are left out. Sorted by mode,
    method, step, net."""
    per_model: dict[tuple[str, str, int, float], list[float]] = {}
    for row in rows:
        value = numeric(row.get(column))
        if row["method"] == "dense" or value is None or not np.isfinite(value):
            continue
        key = (row["mode"], row["method"], int(row["net"]), round(step_prune_ratio(row), 9))
        per_model.setdefault(key, []).append(transform(value))
    means = {key: float(np.mean(values)) for key, values in per_model.items()}
    differences = []
    for (mode, method, net, ratio), value in means.items():
        control = means.get((mode, CONTROL_METHOD, net, ratio))
        if method != CONTROL_METHOD and control is not None:
            differences.append(ControlDifference(mode, method, net, ratio, value - control))
    return sorted(differences, key=lambda item: (item.mode, item.method, item.step_prune_ratio, item.net))


def mixture_log_density(x: np.ndarray, means: np.ndarray, covariances: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log p(x_n) of the Gaussian mixture p(x) = Σ_j w_j N(x; μ_j, Σ_j) at each row of `x` [N, D]:
    log N(x; μ_j, Σ_j) = −½ d_j(x)² − ½ log det(2π Σ_j) with d_j the Mahalanobis distance, summed
    over j with log-sum-exp."""
    distances = mahalanobis_distances(x, means, covariances)
    _, log_determinants = np.linalg.slogdet(2 * np.pi * np.asarray(covariances, dtype=np.float64))
    log_terms = np.log(np.asarray(weights, dtype=np.float64)) - 0.5 * distances ** 2 - 0.5 * log_determinants
    largest = log_terms.max(1, keepdims=True)
    return (largest + np.log(np.exp(log_terms - largest).sum(1, keepdims=True)))[:, 0]


def mixture_floor_nll(run: Run) -> float | None:
    """The test NLL of the Gaussian mixture fitted to the run's training split, in nats per point
    like the flows' `nll` column; None for a run that is not a 2-D flow on per-label Gaussians
    (`mode_collapse.unmeasurable_reason`).

    The mixture is the "true mixture" of the mode-collapse analysis (`mode_statistics` of
    `Run.load_data()["train"]`): per label j the mean μ_j, the unbiased covariance Σ_j and the weight
    w_j, the label's share of the training points. The floor is −(1/N) Σ_n log Σ_j w_j N(x_n; μ_j, Σ_j)
    over the N points x_n of the test split, the same points (standardised by the test split's own
    statistics, as every toy split is) the flows' test NLL averages over. The data are drawn from
    such a mixture, so this is their entropy up to the fit's and the test sample's error (standard
    error ≈ 0.01 nats for ToyGaussians' 8,190 test points): a flow can come below it only by chance."""
    if unmeasurable_reason(run) is not None:
        return None
    data = run.load_data()
    x_train, y_train = (tensor.numpy() for tensor in data["train"])
    x_test = data["test"][0].double().numpy()
    return float(-mixture_log_density(x_test, *mode_statistics(x_train, y_train)).mean())
