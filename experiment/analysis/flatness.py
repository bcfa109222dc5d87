"""Loss-surface flatness of a run's dense and pruned nets (SPEC §8): the Hessian of the *training*
loss restricted to each model's surviving parameters (`experiment.analysis.hessian`), on a fixed
seeded subset of the training data, next to a random-subset control.

The control. H restricted to k surviving parameters is a principal submatrix, so by Cauchy
interlacing its λ_max is at most that of the full Hessian, and its trace sums only k diagonal
entries (k/n · tr H on average for a random set), whatever the pruning does to the surface. Beside
each model with k survivors the same quantities are therefore measured for H_dense[S, S], the
Hessian of its dense net on a uniformly random set S of k parameters (the others held at their dense
values): mean and population std over `FlatnessSettings.control_subsets` sets, drawn from a
generator seeded by (seed, net, k). With k = n the only such set is every parameter, and the
control is the dense net's own measurement.

The subset is a seeded choice of rows of the run's training split, passed once through the training
transforms (seeded too), so the loss is a fixed deterministic function of θ and every model of a run
is measured on the same data. Flows of dimension ≤ 8 use the exact trace in log p(x); larger flows
Hutchinson's estimator with its noise fixed by seeding torch before every chunk's forward pass. The
adjoint method has no double backward, so the Hessian is taken on a copy of the model that
backpropagates through the solver (`differentiable_copy`).
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
    Flatness, HessianOperator, RestrictedLoss, SurvivingParameters, differentiable_copy, measure, uses_exact_path,
)
from experiment.data.transforms import build_transform
from experiment.pruning.rules import CONTROL_METHOD
from experiment.results import Run
from experiment.results.rows import step_prune_ratio
from experiment.results.tree import model_name
from experiment.seeds import seeded_generator
from experiment.training.evaluate import trace_estimator_for
from experiment.training.losses import build_loss

DEFAULT_RATIOS = (0.25, 0.5, 0.75, 0.9, 0.95)
CONTROL_QUANTITIES = {"lambda_max": "lambda_max", "trace": "trace", "condition": "condition_number"}  # column stem → Flatness field
CONTROL_COLUMNS = tuple(f"control_{stem}_{statistic}" for stem in CONTROL_QUANTITIES for statistic in ("mean", "std")) + ("control_subsets",)
FLATNESS_SCALARS = ("num_params", "lambda_max", "lambda_min", "trace", "trace_stderr", "condition_number", "hessian")
COLUMNS = ("run", "mode", "method", "net", "step", "prune_ratio", "step_prune_ratio", "num_surviving_params", "lambda_max",
           "trace", "trace_stderr", "condition_number", *CONTROL_COLUMNS, "lambda_min", "hessian", "subset_size", "seconds")


@dataclass(frozen=True)
class FlatnessSettings:
    """What `analyse_run` measures and how.

    Which models: for each net of `nets`, its dense net and, per (mode, method), its pruned nets of
    repetition `repetition` at the steps closest to `ratios` (`select_rows`; every step with `all_steps`).
    The data: a `subset` share of the training split, chosen with `seed` (which also seeds the
    probes, starting vectors and control subsets), `chunk_size` samples per forward pass, in `dtype`.
    The Hessian: formed in full up to `exact_max` surviving parameters, else `probes` Hutchinson
    probes and `slq_vectors` × `slq_steps` Lanczos steps of SLQ; eigenvalues ≤ `eig_tol` · λ_max are
    left out of κ; `hvp_batch` products per backward pass; `cache_graph` keeps every chunk's gradient
    graph for reuse. The control: `control_subsets` random subsets per model size (0: none)."""

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

    def loss_options(self) -> dict:
        """The keyword arguments of `restricted_loss` these settings fix."""
        return dict(dtype=self.dtype, chunk_size=self.chunk_size, seed=self.seed, cache_graph=self.cache_graph,
                    hvp_batch=self.hvp_batch)

    def measure_options(self) -> dict:
        """The keyword arguments of `measure` these settings fix."""
        return dict(exact_max=self.exact_max, probes=self.probes, slq_vectors=self.slq_vectors,
                    slq_steps=self.slq_steps, eig_tol=self.eig_tol, seed=self.seed, batch=self.hvp_batch)


# ------------------------------------------------------------------------------ the random-subset control


def random_subsets(num_params: int, size: int, count: int, seed: int, net: int) -> list[np.ndarray]:
    """`count` uniformly random `size`-subsets of range(`num_params`), each sorted, from a generator
    seeded by (seed, net, size): the control of a model is a function of its dense net and its number
    of surviving parameters only, so it is deterministic and shared by all models of that size.
    Of size `num_params` there is exactly one subset, every parameter."""
    if size == num_params:
        return [np.arange(num_params)]
    generator = np.random.default_rng([seed, net, size])
    return [np.sort(generator.choice(num_params, size=size, replace=False)) for _ in range(count)]


def random_subset_control(dense: HessianOperator, dense_flatness: Flatness, subsets: list[np.ndarray],
                          **measure_options) -> list[Flatness]:
    """The flatness of the dense Hessian H restricted to each index set S of `subsets`, i.e. of the
    principal submatrix H[S, S] (no spectral density). A subset of every parameter is H itself, whose
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


def training_subset(run: Run, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded choice of round(fraction · N) rows of the run's training split, through the training
    transforms, whose random choices are drawn from a generator seeded with `seed`."""
    x, y = run.load_data()["train"]
    count = min(len(x), max(1, round(fraction * len(x))))
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=count, replace=False))
    index = torch.as_tensor(rows, dtype=torch.long)
    schedule = run.settings.training
    transform = build_transform(schedule.transforms_train + schedule.transforms_final)
    return transform(x[index], seeded_generator(seed)), y[index]


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


def flatness_entry(result: Flatness) -> dict:
    """`result` as plain JSON values (the inverse of `flatness_of`)."""
    return {**{field: getattr(result, field) for field in FLATNESS_SCALARS},
            "quadrature": [[nodes.tolist(), weights.tolist()] for nodes, weights in result.quadrature]}


def flatness_of(entry: dict) -> Flatness:
    return Flatness(**{field: entry[field] for field in FLATNESS_SCALARS},
                    quadrature=[(np.array(nodes), np.array(weights)) for nodes, weights in entry["quadrature"]])


class FlatnessCache(MeasurementCache):
    """The flatness measurements of earlier calls (`MeasurementCache`), all under `settings`
    (`measurement_settings`): a model's entry keyed by its name, a control's by its dense net and
    subset size."""

    def __init__(self, entries: dict, settings: dict, saved: Callable[[], object]):
        super().__init__(entries, saved)
        self.settings = settings

    def model(self, name: str, signature: str | None) -> tuple[Flatness, float] | None:
        """(its measurement, the seconds it took) if cached."""
        entry = self.get(name, signature, self.settings)
        return None if entry is None else (flatness_of(entry["result"]), entry["seconds"])

    def control(self, dense: str, signature: str | None, size: int, count: int) -> list[Flatness] | None:
        entry = self.get(f"{dense} control {size}", signature, {**self.settings, "control_subsets": count})
        return None if entry is None else [flatness_of(result) for result in entry["results"]]

    def add_model(self, name: str, signature: str | None, result: Flatness, seconds: float) -> None:
        self.put(name, signature, self.settings, result=flatness_entry(result), seconds=seconds)

    def add_control(self, dense: str, signature: str | None, size: int, count: int, results: list[Flatness]) -> None:
        self.put(f"{dense} control {size}", signature, {**self.settings, "control_subsets": count},
                 results=[flatness_entry(result) for result in results])


def analyse_run(run: Run, label: str, settings: FlatnessSettings, cache: dict | None = None,
                saved: Callable[[], None] = lambda: None) -> tuple[list[dict], list[dict]]:
    """(table rows, spectrum rows) for the selected models of `run` (`label` in their `run` column),
    net by net, each table row (COLUMNS) with its random-subset control: its dense net's Hessian on
    `settings.control_subsets` random sets of as many parameters as the model has survivors
    (computed once per net and size, from that Hessian). A spectrum row is one quadrature node and
    weight of one starting vector of one model. `cache` and `saved`: see `FlatnessCache`; a model
    whose checkpoint is gone and that has no cache entry is left out (with a note)."""
    x, y = training_subset(run, settings.subset, settings.seed)
    store = FlatnessCache({} if cache is None else cache, measurement_settings(settings, x, y), saved)
    table, spectra = [], []
    for net in settings.nets:
        net_table, net_spectra = analyse_net(run, label, settings, net, x, y, store)
        table += net_table
        spectra += net_spectra
    return table, spectra


def analyse_net(run: Run, label: str, settings: FlatnessSettings, net: int, x: torch.Tensor, y: torch.Tensor,
                store: FlatnessCache) -> tuple[list[dict], list[dict]]:
    """`analyse_run` for one net: the dense net first (its Hessian also gives the controls), then
    each selected pruned net; what `store` holds is not measured again."""
    measure_options = settings.measure_options()
    found: dict[str, tuple[Flatness, float]] = {}  # model name → (measurement, seconds)
    to_measure: dict[str, nn.Module] = {}
    signatures: dict[str, str | None] = {}
    selected = []
    for row in select_rows(run.rows, net, tuple(settings.ratios), settings.all_steps, settings.repetition):
        name = model_name(row)
        signatures[name] = run.checkpoint_sha256(name)
        cached = store.model(name, signatures[name])
        if cached is not None:
            found[name] = cached
        elif signatures[name] is None:
            print(f"{label}: {name} has no checkpoint and no cached measurement; left out", flush=True)
            continue
        else:
            to_measure[name] = run.load_model(name)
        selected.append(row)
    sizes = sorted({result.num_params for result, _ in found.values()} |
                   {SurvivingParameters.of(model).size for model in to_measure.values()})

    controls: dict[int, list[Flatness]] = {}  # number of surviving parameters → the control's measurements
    dense = next((model_name(row) for row in selected if row["method"] == "dense"), None)
    control_sizes = sizes if dense is not None and settings.control_subsets > 0 else []
    for size in control_sizes:
        cached_control = store.control(dense, signatures[dense], size, settings.control_subsets)
        if cached_control is not None:
            controls[size] = cached_control
    missing_sizes = [size for size in control_sizes if size not in controls]
    if missing_sizes and signatures[dense] is None:
        print(f"{label}: {dense} has no checkpoint; no control for {len(missing_sizes)} model sizes", flush=True)
        missing_sizes = []
    if dense is not None and (dense in to_measure or missing_sizes):  # the dense net: its Hessian serves the control
        started = time.perf_counter()
        loss = restricted_loss(run, to_measure[dense] if dense in to_measure else run.load_model(dense), x, y,
                               **settings.loss_options())
        operator = HessianOperator.of(loss)
        if uses_exact_path(operator.size, settings.exact_max):
            operator = operator.materialised(settings.hvp_batch)  # kept: the control's submatrices need no HVPs
        if dense in to_measure:
            found[dense] = (measure(operator, **measure_options), round(time.perf_counter() - started, 2))
            store.add_model(dense, signatures[dense], *found[dense])
        dense_result = found[dense][0]
        for size in missing_sizes:  # while the dense gradient graph is still alive
            control_started = time.perf_counter()
            subsets = random_subsets(dense_result.num_params, size, settings.control_subsets, settings.seed, net)
            controls[size] = random_subset_control(operator, dense_result, subsets, **measure_options)
            store.add_control(dense, signatures[dense], size, settings.control_subsets, controls[size])
            summary = control_columns(controls[size])
            print(f"{label} control n={size}: λ_max={summary['control_lambda_max_mean']:.5g}±{summary['control_lambda_max_std']:.2g}, "
                  f"trace={summary['control_trace_mean']:.5g}±{summary['control_trace_std']:.2g} "
                  f"({len(subsets)} subsets, {time.perf_counter() - control_started:.1f} s)", flush=True)
        loss.release()

    table, spectra = [], []
    for row in selected:  # the dense net comes first (select_rows)
        name = model_name(row)
        if name not in found:
            started = time.perf_counter()
            loss = restricted_loss(run, to_measure[name], x, y, **settings.loss_options())
            result = measure(HessianOperator.of(loss), **measure_options)
            loss.release()
            found[name] = (result, round(time.perf_counter() - started, 2))
            store.add_model(name, signatures[name], *found[name])
        result, seconds = found[name]
        entry = {
            "run": label, "mode": row["mode"], "method": row["method"], "net": int(row["net"]), "step": int(row["step"]),
            "prune_ratio": float(row["prune_ratio"]), "step_prune_ratio": step_prune_ratio(row),
            "num_surviving_params": result.num_params, "lambda_max": result.lambda_max, "trace": result.trace,
            "trace_stderr": result.trace_stderr, "condition_number": result.condition_number,
            **control_columns(controls.get(result.num_params, [])), "lambda_min": result.lambda_min,
            "hessian": result.hessian, "subset_size": len(x), "seconds": seconds,
        }
        table.append(entry)
        for vector, (nodes, weights) in enumerate(result.quadrature):
            spectra += [{"run": label, "mode": row["mode"], "method": row["method"], "net": net, "step": int(row["step"]),
                         "prune_ratio": float(row["prune_ratio"]), "vector": vector, "node": float(node), "weight": float(weight)}
                        for node, weight in zip(nodes, weights)]
        print(f"{label} {name}: PR {entry['prune_ratio']:.3f}, n={result.num_params}, λ_max={result.lambda_max:.5g} "
              f"(control {entry['control_lambda_max_mean']:.5g}), trace={result.trace:.5g}±{result.trace_stderr:.2g} "
              f"(control {entry['control_trace_mean']:.5g}), κ={result.condition_number:.4g} ({result.hessian}, {seconds:.1f} s"
              f"{', cached' if name not in to_measure else ''})", flush=True)
    return table, spectra
