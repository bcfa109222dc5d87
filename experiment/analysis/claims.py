"""The paper's claims, measured: per claim and run the numbers (`Measure`: mean ± std over nets or
models) and a verdict (`Verdict`: holds / does not hold / inconclusive / does not apply / not
measured, and why), from a run's metrics rows and from the tables that `paper.mode_collapse` and
`paper.flatness` write.

The claims (the paper's abstract and §5) and how each is decided:

(a) *Pruning improves the test NLL of flows at moderate prune ratios.* Per flow run and pruning
    method, per net: the mean over the moderate steps (scheduled prune ratio ≤ 0.8, the geometric
    part of the paper's schedule) of the pruned net's test NLL minus the dense net's, and minus the
    NoPrune control's at the same step (equal training). Holds when some method is lower than both
    in every net, does not hold when every method is higher than one of them in every net,
    inconclusive otherwise (the nets disagree).
(b) *Pruned flows avoid mode collapse.* From `paper.mode_collapse`: the share of models that pass
    (all modes hit at k = 2, TV ≤ 0.1 at k = 3) among the dense nets, the pruned nets at moderate
    steps (per method) and the NoPrune models at the same steps. Holds when a method's pass share is
    above both the dense nets' and the NoPrune models'; does not apply when the dense nets pass.
(c) *Pruning flattens the loss surface.* From `paper.flatness`: λ_max of each pruned model divided by
    its random-subset control (the dense net's Hessian restricted to as many random parameters as
    survive) and by the NoPrune model at the same step. Holds when pruned models are below 1 on both
    ratios in a majority of the measured models for some method, does not hold when below 1 in none.
(d) *Up to 98 % of the parameters can be removed without loss of accuracy.* Per run and method, the
    prune potential (`experiment.analysis.prune_potential`): the largest mean achieved prune ratio whose mean value is within
    δ of the dense nets' (0.005 nats, 0.5 percentage points of top-1 error). Holds when it reaches 0.98
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment.analysis.prune_potential import delta_of, prune_potential
from experiment.config.settings import recorded_config
from experiment.jobs import jobs_of
from experiment.plan import Plan, make_plan
from experiment.pruning.rules import CONTROL_METHOD
from experiment.report import dense_point, main_metric, method_name, pruned_points, quantity_of
from experiment.results import Run
from experiment.results.rows import step_prune_ratio
from experiment.results.tree import read_csv
from experiment.runner import finished_jobs

MODERATE_MAX_RATIO = 0.8  # the geometric part of the paper's schedule (PR 0.2 .. 0.8)
FULL_POTENTIAL = 0.975  # an achieved ratio this high is the schedule's last step, PR 0.98
PRUNING_METHODS = ("FilterThresNet", "ThresNet")


@dataclass(frozen=True)
class Measure:
    """One number of a claim row: `mean` ± `std` over `count` nets (or models); `std` is NaN for a
    number that has no spread (one of the mean curve)."""

    claim: str
    run: str
    method: str
    measure: str
    mean: float
    std: float
    count: int


@dataclass(frozen=True)
class Verdict:
    claim: str
    run: str
    verdict: str
    why: str


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std()), len(array)  # population std, as in the end-of-run table


def _label(run: Run) -> str:
    network = run.settings.network
    return f"{network.dataset} {network.name}"


def _csv_label(rows: list[dict], path: Path) -> str:
    """'dataset network' of an analysis CSV, whose `run` column is dataset_network_runid."""
    if not rows:
        return path.stem
    dataset, _, network_and_id = rows[0]["run"].partition("_")
    return f"{dataset} {network_and_id.rpartition('_')[0]}"


def _per_net_values(run: Run) -> tuple[dict[int, float], dict[tuple[str, int, float], float]]:
    """(dense value per net, value per (method, net, step prune ratio)) in plotted units, each
    net's repetitions averaged."""
    column = main_metric(run.settings.training)
    _, transform = quantity_of(column)
    dense: dict[int, list[float]] = {}
    pruned: dict[tuple[str, int, float], list[float]] = {}
    for row in run.rows:
        if row.get("mode") not in ("cascade", "retrain", "train") or row.get(column) in (None, ""):
            continue
        value = transform(float(row[column]))
        if row["method"] == "dense":
            dense.setdefault(int(row["net"]), []).append(value)
        else:
            key = (row["method"], int(row["net"]), round(step_prune_ratio(row), 9))
            pruned.setdefault(key, []).append(value)
    return ({net: float(np.mean(values)) for net, values in dense.items()},
            {key: float(np.mean(values)) for key, values in pruned.items()})


def _signs(differences: Sequence[float]) -> str:
    """'lower' / 'higher' when every net agrees, else 'mixed'."""
    if all(difference < 0 for difference in differences):
        return "lower"
    if all(difference > 0 for difference in differences):
        return "higher"
    return "mixed"


def improvement_claim(run: Run) -> tuple[list[Measure], Verdict]:
    """Claim (a) for one flow run."""
    label = _label(run)
    dense, pruned = _per_net_values(run)
    measures, outcomes = [], {}
    for method in PRUNING_METHODS:
        versus_dense, versus_control = [], []
        for net, dense_value in sorted(dense.items()):
            steps = [ratio for (name, n, ratio) in pruned if name == method and n == net and ratio <= MODERATE_MAX_RATIO + 1e-9]
            paired = [ratio for ratio in steps if (CONTROL_METHOD, net, ratio) in pruned]
            if not steps or not paired:
                continue
            versus_dense.append(float(np.mean([pruned[(method, net, ratio)] - dense_value for ratio in steps])))
            versus_control.append(float(np.mean([pruned[(method, net, ratio)] - pruned[(CONTROL_METHOD, net, ratio)]
                                                 for ratio in paired])))
        if not versus_dense:
            continue
        name = method_name(method)
        measures.append(Measure("a", label, name, "NLL − dense, mean over PR ≤ 0.8", *_mean_std(versus_dense)))
        measures.append(Measure("a", label, name, "NLL − NoPrune at the same step, mean over PR ≤ 0.8", *_mean_std(versus_control)))
        outcomes[name] = (_signs(versus_dense), _signs(versus_control), len(versus_dense))
    if not outcomes:
        return measures, Verdict("a", label, "not measured", "no pruned and NoPrune models at moderate prune ratios")
    better = [name for name, (dense_sign, control_sign, _) in outcomes.items() if dense_sign == control_sign == "lower"]
    worse = [name for name, (dense_sign, control_sign, _) in outcomes.items() if "higher" in (dense_sign, control_sign)]
    nets = max(count for *_, count in outcomes.values())
    details = "; ".join(f"{name}: {dense_sign} than dense, {control_sign} than NoPrune" for name, (dense_sign, control_sign, _) in outcomes.items())
    if better:
        return measures, Verdict("a", label, "holds", f"{details} (in every one of {nets} nets)")
    if len(worse) == len(outcomes):
        return measures, Verdict("a", label, "does not hold", f"{details} (in every one of {nets} nets)")
    return measures, Verdict("a", label, "inconclusive", f"{details} ({nets} nets disagree)")


def potential_claim(run: Run) -> tuple[list[Measure], Verdict]:
    """Claim (d) for one run."""
    label = _label(run)
    column = main_metric(run.settings.training)
    _, transform = quantity_of(column)
    dense = dense_point(run.rows, column, transform)
    lines = pruned_points(run.rows, column, transform)
    delta = delta_of(column)
    unit = quantity_of(column)[0]
    measures, potentials = [], {}
    if dense is not None:
        measures.append(Measure("d", label, "dense", unit, dense.value_mean, dense.value_std, dense.num_nets))
    for (mode, method), points in sorted(lines.items()):
        if method == CONTROL_METHOD or dense is None:
            continue
        best = prune_potential(dense, points, delta)
        potential = best.prune_ratio_mean if best else 0.0
        name = method_name(method)
        # (a property of the mean curve: no spread over nets)
        measures.append(Measure("d", label, name, f"prune potential (δ = {delta:g}), mean achieved PR", potential, math.nan,
                                best.num_nets if best else dense.num_nets))
        if best is not None:
            measures.append(Measure("d", label, name, f"{unit} there", best.value_mean, best.value_std, best.num_nets))
        potentials[name] = potential
    if not potentials:
        return measures, Verdict("d", label, "not measured", "no pruned models")
    shown = ", ".join(f"{name} {value:.3f}" for name, value in potentials.items())
    if max(potentials.values()) >= FULL_POTENTIAL:
        return measures, Verdict("d", label, "holds", f"within δ of dense up to PR 0.98: {shown}")
    return measures, Verdict("d", label, "does not hold", f"largest prune ratio within δ of dense: {shown}")


def mode_collapse_claim(path: Path) -> tuple[list[Measure], Verdict]:
    """Claim (b) from one `paper.mode_collapse` CSV (a row per model and k; `passes` is per model)."""
    rows = [row for row in read_csv(path) if row["method"] == "dense" or float(row["step_prune_ratio"]) <= MODERATE_MAX_RATIO + 1e-9]
    label = _csv_label(rows, path)
    models: dict[str, dict[tuple, int]] = {}
    for row in rows:
        model = (row["mode"], row["net"], row["repetition"], row["step"])
        models.setdefault(row["method"], {})[model] = int(row["passes"])
    shares = {method: _mean_std(list(passes.values())) for method, passes in models.items()}
    measures = [Measure("b", label, method_name(method), "share of models that pass", *shares[method])
                for method in ("dense", *PRUNING_METHODS, CONTROL_METHOD) if method in shares]
    if "dense" not in shares:
        return measures, Verdict("b", label, "not measured", "no dense models in the mode-collapse table")
    dense_share = shares["dense"][0]
    control_share = shares.get(CONTROL_METHOD, (np.nan,))[0]
    if dense_share == 1.0:
        return measures, Verdict("b", label, "does not apply", "every dense net passes: there is no collapse to avoid")
    better = [method_name(m) for m in PRUNING_METHODS if m in shares and shares[m][0] > dense_share and not shares[m][0] <= control_share]
    shown = ", ".join(f"{method_name(m)} {shares[m][0]:.2f}" for m in ("dense", *PRUNING_METHODS, CONTROL_METHOD) if m in shares)
    if better:
        return measures, Verdict("b", label, "holds", f"pass shares {shown}: {', '.join(better)} above dense and NoPrune")
    return measures, Verdict("b", label, "does not hold", f"pass shares {shown}: no method above both dense and NoPrune")


def flatness_claim(path: Path) -> tuple[list[Measure], Verdict]:
    """Claim (c) from one `paper.flatness` CSV (net 0's models at chosen steps)."""
    rows = read_csv(path)
    label = _csv_label(rows, path)
    control_at = {(row["net"], row["step"]): float(row["lambda_max"]) for row in rows if row["method"] == CONTROL_METHOD}
    measures, majority = [], {}
    for method in PRUNING_METHODS:
        members = [row for row in rows if row["method"] == method]
        if not members:
            continue
        versus_subset = [float(row["lambda_max"]) / float(row["control_lambda_max_mean"]) for row in members]
        versus_control = [float(row["lambda_max"]) / control_at[(row["net"], row["step"])]
                          for row in members if (row["net"], row["step"]) in control_at]
        name = method_name(method)
        measures.append(Measure("c", label, name, "λ_max / random-subset control", *_mean_std(versus_subset)))
        if versus_control:
            measures.append(Measure("c", label, name, "λ_max / NoPrune at the same step", *_mean_std(versus_control)))
        below = [subset < 1 and (row["net"], row["step"]) in control_at and subset * float(row["control_lambda_max_mean"]) < control_at[(row["net"], row["step"])]
                 for subset, row in zip(versus_subset, members)]
        majority[name] = (sum(below), len(below))
    if not majority:
        return measures, Verdict("c", label, "not measured", "no pruned models in the flatness table")
    shown = ", ".join(f"{name}: {count} of {total}" for name, (count, total) in majority.items())
    if any(total and count > total / 2 for count, total in majority.values()):
        return measures, Verdict("c", label, "holds", f"models flatter than both controls: {shown}")
    if all(count == 0 for count, _ in majority.values()):
        return measures, Verdict("c", label, "does not hold", f"models flatter than both controls: {shown}")
    return measures, Verdict("c", label, "inconclusive", f"models flatter than both controls: {shown}")


def recorded_plan(run: Run) -> Plan:
    """The plan of the run's config as the validator resolves it today (`recorded_config`)."""
    return make_plan(recorded_config(run.config, str(run.folder.config_file)))


def unfinished_jobs(run: Run) -> tuple[int, int]:
    """(jobs with rows missing, all jobs) of the run's config: dense nets and prune chains."""
    plan = recorded_plan(run)
    jobs = len(jobs_of(plan))
    return jobs - len(finished_jobs(plan, run.folder)), jobs


def so_far(result: tuple[list[Measure], Verdict], run: Run) -> tuple[list[Measure], Verdict]:
    """A claim of an unfinished run, its verdict marked as one on the rows so far."""
    measures, verdict = result
    missing, jobs = unfinished_jobs(run)
    if not missing:
        return result
    return measures, Verdict(verdict.claim, verdict.run, f"{verdict.verdict} so far",
                             f"run unfinished ({len(run.rows)} models, {missing} of {jobs} jobs not done): {verdict.why}")


def table_claim(result: tuple[list[Measure], Verdict], path: Path, runs: Sequence[Run]) -> tuple[list[Measure], Verdict]:
    """A claim decided from an analysis CSV, marked as one on the rows so far (`so_far`) when the
    run it was made from (the id that ends its `run` column) is among `runs` and unfinished."""
    rows = read_csv(path)
    run_id = rows[0]["run"].rpartition("_")[2] if rows else None
    run = next((run for run in runs if recorded_plan(run).run_id == run_id), None)
    return result if run is None else so_far(result, run)


def measure_claims(runs: Sequence[Run], mode_collapse: Sequence[Path] = (), flatness: Sequence[Path] = ()) -> tuple[list[Measure], list[Verdict]]:
    """Every claim's measures and verdicts for the given runs and analysis CSVs, in claim order; the
    verdicts on a run whose jobs are not all finished (also those from its analysis CSVs) say so."""
    results = []
    for run in runs:
        if main_metric(run.settings.training) == "nll":
            results.append(so_far(improvement_claim(run), run))
    results += [table_claim(mode_collapse_claim(Path(path)), Path(path), runs) for path in mode_collapse]
    results += [table_claim(flatness_claim(Path(path)), Path(path), runs) for path in flatness]
    results += [so_far(potential_claim(run), run) for run in runs]
    measures = [measure for found, _ in results for measure in found]
    verdicts = [verdict for _, verdict in results]
    return measures, verdicts
