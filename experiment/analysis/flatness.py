"""Loss-surface flatness of a run's dense and pruned nets: the Hessian of the *training* loss
restricted to each model's surviving parameters (`experiment.analysis.hessian`), on a fixed seeded
subset of the training data, next to two controls, and its λ_max on further data subsets.

The random-subset control. H restricted to k surviving parameters is a principal submatrix, so by
Cauchy interlacing its λ_max is at most that of the full Hessian, and its trace sums only k diagonal
entries (k/n · tr H on average for a random set), whatever the pruning does to the surface. Beside
each model with k survivors the same quantities are therefore measured for H_dense[S, S], the
Hessian of its dense net on a uniformly random set S of k parameters (the others held at their dense
values): mean and population std over `FlatnessSettings.control_subsets` sets, drawn from a
generator seeded by (seed, net, k). With k = n the only such set is every parameter, and the
control is the dense net's own measurement.

The same-support control. H_dense[S, S] with S the model's own survivors: the dense net's Hessian
restricted to exactly the parameters the pruned model keeps (checkpoints hold every model in the
full layout, FT's removed neurons as zeros, so S is the set of positions of its non-zero entries in
the flattened parameters, `SurvivingParameters.positions`). The pruned model's own Hessian is
H_pruned[S, S] at its retrained weights, so the two differ only in where the weights are (pruning
plus retraining moved them), not in which weights survive: pruned λ_max below this control means
retraining on the support found a flatter point; the random-subset control beside it shows what
choosing this support rather than a random one did. For the dense net and NoPrune (nothing pruned)
S is everything and the control is the dense measurement.

Data subsets. Subset 0 is a seeded choice of rows of the run's training split (`seed`), passed once
through the training transforms (seeded too), so the loss is a fixed deterministic function of θ
and every model of a run is measured on the same data; the full measurement (λ_max, trace, κ,
spectral density) and the controls use it. Subsets 1, 2, … are drawn the same way with seeds
derived from (seed, index) (`data_subset_seed`), and on each only λ_max is measured (≈ 20 HVPs on
the iterative path), for every model and for its same-support control: their spread is the
uncertainty of λ_max due to the choice of data. Flows of dimension ≤ 8 use the exact trace in
log p(x); larger flows Hutchinson's estimator with its noise fixed by seeding torch before every
chunk's forward pass (with the subset's seed). The adjoint method has no double backward, so the
Hessian is taken on a copy of the model that backpropagates through the solver (`differentiable_copy`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from experiment.analysis.cache import MeasurementCache
from experiment.analysis.hessian import (
    Flatness, HessianOperator, RestrictedLoss, SurvivingParameters, differentiable_copy, largest_eigenvalue, measure,
    uses_exact_path,
)
from experiment.data.transforms import build_transform
from experiment.pruning.rules import CONTROL_METHOD
from experiment.results import Run
from experiment.results.rebuild import load_run_data
from experiment.plan import step_prune_ratio
from experiment.results.tree import model_name
from experiment.seeds import seeded_generator
from experiment.training.evaluate import trace_estimator_for
from experiment.training.losses import build_loss

DEFAULT_RATIOS = (0.25, 0.5, 0.75, 0.9, 0.95)
CONTROL_QUANTITIES = {"lambda_max": "lambda_max", "trace": "trace", "condition": "condition_number"}  # column stem → Flatness field
CONTROL_COLUMNS = tuple(f"control_{stem}_{statistic}" for stem in CONTROL_QUANTITIES for statistic in ("mean", "std")) + ("control_subsets",)
DATA_SUBSET_COLUMNS = ("lambda_max_subsets_mean", "lambda_max_subsets_std", "data_subsets")
SAME_SUPPORT_QUANTITIES = {"lambda_max": "lambda_max", "trace": "trace"}  # column stem → Flatness field
SAME_SUPPORT_COLUMNS = (*(f"same_support_{stem}" for stem in SAME_SUPPORT_QUANTITIES),
                        "same_support_lambda_max_subsets_mean", "same_support_lambda_max_subsets_std", "same_support_data_subsets")
FLATNESS_SCALARS = ("num_params", "lambda_max", "lambda_min", "trace", "trace_stderr", "condition_number", "hessian")
COLUMNS = ("run", "mode", "method", "net", "step", "prune_ratio", "step_prune_ratio", "num_surviving_params", "lambda_max",
           "trace", "trace_stderr", "condition_number", *CONTROL_COLUMNS, *DATA_SUBSET_COLUMNS, *SAME_SUPPORT_COLUMNS,
           "lambda_min", "hessian", "subset_size", "seconds")


@dataclass(frozen=True)
class FlatnessSettings:
    """What `analyse_run` measures and how.

    Which models: for each net of `nets`, its dense net and, per (mode, method), its pruned nets of
    repetition `repetition` at the steps closest to `ratios` (`select_rows`; every step with `all_steps`).
    The data: a `subset` share of the training split, chosen with `seed` (which also seeds the
    probes, starting vectors and control subsets), `chunk_size` samples per forward pass, in `dtype`;
    λ_max also on `data_subsets` − 1 further subsets of that share (`data_subset_seed`).
    The Hessian: formed in full up to `exact_max` surviving parameters, else `probes` Hutchinson
    probes and `slq_vectors` × `slq_steps` Lanczos steps of SLQ; eigenvalues ≤ `eig_tol` · λ_max are
    left out of κ; `hvp_batch` products per backward pass; `cache_graph` keeps every chunk's gradient
    graph for reuse. The controls: `control_subsets` random subsets per model size (0: none) and,
    with `same_support`, the dense Hessian on each pruned model's own survivors."""

    subset: float = 0.1
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    all_steps: bool = False
    nets: tuple[int, ...] = (0,)
    repetition: int = 0
    seed: int = 0
    exact_max: int = 2000
    probes: int = 100
    slq_vectors: int = 3
    slq_steps: int = 80
    eig_tol: float = 1e-6
    chunk_size: int = 1024
    hvp_batch: int = 16
    cache_graph: bool = True
    dtype: torch.dtype = torch.float64
    control_subsets: int = 3
    data_subsets: int = 3
    same_support: bool = True

    def loss_options(self, seed: int) -> dict:
        """The keyword arguments of `restricted_loss` these settings fix, for the data subset of `seed`."""
        return dict(dtype=self.dtype, chunk_size=self.chunk_size, seed=seed, cache_graph=self.cache_graph,
                    hvp_batch=self.hvp_batch)

    def measure_options(self) -> dict:
        """The keyword arguments of `measure` these settings fix."""
        return dict(exact_max=self.exact_max, probes=self.probes, slq_vectors=self.slq_vectors,
                    slq_steps=self.slq_steps, eig_tol=self.eig_tol, seed=self.seed, batch=self.hvp_batch)


# ------------------------------------------------------------------------------ the controls


def random_subsets(num_params: int, size: int, count: int, seed: int, net: int) -> list[np.ndarray]:
    """`count` uniformly random `size`-subsets of range(`num_params`), each sorted, from a generator
    seeded by (seed, net, size): the control of a model is a function of its dense net and its number
    of surviving parameters only, so it is deterministic and shared by all models of that size.
    Of size `num_params` there is exactly one subset, every parameter."""
    if size == num_params:
        return [np.arange(num_params)]
    generator = np.random.default_rng([seed, net, size])
    return [np.sort(generator.choice(num_params, size=size, replace=False)) for _ in range(count)]


def submatrix_flatness(dense: HessianOperator, dense_flatness: Flatness, subsets: list[np.ndarray],
                       **measure_options) -> list[Flatness]:
    """The flatness of the dense Hessian H restricted to each index set S of `subsets`, i.e. of the
    principal submatrix H[S, S] (no spectral density; `measure_options` may leave out λ_min): the
    random-subset and the same-support control. A subset of every parameter is H itself, whose
    measurement `dense_flatness` is reused."""
    return [dense_flatness if len(subset) == dense.size else
            measure(dense.restricted(subset), spectrum=False, **measure_options) for subset in subsets]


def control_columns(control: list[Flatness]) -> dict[str, float | int]:
    """Mean and population std over the subsets of λ_max, tr H and κ (a NaN κ of one subset makes the
    mean NaN); NaN when there is no control (no dense net, or no control subsets)."""
    columns: dict[str, float | int] = {"control_subsets": len(control)}
    for stem, field in CONTROL_QUANTITIES.items():
        values = np.array([getattr(result, field) for result in control], dtype=np.float64)
        columns[f"control_{stem}_mean"] = float(values.mean()) if len(values) else math.nan
        columns[f"control_{stem}_std"] = float(values.std()) if len(values) else math.nan
    return columns


def support_coordinates(dense_positions: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """S for the same-support control: the coordinates of the dense net's θ (its surviving entries,
    at `dense_positions` of the flattened parameters, `SurvivingParameters.positions`) that a pruned
    model keeps too (its survivors at `positions`). Both models have the same architecture, so a
    position names the same weight in both."""
    return np.flatnonzero(np.isin(dense_positions, positions))


def spread(values: list[float]) -> tuple[float, float, int]:
    """(mean, population std, count) of λ_max over the data subsets it was measured on; the std is
    NaN below two values (no spread measured), everything NaN without any."""
    array = np.array(values, dtype=np.float64)
    if not len(array):
        return math.nan, math.nan, 0
    return float(array.mean()), float(array.std()) if len(array) > 1 else math.nan, len(array)


# ------------------------------------------------------------------------------ runs → rows


def placed_ratio(row: dict) -> float:
    """Where a model sits on the prune-ratio axis: its achieved prune ratio; the NoPrune control
    (same training chain, nothing pruned, achieved ratio 0) at the ratio the pruning methods are
    scheduled to reach at its step."""
    return step_prune_ratio(row) if row["method"] == CONTROL_METHOD else float(row["prune_ratio"])


def select_rows(rows: list[dict], net: int = 0, ratios: tuple[float, ...] = DEFAULT_RATIOS, all_steps: bool = False,
                repetition: int = 0) -> list[dict]:
    """The dense net `net`, then per (mode, method) the pruned nets of that net and repetition at every
    step (`all_steps`) or at the steps whose achieved prune ratio is closest to each of `ratios`. The
    NoPrune control is taken at every step chosen for a pruning method of its mode, so that each pruned
    model has its control at the same step (a mode without pruning methods: the steps whose scheduled
    ratio is closest)."""
    chosen = [row for row in rows if row["method"] == "dense" and int(row["net"]) == net]
    pruned = [row for row in rows if row["method"] != "dense" and int(row["net"]) == net and int(row["repetition"]) == repetition]
    groups = sorted(dict.fromkeys((row["mode"], row["method"]) for row in pruned), key=lambda group: group[1] == CONTROL_METHOD)
    steps_of_mode: dict[str, set[int]] = {}
    for mode, method in groups:  # pruning methods first: the control's steps follow theirs
        candidates = sorted((row for row in pruned if (row["mode"], row["method"]) == (mode, method)), key=lambda row: int(row["step"]))
        if all_steps:
            steps = {int(row["step"]) for row in candidates}
        elif method == CONTROL_METHOD and mode in steps_of_mode:
            steps = steps_of_mode[mode]
        else:
            steps = {int(min(candidates, key=lambda row: abs(placed_ratio(row) - ratio))["step"]) for ratio in ratios}
        steps_of_mode.setdefault(mode, set()).update(steps)
        chosen += [row for row in candidates if int(row["step"]) in steps]
    return chosen


@dataclass(frozen=True)
class DataSubset:
    """Data subset `index` of a run: (x, y), drawn with `seed` (`data_subsets`)."""

    index: int
    seed: int
    x: torch.Tensor
    y: torch.Tensor


def data_subset_seed(seed: int, index: int) -> int:
    """The seed of data subset `index`: `seed` itself for subset 0 (the subset of the full
    measurement), for the others a 32-bit integer derived from (seed, index) by numpy's SeedSequence,
    so that the subsets are independent draws."""
    return seed if index == 0 else int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def training_split(run: Run, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's training split (`load_run_data`). A run folder trimmed of its data_split.npz (a
    results-only copy) gets the split its runner drew from the run's seed (`train_valid_indices`),
    rebuilt in memory and never written, with a note: cache entries name the data they were measured
    on by content, so they serve only if it is the same split."""
    data = load_run_data(run.settings, run.folder, draw_missing_split=True)
    if data.split_drawn:
        print(f"{label}: no data_split.npz; the training split is drawn again from the run's seed", flush=True)
    return data.splits["train"]


def data_subsets(run: Run, label: str, fraction: float, seed: int, count: int) -> list[DataSubset]:
    """`count` (at least 1) data subsets: subset i holds a seeded choice of round(fraction · N) rows
    of the run's training split, through the training transforms, whose random choices are drawn from
    a generator seeded with the same seed, `data_subset_seed(seed, i)`."""
    x, y = training_split(run, label)
    size = min(len(x), max(1, round(fraction * len(x))))
    schedule = run.settings.training
    transform = build_transform(schedule.transforms_train + schedule.transforms_final)
    subsets = []
    for index in range(max(1, count)):
        subset_seed = data_subset_seed(seed, index)
        rows = torch.as_tensor(np.sort(np.random.default_rng(subset_seed).choice(len(x), size=size, replace=False)), dtype=torch.long)
        subsets.append(DataSubset(index, subset_seed, transform(x[rows], seeded_generator(subset_seed)), y[rows]))
    return subsets


def restricted_loss(run: Run, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dtype: torch.dtype = torch.float64,
                    chunk_size: int = 1024, seed: int = 0, cache_graph: bool = True, hvp_batch: int = 16) -> RestrictedLoss:
    """The run's training loss of `model` on (x, y), as a function of its surviving parameters."""
    schedule = run.settings.training
    data_dim = int(np.prod(x.shape[1:]))
    loss_fn = build_loss(schedule.loss, schedule.loss_kwargs, data_dim)
    trace = trace_estimator_for(model, data_dim)
    return RestrictedLoss(differentiable_copy(model, dtype), loss_fn, x, y, trace=trace, chunk_size=chunk_size, seed=seed,
                          cache_graph=cache_graph, hvp_batch=hvp_batch)


def measurement_settings(settings: FlatnessSettings, x: torch.Tensor, y: torch.Tensor) -> dict:
    """What a model's measurement depends on besides its checkpoint: the data subset (by content) and
    the settings that change the numbers (not `hvp_batch` or `cache_graph`, which only change how
    they are computed). A cache entry is reused only under equal settings."""
    data = hashlib.sha256(x.detach().cpu().numpy().tobytes() + y.detach().cpu().numpy().tobytes()).hexdigest()
    return {"data": data, "subset": settings.subset, "seed": settings.seed, "exact_max": settings.exact_max,
            "probes": settings.probes, "slq_vectors": settings.slq_vectors, "slq_steps": settings.slq_steps,
            "eig_tol": settings.eig_tol, "chunk_size": settings.chunk_size, "dtype": str(settings.dtype)}


def lambda_max_settings(settings: FlatnessSettings, subset: DataSubset) -> dict:
    """What λ_max alone on `subset` depends on: its data (by content), how it was drawn, the path
    (`exact_max`), the chunking and the dtype."""
    full = measurement_settings(settings, subset.x, subset.y)
    return {**{key: full[key] for key in ("data", "subset", "seed", "exact_max", "chunk_size", "dtype")},
            "data_subset": subset.index}


def flatness_entry(result: Flatness) -> dict:
    """`result` as plain JSON values (the inverse of `flatness_of`)."""
    return {**{field: getattr(result, field) for field in FLATNESS_SCALARS},
            "quadrature": [[nodes.tolist(), weights.tolist()] for nodes, weights in result.quadrature]}


def flatness_of(entry: dict) -> Flatness:
    return Flatness(**{field: entry[field] for field in FLATNESS_SCALARS},
                    quadrature=[(np.array(nodes), np.array(weights)) for nodes, weights in entry["quadrature"]])


def same_support_key(dense: str, name: str) -> str:
    """The cache name of model `name`'s same-support control (measured on `dense`'s Hessian)."""
    return f"{dense} same support {name}"


def pair_signature(dense: str | None, model: str | None) -> str | None:
    """The checkpoint signature of a same-support control: both SHA-256s (None when either
    checkpoint is gone: then any entry of the settings serves, as for a model)."""
    return None if dense is None or model is None else f"{dense} {model}"


class FlatnessCache(MeasurementCache):
    """The flatness measurements of earlier calls (`MeasurementCache`): a model's full measurement on
    data subset 0 keyed by its name, a random-subset control by its dense net and subset size, a
    same-support control by `same_support_key`, all under `settings` (`measurement_settings`); λ_max
    alone on data subset i ≥ 1 of a model or a same-support control under its name + " data subset i"
    and `subset_settings[i]` (`lambda_max_settings`)."""

    def __init__(self, entries: dict, settings: dict, subset_settings: list[dict], saved: Callable[[], object]):
        super().__init__(entries, saved)
        self.settings = settings
        self.subset_settings = list(subset_settings)

    def model(self, name: str, signature: str | None) -> tuple[Flatness, float] | None:
        """(its measurement, the seconds it took) if cached (a model's, or a same-support control's)."""
        entry = self.get(name, signature, self.settings)
        return None if entry is None else (flatness_of(entry["result"]), entry["seconds"])

    def control(self, dense: str, signature: str | None, size: int, count: int) -> list[Flatness] | None:
        entry = self.get(f"{dense} control {size}", signature, {**self.settings, "control_subsets": count})
        return None if entry is None else [flatness_of(result) for result in entry["results"]]

    def lambda_max(self, name: str, signature: str | None, index: int) -> float | None:
        """λ_max of `name` on data subset `index` ≥ 1 if cached."""
        entry = self.get(f"{name} data subset {index}", signature, self.subset_settings[index])
        return None if entry is None else entry["lambda_max"]

    def add_model(self, name: str, signature: str | None, result: Flatness, seconds: float) -> None:
        self.put(name, signature, self.settings, result=flatness_entry(result), seconds=seconds)

    def add_control(self, dense: str, signature: str | None, size: int, count: int, results: list[Flatness]) -> None:
        self.put(f"{dense} control {size}", signature, {**self.settings, "control_subsets": count},
                 results=[flatness_entry(result) for result in results])

    def add_lambda_max(self, name: str, signature: str | None, index: int, value: float, seconds: float) -> None:
        self.put(f"{name} data subset {index}", signature, self.subset_settings[index], lambda_max=value, seconds=seconds)


def analyse_run(run: Run, label: str, settings: FlatnessSettings, cache: dict | None = None,
                saved: Callable[[], None] = lambda: None) -> tuple[list[dict], list[dict]]:
    """(table rows, spectrum rows) for the selected models of `run` (`label` in their `run` column),
    net by net (`NetAnalysis`). A spectrum row is one quadrature node and weight of one starting
    vector of one model. `cache` and `saved`: see `FlatnessCache`; a model whose checkpoint is gone
    and that has no cache entry is left out, a quantity that needs a missing checkpoint and has no
    cache entry is NaN (both with a note)."""
    data = data_subsets(run, label, settings.subset, settings.seed, settings.data_subsets)
    store = FlatnessCache({} if cache is None else cache, measurement_settings(settings, data[0].x, data[0].y),
                          [lambda_max_settings(settings, subset) for subset in data], saved)
    table, spectra = [], []
    for net in settings.nets:
        net_table, net_spectra = NetAnalysis(run, label, settings, net, data, store).rows()
        table += net_table
        spectra += net_spectra
    return table, spectra


class NetAnalysis:
    """`analyse_run` for one net. On data subset 0: the dense net first (its Hessian also gives both
    controls: the random subsets once per model size, the same support once per pruned model), then
    each selected model. On every further data subset: the dense net's λ_max and, from the same
    Hessian, each pruned model's same-support λ_max, then each model's own λ_max. What `store` holds
    is not measured again; every new measurement goes into it as it finishes."""

    def __init__(self, run: Run, label: str, settings: FlatnessSettings, net: int, data: list[DataSubset],
                 store: FlatnessCache):
        self.run, self.label, self.settings, self.net, self.data, self.store = run, label, settings, net, data, store
        self.signatures: dict[str, str | None] = {}
        self.found: dict[str, tuple[Flatness, float]] = {}  # model or same-support name → (measurement on subset 0, seconds)
        self.subset_values: dict[tuple[str, int], float] = {}  # (model or same-support name, subset ≥ 1) → λ_max
        self.controls: dict[int, list[Flatness]] = {}  # number of surviving parameters → the random-subset control
        self.supports: dict[str, np.ndarray] = {}  # pruned model → S, its survivors in the dense net's θ
        self.models: dict[str, nn.Module] = {}
        self.selected: list[dict] = []
        self.unmeasurable: dict[str, list[str]] = {}  # what → the models it is NaN for (a checkpoint gone, nothing cached)
        for row in select_rows(run.rows, net, tuple(settings.ratios), settings.all_steps, settings.repetition):
            name = model_name(row)
            self.signatures[name] = run.checkpoint_sha256(name)
            cached = store.model(name, self.signatures[name])
            if cached is not None:
                self.found[name] = cached
            elif self.signatures[name] is None:
                self.note(f"{name} has no checkpoint and no cached measurement; left out")
                continue
            self.selected.append(row)
        self.names = [model_name(row) for row in self.selected]
        self.cached = set(self.found)  # printed as such
        self.dense = next((model_name(row) for row in self.selected if row["method"] == "dense"), None)
        self.pruned = [model_name(row) for row in self.selected if row["method"] not in ("dense", CONTROL_METHOD)]
        for name in self.names:
            for subset in data[1:]:
                value = store.lambda_max(name, self.signatures[name], subset.index)
                if value is not None:
                    self.subset_values[(name, subset.index)] = value

    def note(self, text: str) -> None:
        print(f"{self.label}: {text}", flush=True)

    def model(self, name: str) -> nn.Module:
        if name not in self.models:
            self.models[name] = self.run.load_model(name)
        return self.models[name]

    def operator(self, name: str, subset: DataSubset) -> tuple[RestrictedLoss, HessianOperator]:
        """The restricted loss of model `name` on `subset` and its Hessian (formed at once on the
        exact path, so that submatrices need no HVPs)."""
        loss = restricted_loss(self.run, self.model(name), subset.x, subset.y, **self.settings.loss_options(subset.seed))
        operator = HessianOperator.of(loss)
        if uses_exact_path(operator.size, self.settings.exact_max):
            operator = operator.materialised(self.settings.hvp_batch)
        return loss, operator

    def lambda_max(self, operator: HessianOperator, subset: DataSubset) -> float:
        """λ_max alone, its Lanczos start seeded with the subset's seed."""
        return largest_eigenvalue(operator, exact_max=self.settings.exact_max, seed=subset.seed, batch=self.settings.hvp_batch)

    # ---------------------------------------------------------------------- what to measure

    def control_sizes(self) -> list[int]:
        """The numbers of surviving parameters of the selected models (none without a random-subset control)."""
        if self.dense is None or self.settings.control_subsets == 0:
            return []
        return sorted({self.found[name][0].num_params if name in self.found else SurvivingParameters.of(self.model(name)).size
                       for name in self.names})

    def same_support_signature(self, name: str) -> str | None:
        return pair_signature(self.signatures[self.dense], self.signatures[name])

    def missing_same_support(self) -> list[str]:
        """Takes what the cache holds of the same-support controls and returns the pruned models whose
        control is not (all) cached and can be measured: both checkpoints are there (those that cannot
        are noted in `unmeasurable`)."""
        if not self.settings.same_support or self.dense is None:
            return []
        missing = []
        for name in self.pruned:
            key, signature = same_support_key(self.dense, name), self.same_support_signature(name)
            cached = self.store.model(key, signature)
            if cached is not None:
                self.found[key] = cached
            for subset in self.data[1:]:
                value = self.store.lambda_max(key, signature, subset.index)
                if value is not None:
                    self.subset_values[(key, subset.index)] = value
            if key in self.found and all((key, subset.index) in self.subset_values for subset in self.data[1:]):
                continue
            if self.signatures[self.dense] is None or self.signatures[name] is None:
                self.unmeasurable.setdefault("the same-support control", []).append(name)
                continue
            missing.append(name)
        return missing

    # ---------------------------------------------------------------------- measuring

    def measure_dense(self, same_support: list[str]) -> None:
        """On data subset 0: the dense net (if not cached), the random-subset controls of every size
        not cached, and the same-support controls of `same_support`, all from one dense Hessian."""
        subset, dense = self.data[0], self.dense
        options = self.settings.measure_options()
        sizes = self.control_sizes()
        for size in sizes:
            cached = self.store.control(dense, self.signatures[dense], size, self.settings.control_subsets)
            if cached is not None:
                self.controls[size] = cached
        missing_sizes = [size for size in sizes if size not in self.controls]
        if missing_sizes and self.signatures[dense] is None:
            self.note(f"{dense} has no checkpoint; no control for {len(missing_sizes)} model sizes")
            missing_sizes = []
        same_support = [name for name in same_support if same_support_key(dense, name) not in self.found]
        if dense in self.found and not missing_sizes and not same_support:
            return
        started = time.perf_counter()
        loss, operator = self.operator(dense, subset)
        if dense not in self.found:
            self.found[dense] = (measure(operator, **options), round(time.perf_counter() - started, 2))
            self.store.add_model(dense, self.signatures[dense], *self.found[dense])
        dense_result = self.found[dense][0]
        for size in missing_sizes:  # while the dense gradient graph is still alive
            control_started = time.perf_counter()
            subsets = random_subsets(dense_result.num_params, size, self.settings.control_subsets, self.settings.seed, self.net)
            self.controls[size] = submatrix_flatness(operator, dense_result, subsets, **options)
            self.store.add_control(dense, self.signatures[dense], size, self.settings.control_subsets, self.controls[size])
            summary = control_columns(self.controls[size])
            self.note(f"control n={size}: λ_max={summary['control_lambda_max_mean']:.5g}±{summary['control_lambda_max_std']:.2g}, "
                      f"trace={summary['control_trace_mean']:.5g}±{summary['control_trace_std']:.2g} "
                      f"({len(subsets)} subsets, {time.perf_counter() - control_started:.1f} s)")
        for name in same_support:
            control_started = time.perf_counter()
            (result,) = submatrix_flatness(operator, dense_result, [self.support(name)], **options, smallest=False)
            key = same_support_key(dense, name)
            self.found[key] = (result, round(time.perf_counter() - control_started, 2))
            self.store.add_model(key, self.same_support_signature(name), *self.found[key])
            self.note(f"same-support control of {name} (n={result.num_params}): λ_max={result.lambda_max:.5g}, "
                      f"trace={result.trace:.5g} ({self.found[key][1]:.1f} s)")
        loss.release()

    def support(self, name: str) -> np.ndarray:
        """S of pruned model `name` (`support_coordinates`)."""
        if name not in self.supports:
            self.supports[name] = support_coordinates(SurvivingParameters.of(self.model(self.dense)).positions(),
                                                      SurvivingParameters.of(self.model(name)).positions())
        return self.supports[name]

    def measure_dense_on(self, subset: DataSubset, same_support: list[str]) -> None:
        """On data subset ≥ 1: the dense net's λ_max and the same-support λ_max of `same_support`,
        from one dense Hessian."""
        dense = self.dense
        same_support = [name for name in same_support if (same_support_key(dense, name), subset.index) not in self.subset_values]
        if self.signatures[dense] is None or ((dense, subset.index) in self.subset_values and not same_support):
            return
        started = time.perf_counter()
        loss, operator = self.operator(dense, subset)
        if (dense, subset.index) not in self.subset_values:
            self.record(dense, self.signatures[dense], subset, self.lambda_max(operator, subset), started)
        for name in same_support:
            started = time.perf_counter()
            value = self.lambda_max(operator.restricted(self.support(name)), subset)
            self.record(same_support_key(dense, name), self.same_support_signature(name), subset, value, started)
        loss.release()

    def record(self, name: str, signature: str | None, subset: DataSubset, value: float, started: float) -> None:
        """Keeps and caches λ_max of `name` on `subset`, measured since `started`."""
        seconds = round(time.perf_counter() - started, 2)
        self.subset_values[(name, subset.index)] = value
        self.store.add_lambda_max(name, signature, subset.index, value, seconds)
        self.note(f"{name} on data subset {subset.index}: λ_max={value:.5g} ({seconds:.1f} s)")

    def measure_model(self, name: str) -> None:
        """Model `name`: its full measurement on data subset 0 and its λ_max on the others, where not
        cached (and where its checkpoint is there)."""
        if name not in self.found:
            started = time.perf_counter()
            loss = restricted_loss(self.run, self.model(name), self.data[0].x, self.data[0].y,
                                   **self.settings.loss_options(self.data[0].seed))
            result = measure(HessianOperator.of(loss), **self.settings.measure_options())
            loss.release()
            self.found[name] = (result, round(time.perf_counter() - started, 2))
            self.store.add_model(name, self.signatures[name], *self.found[name])
        missing = [subset for subset in self.data[1:] if (name, subset.index) not in self.subset_values]
        if missing and self.signatures[name] is None:
            self.unmeasurable.setdefault("λ_max on further data subsets", []).append(name)
            return
        for subset in missing:
            started = time.perf_counter()
            loss = restricted_loss(self.run, self.model(name), subset.x, subset.y, **self.settings.loss_options(subset.seed))
            value = self.lambda_max(HessianOperator.of(loss), subset)
            loss.release()
            self.record(name, self.signatures[name], subset, value, started)

    # ---------------------------------------------------------------------- rows

    def subset_spread(self, name: str, first: Flatness | None) -> tuple[float, float, int]:
        """`spread` of λ_max of `name` over the data subsets it has been measured on."""
        values = ([first.lambda_max] if first is not None else []) + \
                 [self.subset_values[(name, subset.index)] for subset in self.data[1:] if (name, subset.index) in self.subset_values]
        return spread(values)

    def same_support_columns(self, row: dict) -> dict[str, float | int]:
        """The same-support columns of `row`: its own control for a pruned model, the dense net's
        measurement for the dense net and NoPrune (S = every parameter); NaN where not measured."""
        if self.dense is None or (row["method"] not in ("dense", CONTROL_METHOD) and not self.settings.same_support):
            name, result = None, None
        else:
            name = self.dense if row["method"] in ("dense", CONTROL_METHOD) else same_support_key(self.dense, model_name(row))
            result = self.found[name][0] if name in self.found else None
        mean, std, count = self.subset_spread(name, result)
        return {**{f"same_support_{stem}": getattr(result, field) if result is not None else math.nan
                   for stem, field in SAME_SUPPORT_QUANTITIES.items()},
                "same_support_lambda_max_subsets_mean": mean, "same_support_lambda_max_subsets_std": std,
                "same_support_data_subsets": count}

    def rows(self) -> tuple[list[dict], list[dict]]:
        """Measures what is missing, then (table rows, spectrum rows) of the selected models."""
        same_support = self.missing_same_support()
        if self.dense is not None:
            self.measure_dense(same_support)
            for subset in self.data[1:]:
                self.measure_dense_on(subset, same_support)
        table, spectra = [], []
        for row in self.selected:  # the dense net comes first (select_rows)
            name = model_name(row)
            self.measure_model(name)
            result, seconds = self.found[name]
            mean, std, count = self.subset_spread(name, result)
            entry = {
                "run": self.label, "mode": row["mode"], "method": row["method"], "net": self.net, "step": int(row["step"]),
                "prune_ratio": float(row["prune_ratio"]), "step_prune_ratio": step_prune_ratio(row),
                "num_surviving_params": result.num_params, "lambda_max": result.lambda_max, "trace": result.trace,
                "trace_stderr": result.trace_stderr, "condition_number": result.condition_number,
                **control_columns(self.controls.get(result.num_params, [])),
                "lambda_max_subsets_mean": mean, "lambda_max_subsets_std": std, "data_subsets": count,
                **self.same_support_columns(row),
                "lambda_min": result.lambda_min, "hessian": result.hessian, "subset_size": len(self.data[0].x), "seconds": seconds,
            }
            table.append(entry)
            for vector, (nodes, weights) in enumerate(result.quadrature):
                spectra += [{"run": self.label, "mode": row["mode"], "method": row["method"], "net": self.net,
                             "step": int(row["step"]), "prune_ratio": float(row["prune_ratio"]), "vector": vector,
                             "node": float(node), "weight": float(weight)} for node, weight in zip(nodes, weights)]
            print(f"{self.label} {name}: PR {entry['prune_ratio']:.3f}, n={result.num_params}, λ_max={result.lambda_max:.5g} "
                  f"({mean:.5g}±{std:.2g} over {count} data subsets; random-subset control {entry['control_lambda_max_mean']:.5g}, "
                  f"same support {entry['same_support_lambda_max']:.5g}), trace={result.trace:.5g}±{result.trace_stderr:.2g} "
                  f"(control {entry['control_trace_mean']:.5g}), κ={result.condition_number:.4g} ({result.hessian}, {seconds:.1f} s"
                  f"{', cached' if name in self.cached else ''})", flush=True)
        for what, names in self.unmeasurable.items():
            self.note(f"no checkpoint and no cache entry: {what} of {len(names)} models is not measured "
                      f"(NaN, or fewer data subsets, in their columns): {', '.join(names)}")
        return table, spectra
