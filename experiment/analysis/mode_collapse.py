"""Mode collapse of pruned 2-D flows, measured against the true mixture.

For flows on ToyGaussians / ToyGaussiansSpiral (`unmeasurable_reason` says why another run is not):

* The true mixture: per label j of the run's training data (`Run.load_data()["train"]`) the mean
  μ_j, the covariance Σ_j and the weight w_j (the label's share of the training points); mode j is
  the Gaussian N(μ_j, Σ_j).
* Every model of the run (all nets, repetitions and prune steps, the dense nets and the NoPrune
  control included) draws `num_samples` samples x_1..x_N (prior N(0, I) through the ODE, seeded
  with `seed`, the same prior draws for every model).
* Distances: d_j(x) = sqrt((x − μ_j)ᵀ Σ_j⁻¹ (x − μ_j)), how many standard deviations of mode j the
  sample lies from its centre in the sample's direction (+inf for non-finite samples). A sample
  belongs to mode j at radius k when j = argmin_i d_i(x) and d_j(x) ≤ k; it is off-mode when it is
  more than k from every mode.
* Per-mode shares: s_j(k) = #{n: x_n belongs to mode j at radius k} / N, and the off-mode share
  s_off(k) = 1 − Σ_j s_j(k). The same shares of the true mixture, r_j(k) and r_off(k), are its
  reference. The reference is a Monte Carlo estimate with `REFERENCE_SAMPLES` = 200,000 draws of the
  fitted mixture (fixed seed), i.e. the same function applied to samples of the exact mixture:
  standard error ≤ 0.5/sqrt(200,000) ≈ 0.0011. The analytic r_j(k) = w_j (1 − exp(−k²/2)) holds only
  while the modes' ellipses do not overlap, and the training points themselves would carry their
  own sampling error (16,380 points, ≈ 0.004), so neither is used.

Measures, for k in {0.25, 0.5, 1, 2, 3, 5, 7, 10, 15, 20}:

1. `share_within_k` = Σ_j s_j(k), the share of samples within k of any mode, next to
   `reference_share_within_k` = Σ_j r_j(k) (≈ 1 − exp(−k²/2) for separated 2-D modes).
2. `tv_distance` = ½ (Σ_j |s_j(k) − r_j(k)| + |s_off(k) − r_off(k)|), the total-variation distance
   between the model's and the true mixture's distribution over the M modes plus the off-mode bin
   (0: the model spreads its mass over the modes as the mixture does; 1: disjoint).
3. `modes_hit` = #{j: s_j(k) ≥ hit_fraction · r_j(k)}: modes that receive at least `hit_fraction` of
   the share the true mixture puts within k of them.

A model passes when every mode is hit at k = `HIT_K` = 2 and the TV distance at k = `TV_K` = 3 is at
most `max_tv` (`MAX_TV` = 0.1). Why these thresholds: a ring through the modes (6 modes of std 0.5 on radius
4; the ring uniform on the circle of radius 4) puts mass near every mode, but only 0.52 to 0.73 of
the expected share for k from 1 to 3 std, 0.55 within 2 std, and at 3 std it leaves 28% of its
mass off-mode (TV 0.27). A perfect model with 20,000 samples gets 0.98 to 1.02 of every mode's
expected share and TV ≈ 0.01; a model on 3 of the 6 modes has TV ≈ 0.5. `hit_fraction` = 0.75
lies between ring and perfect (half the expected share would count the ring as hitting all
modes); 0.1 lets a model misplace a tenth of the mass. Share within k alone is not enough: a model
on half of the modes has the true share at every k, and a thin ring more than the true share
within 0.25 std (a line through a disc holds more of its mass near the centre than a 2-D Gaussian
does); the ring falls short only for k from 1 to 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from experiment.analysis.cache import MeasurementCache
from experiment.analysis.two_dimensional import sample_flow, two_d_family
from experiment.results import Run, model_name
from experiment.plan import step_prune_ratio

KS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0)
HIT_K = 2.0  # modes hit are judged within 2 std
TV_K = 3.0  # the TV distance is judged with samples beyond 3 std of every mode off-mode
HIT_FRACTION = 0.75
MAX_TV = 0.1
REFERENCE_SAMPLES = 200_000
REFERENCE_SEED = 0
MODE_DATASETS = ("ToyGaussians", "ToyGaussiansSpiral")


# ------------------------------------------------------------------------------ the measures


def mode_statistics(x_train: np.ndarray, y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mixture of labelled data: per label (in sorted order) the mean [M, D], the unbiased
    covariance [M, D, D] and the weight [M] (the label's share of the points)."""
    x_train, y_train = np.asarray(x_train, dtype=np.float64), np.asarray(y_train)
    labels, counts = np.unique(y_train, return_counts=True)
    means = np.stack([x_train[y_train == label].mean(0) for label in labels])
    covariances = np.stack([np.atleast_2d(np.cov(x_train[y_train == label], rowvar=False)) for label in labels])
    return means, covariances, counts / counts.sum()


def mahalanobis_distances(samples: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """d[n, j] = sqrt((x_n − μ_j)ᵀ Σ_j⁻¹ (x_n − μ_j)); +inf for non-finite samples."""
    samples = np.asarray(samples, dtype=np.float64)
    inverse = np.linalg.inv(np.asarray(covariances, dtype=np.float64))
    difference = samples[:, None, :] - np.asarray(means, dtype=np.float64)[None]
    squared = np.einsum("nmi,mij,nmj->nm", difference, inverse, difference)
    distances = np.sqrt(np.maximum(squared, 0.0))
    return np.where(np.isfinite(distances), distances, np.inf)


def nearest_modes(samples: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest mode by Mahalanobis distance, that distance) per sample."""
    distances = mahalanobis_distances(samples, means, covariances)
    nearest = distances.argmin(1)
    return nearest, distances[np.arange(len(distances)), nearest]


def mode_shares(samples: np.ndarray, means: np.ndarray, covariances: np.ndarray,
                ks: Sequence[float] = KS) -> np.ndarray:
    """s[a, j] = share of the samples whose nearest mode (Mahalanobis) is j and lies within ks[a] of
    them; [len(ks), M]. The off-mode share at ks[a] is 1 − s[a].sum()."""
    nearest, distance = nearest_modes(samples, means, covariances)
    shares = np.zeros((len(ks), len(means)))
    for row, k in enumerate(ks):
        within = distance <= k
        shares[row] = np.bincount(nearest[within], minlength=len(means)) / max(len(samples), 1)
    return shares


def sample_mixture(means: np.ndarray, covariances: np.ndarray, weights: np.ndarray, num_samples: int,
                   seed: int) -> np.ndarray:
    """`num_samples` draws of the mixture Σ_j w_j N(μ_j, Σ_j) (mode counts multinomial), in mode order."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(num_samples, np.asarray(weights, dtype=np.float64) / np.sum(weights))
    return np.concatenate([rng.multivariate_normal(mean, covariance, size=count)
                           for mean, covariance, count in zip(means, covariances, counts)])


def reference_shares(means: np.ndarray, covariances: np.ndarray, weights: np.ndarray, ks: Sequence[float] = KS,
                     num_samples: int = REFERENCE_SAMPLES, seed: int = REFERENCE_SEED) -> np.ndarray:
    """r[a, j]: `mode_shares` of the true mixture, estimated on `num_samples` of its draws (standard
    error ≤ 0.5/sqrt(num_samples) per entry)."""
    return mode_shares(sample_mixture(means, covariances, weights, num_samples, seed), means, covariances, ks)


def total_variation(shares: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per k: ½ (Σ_j |s_j − r_j| + |s_off − r_off|), the TV distance over the modes plus the off-mode
    bin (s_off = 1 − Σ_j s_j, r_off likewise)."""
    shares, reference = np.atleast_2d(shares), np.atleast_2d(reference)
    off_mode = np.abs(reference.sum(1) - shares.sum(1))
    return 0.5 * (np.abs(shares - reference).sum(1) + off_mode)


def modes_hit(shares: np.ndarray, reference: np.ndarray, hit_fraction: float = HIT_FRACTION) -> np.ndarray:
    """Per k: #{j: s_j ≥ hit_fraction · r_j}, the modes that get at least `hit_fraction` of the share
    the true mixture puts within k of them."""
    shares, reference = np.atleast_2d(shares), np.atleast_2d(reference)
    return (shares >= hit_fraction * reference).sum(1)


def measures(shares: np.ndarray, reference: np.ndarray, ks: Sequence[float] = KS,
             hit_fraction: float = HIT_FRACTION) -> dict[float, dict]:
    """k → {share_within_k, reference_share_within_k, tv_distance, modes_hit} of a model's shares
    [len(ks), M] against the true mixture's."""
    tv = total_variation(shares, reference)
    hits = modes_hit(shares, reference, hit_fraction)
    return {float(k): {"share_within_k": float(shares[row].sum()),
                       "reference_share_within_k": float(reference[row].sum()),
                       "tv_distance": float(tv[row]), "modes_hit": int(hits[row])}
            for row, k in enumerate(ks)}


def passes(by_k: dict[float, dict], num_modes: int, max_tv: float = MAX_TV) -> bool:
    """All modes hit at `HIT_K` and TV distance at `TV_K` at most `max_tv` (`by_k` as from `measures`)."""
    return by_k[HIT_K]["modes_hit"] == num_modes and by_k[TV_K]["tv_distance"] <= max_tv


# ------------------------------------------------------------------------------ over a run


def unmeasurable_reason(run: Run) -> str | None:
    """Why a run cannot be analysed, or None if it can."""
    if two_d_family(run) != "cnf":
        return f"not a 2-D flow ({run.settings.network.name})"
    if run.settings.network.dataset not in MODE_DATASETS:
        return f"no Gaussian modes in {run.settings.network.dataset} (only {', '.join(MODE_DATASETS)})"
    return None


def run_measures(run: Run, label: str, num_samples: int, seed: int, ks: Sequence[float] = KS,
                 hit_fraction: float = HIT_FRACTION, max_tv: float = MAX_TV, cache: dict | None = None,
                 saved: Callable[[], object] = lambda: None) -> list[dict]:
    """One row per (model of the run, k): run, method, mode, net, repetition, step, target, step and
    achieved prune ratio, k, the measures of `measures`, num_modes, hit_fraction and `passes` (the
    model's verdict, the same on all its rows). `cache` (a dict, updated in place, `saved` called after
    each new entry: `MeasurementCache`) holds per-model shares from earlier calls (a model whose
    checkpoint is gone is measured by its entry, and left out, with a note, without one); `ks` must
    contain `HIT_K` and `TV_K`."""
    x_train, y_train = (tensor.numpy() for tensor in run.load_data()["train"])
    means, covariances, weights = mode_statistics(x_train, y_train)
    reference = reference_shares(means, covariances, weights, ks)
    settings = {"num_samples": num_samples, "seed": seed, "ks": [float(k) for k in ks],
                "means": means.round(12).tolist(), "covariances": covariances.round(12).tolist()}
    store = MeasurementCache({} if cache is None else cache, saved)
    rows = []
    for row in run.rows:
        name = model_name(row)
        signature = run.checkpoint_sha256(row)
        entry = store.get(name, signature, settings)
        if entry is None and signature is None:
            print(f"{label}: {name} has no checkpoint and no cached shares; left out")
            continue
        if entry is None:
            print(f"{label}: sampling {name}")
            samples = sample_flow(run.load_model(row), num_samples, seed)
            entry = store.put(name, signature, settings, mode_shares=mode_shares(samples, means, covariances, ks).tolist())
        by_k = measures(np.array(entry["mode_shares"]), reference, ks, hit_fraction)
        verdict = passes(by_k, len(means), max_tv)
        for k, values in by_k.items():
            rows.append({
                "run": label, "method": row["method"], "mode": row["mode"], "net": int(row["net"]),
                "repetition": int(row["repetition"]), "step": int(row["step"]),
                "target_prune_ratio": float(row["target_prune_ratio"]), "step_prune_ratio": step_prune_ratio(row),
                "prune_ratio": float(row["prune_ratio"]), "k": k, **values, "num_modes": len(means),
                "hit_fraction": hit_fraction, "passes": int(verdict),
            })
    return rows


# ------------------------------------------------------------------------------ over the rows of a run


def method_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (is pruned, mode, method, step prune ratio): the models of one point, all their k."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["method"] != "dense", row["mode"], row["method"], round(row["step_prune_ratio"], 9))
        groups.setdefault(key, []).append(row)
    return dict(sorted(groups.items()))


def at(rows: list[dict], k: float, column: str) -> np.ndarray:
    """The values of `column` in the rows at `k` (one per model)."""
    return np.array([row[column] for row in rows if math.isclose(row["k"], k)], dtype=np.float64)


def true_share_within(rows: list[dict], k: float) -> float:
    """The true mixture's share within k (the same on every row at k)."""
    return float(at(rows, k, "reference_share_within_k")[0])


def summarize(rows: list[dict], k: float, column: str) -> dict[tuple[str, str], list[tuple[float, float, float]]]:
    """{(mode, method): [(step prune ratio, mean, std of `column` at k over nets and repetitions)
    per step]}, the dense nets as the first point of every method (NoPrune is a method of its own);
    only the dense point if nothing is pruned."""
    summary: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    dense_points = []
    for (pruned, mode, method, ratio), group in method_groups(rows).items():
        values = at(group, k, column)
        point = (ratio, float(values.mean()), float(values.std()))
        if not pruned:
            dense_points = [point]
            continue
        summary.setdefault((mode, method), list(dense_points)).append(point)
    return summary or ({("train", "dense"): dense_points} if dense_points else {})
