"""Effects across independent replicates (nets): a mean with its confidence interval.

The unit of replication of a run is the net: models of one net share its dense weights and its
training chain, so the steps of one chain are not independent samples of a method's effect. Every
claim therefore summarises each net first (e.g. the mean over its moderate steps) and puts the
interval on those per-net summaries:

* one sample, n summaries x_i (`Interval.across`): mean x̄ ± t_{n−1} · s / √n, s the sample standard
  deviation (ddof 1), t_{n−1} the (1 + c)/2 quantile of Student's t with n − 1 degrees of freedom;
* two independent samples x (n) and y (m) (`Interval.difference`, Welch): x̄ − ȳ ± t_ν · √(s_x²/n +
  s_y²/m), with the Welch–Satterthwaite degrees of freedom ν.

With fewer than two values in a sample there is no interval (NaN bounds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@lru_cache(maxsize=256)
def t_quantile(confidence: float, freedom: float) -> float:
    """The (1 + confidence)/2 quantile of Student's t with `freedom` degrees of freedom: the half-width
    of a two-sided `confidence` interval in standard errors."""
    return float(stats.t.ppf((1 + confidence) / 2, freedom))


@dataclass(frozen=True)
class Interval:
    """`mean` with the confidence interval [`low`, `high`] over `count` replicates, whose values
    (`values`, one per net) it was computed from."""

    mean: float
    low: float
    high: float
    count: int
    values: tuple[float, ...] = ()

    @classmethod
    def across(cls, values: Sequence[float], confidence: float = CONFIDENCE) -> "Interval":
        """The t interval of the mean of `values`."""
        array = np.asarray(values, dtype=float)
        mean = float(array.mean()) if len(array) else math.nan
        if len(array) < 2:
            return cls(mean, math.nan, math.nan, len(array), tuple(array.tolist()))
        half = t_quantile(confidence, len(array) - 1) * array.std(ddof=1) / math.sqrt(len(array))
        return cls(mean, mean - half, mean + half, len(array), tuple(array.tolist()))

    @classmethod
    def difference(cls, values: Sequence[float], reference: Sequence[float], confidence: float = CONFIDENCE) -> "Interval":
        """Welch's interval of mean(`values`) − mean(`reference`), two independent samples; `count`
        and `values` are those of `values`."""
        x, y = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
        mean = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
        if len(x) < 2 or len(y) < 2:
            return cls(mean, math.nan, math.nan, len(x), tuple(x.tolist()))
        share_x, share_y = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        spread = math.sqrt(share_x + share_y)
        if spread == 0.0:
            return cls(mean, mean, mean, len(x), tuple(x.tolist()))
        freedom = spread ** 4 / (share_x ** 2 / (len(x) - 1) + share_y ** 2 / (len(y) - 1))
        half = t_quantile(confidence, freedom) * spread
        return cls(mean, mean - half, mean + half, len(x), tuple(x.tolist()))

    @property
    def has_bounds(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def mapped(self, function: Callable[[float], float]) -> "Interval":
        """The interval in other units through a monotonic increasing `function` (e.g. exp of a log ratio)."""
        return Interval(function(self.mean), function(self.low) if math.isfinite(self.low) else math.nan,
                        function(self.high) if math.isfinite(self.high) else math.nan, self.count,
                        tuple(function(value) for value in self.values))


def variance_components(table: np.ndarray) -> tuple[float, float]:
    """(between-net, within-net) standard deviations of a nets × steps table of one quantity, by the
    one-way random-effects model x_ij = μ + u_i + e_ij (u_i ~ N(0, σ_b²), e_ij ~ N(0, σ_w²)) and its
    method-of-moments estimates: σ_w² = the pooled within-net variance, σ_b² = max(0, var of the
    net means − σ_w² / steps)."""
    table = np.asarray(table, dtype=float)
    steps = table.shape[1]
    within = float(table.var(axis=1, ddof=1).mean())
    between = max(0.0, float(table.mean(axis=1).var(ddof=1)) - within / steps)
    return math.sqrt(between), math.sqrt(within)
