"""The paper's claims, measured: per claim and run the effects (`Measure`: a mean over nets with its
95 % interval) and a verdict (`Verdict`: holds / does not hold / inconclusive / does not apply / not
measured, and why), from a run's metrics rows and from the tables that `paper.mode_collapse` and
`paper.flatness` write.

The net is the unit of replication. Models of one net share its dense weights and its training
chain, so the steps of a chain are not independent samples: every effect is first summarised per
net (over the moderate steps, scheduled prune ratio ≤ 0.8, the geometric part of the paper's
schedule), and the interval is the t interval over those per-net summaries
(`experiment.analysis.statistics.Interval`).

The rule. An effect E has a side the paper claims (lower NLL, a higher pass share, a lower λ_max)
and a size δ below which it does not matter. With [lo, hi] its 95 % interval over nets:

* **does not hold** when [lo, hi] lies wholly within ±δ (an effect too small to matter), or when it
  excludes no effect on the side opposite to the claim;
* **holds** when it excludes no effect on the claimed side (and is not within ±δ);
* **inconclusive** otherwise, and whenever there are fewer than two nets (no interval).

A method's verdict on a claim combines the effects the claim needs (e.g. lower than dense AND lower
than the NoPrune control): holds when all hold, does not hold when any does not hold, inconclusive
otherwise. A run's verdict: holds when some pruning method holds, does not hold when every one does
not hold, inconclusive otherwise. Under no effect the claimed side is excluded by chance in 2.5 %
of runs per method (one side of a two-sided 95 % interval), so with two pruning methods "holds"
comes by chance in at most 5 % of runs (`tests/test_claims.py` simulates it at the measured noise).

The claims (the paper's abstract and §5) and their effects:

(a) *Pruning improves the test NLL of flows at moderate prune ratios.* Per method and net, the mean
    over the moderate steps of the pruned net's test NLL minus its dense net's, and minus the NoPrune
    control's at the same step (equal training); δ = 0.005 nats. Both must hold. With a converged
    dense baseline (`converged_claim`, "does pruning beat a dense net trained to convergence?"):
    the per-net means of the pruned nets against the converged dense nets (Welch's interval, two
    independent sets of nets).
(b) *Pruned flows avoid mode collapse.* From `paper.mode_collapse`: per net, the share of a method's
    moderate models that pass the mode test, minus its dense net's pass (0 or 1) and minus the share
    of the NoPrune models at the same steps; δ = 0.05 (one model in twenty). Does not apply when
    every dense net passes (no collapse to avoid).
(c) *Pruning flattens the loss surface.* From `paper.flatness`: per model r = ln(λ_max / control),
    for the random-subset control (the dense net's Hessian on as many random parameters) and for the
    NoPrune model at the same step; per net the median of r over its moderate models (robust to one
    sharp model); shown as the ratio exp(r) with its interval; δ = ln 1.1 (10 %, about the spread of
    λ_max over random 2 % data subsets). Both must hold. The same-support control (the dense net's
    Hessian on exactly the surviving parameters) and the spread of λ_max over data subsets are shown
    beside, without a verdict.
(d) *Up to 98 % of the parameters can be removed without loss of accuracy.* Per net, the prune
    potential: the largest achieved prune ratio at which that net's value is within δ of its dense
    net's (0.005 nats, 0.5 percentage points of top-1 error). Holds when the interval of the
    potentials lies at or above the schedule's last step (PR 0.98), does not hold when it lies
    below, inconclusive otherwise. Only nets whose chain reached the run's last step count (a net
    pruned only to moderate ratios, or still being pruned, says nothing about the potential).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from experiment.analysis.prune_potential import delta_of
from experiment.analysis.statistics import Interval, variance_components
from experiment.config.settings import recorded_config
from experiment.jobs import jobs_of
from experiment.plan import Plan, make_plan
from experiment.pruning.rules import CONTROL_METHOD
from experiment.report import main_metric, method_name, quantity_of
from experiment.results import Run
from experiment.plan import step_prune_ratio
from experiment.files import read_csv
from experiment.progress import finished_jobs

MODERATE_MAX_RATIO = 0.8  # the geometric part of the paper's schedule (PR 0.2 .. 0.8)
FULL_POTENTIAL = 0.975  # an achieved ratio this high is the schedule's last step, PR 0.98
PRUNING_METHODS = ("FilterThresNet", "ThresNet")
SHARE_DELTA = 0.05  # (b): one model in twenty
FLATNESS_DELTA = math.log(1.1)  # (c): a 10 % change of λ_max

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Measure:
    """One effect of a claim row: `effect` (mean, 95 % interval, number of nets and the per-net
    values) in `unit`, and the rule's `verdict` on it ("" for a number shown for context)."""

    claim: str
    run: str
    method: str
    measure: str
    effect: Interval
    verdict: str = ""


@dataclass(frozen=True)
class Verdict:
    claim: str
    run: str
    verdict: str
    why: str


def decide(effect: Interval, delta: float, claimed: str = "lower") -> str:
    """The rule (see the module docstring) on one effect whose claimed side is `claimed` ("lower":
    below zero, "higher": above)."""
    if not effect.has_bounds:
        return UNSURE
    if -delta <= effect.low and effect.high <= delta:
        return FAILS
    below, above = effect.high < 0, effect.low > 0
    if below if claimed == "lower" else above:
        return HOLDS
    if above if claimed == "lower" else below:
        return FAILS
    return UNSURE


def combined(verdicts: Sequence[str]) -> str:
    """A method's verdict from those of the effects it needs: all hold → holds, any does not → does not."""
    if verdicts and all(verdict == HOLDS for verdict in verdicts):
        return HOLDS
    return FAILS if FAILS in verdicts else UNSURE


def run_verdict(claim: str, label: str, by_method: dict[str, str], details: str) -> Verdict:
    """A run's verdict from its pruning methods' (see the module docstring)."""
    if HOLDS in by_method.values():
        return Verdict(claim, label, HOLDS, details)
    if by_method and all(verdict == FAILS for verdict in by_method.values()):
        return Verdict(claim, label, FAILS, details)
    return Verdict(claim, label, UNSURE, details)


def _method_details(measures: list[Measure], by_method: dict[str, str]) -> str:
    """'WT: holds (vs dense holds, vs NoPrune inconclusive); FT: ...' from the measures with a verdict."""
    parts = []
    for name, verdict in by_method.items():
        own = [f"{measure.measure.split(',')[0]} {measure.verdict}" for measure in measures
               if measure.method == name and measure.verdict]
        parts.append(f"{name}: {verdict} ({'; '.join(own)})")
    return "; ".join(parts)


def _label(run: Run) -> str:
    network = run.settings.network
    return f"{network.dataset} {network.name}"


def _csv_label(rows: list[dict], path: Path) -> str:
    """'dataset network' of an analysis CSV, whose `run` column is dataset_network_runid."""
    if not rows:
        return path.stem
    dataset, _, network_and_id = rows[0]["run"].partition("_")
    return f"{dataset} {network_and_id.rpartition('_')[0]}"


def is_moderate(ratio: float) -> bool:
    return ratio <= MODERATE_MAX_RATIO + 1e-9


@dataclass(frozen=True)
class NetValues:
    """A run's main quantity in plotted units, each net's repetitions averaged: `dense[net]`, and
    `pruned[(method, net, step ratio)]` = (value, achieved prune ratio)."""

    dense: dict[int, float]
    pruned: dict[tuple[str, int, float], tuple[float, float]]

    @classmethod
    def of(cls, run: Run) -> "NetValues":
        column = main_metric(run.settings.training)
        _, transform = quantity_of(column)
        dense: dict[int, list[float]] = {}
        pruned: dict[tuple[str, int, float], list[tuple[float, float]]] = {}
        for row in run.rows:
            if row.get("mode") not in ("cascade", "retrain", "train") or row.get(column) in (None, ""):
                continue
            value = transform(float(row[column]))
            if row["method"] == "dense":
                dense.setdefault(int(row["net"]), []).append(value)
            else:
                key = (row["method"], int(row["net"]), round(step_prune_ratio(row), 9))
                pruned.setdefault(key, []).append((value, float(row["prune_ratio"])))
        return cls({net: float(np.mean(values)) for net, values in dense.items()},
                   {key: (float(np.mean([value for value, _ in values])), float(np.mean([ratio for _, ratio in values])))
                    for key, values in pruned.items()})

    def steps(self, method: str, net: int) -> list[float]:
        """The step ratios of `method` in `net`, ascending."""
        return sorted(ratio for (name, n, ratio) in self.pruned if name == method and n == net)

    def moderate_mean(self, method: str, net: int, paired_with: str | None = None) -> float | None:
        """The mean over the moderate steps of `method`'s value in `net` (minus `paired_with`'s at the
        same step, over the steps both have); None without such steps."""
        steps = [ratio for ratio in self.steps(method, net) if is_moderate(ratio)
                 and (paired_with is None or (paired_with, net, ratio) in self.pruned)]
        if not steps:
            return None
        return float(np.mean([self.pruned[(method, net, ratio)][0]
                              - (self.pruned[(paired_with, net, ratio)][0] if paired_with else 0.0) for ratio in steps]))


def improvement_claim(run: Run) -> tuple[list[Measure], Verdict]:
    """Claim (a) for one flow run: per method, lower than dense and lower than NoPrune (per-net means
    over the moderate steps)."""
    values = NetValues.of(run)
    per_method = {}
    for method in PRUNING_METHODS:
        versus_dense, versus_control = [], []
        for net, dense_value in sorted(values.dense.items()):
            own, paired = values.moderate_mean(method, net), values.moderate_mean(method, net, paired_with=CONTROL_METHOD)
            if own is not None and paired is not None:
                versus_dense.append(own - dense_value)
                versus_control.append(paired)
        if versus_dense:
            per_method[method_name(method)] = (versus_dense, versus_control)
    return improvement_decision(_label(run), per_method, delta_of(main_metric(run.settings.training)))


def improvement_decision(label: str, per_method: dict[str, tuple[list[float], list[float]]],
                         delta: float) -> tuple[list[Measure], Verdict]:
    """Claim (a) from per-net effects: `per_method[name]` = (pruned − dense, pruned − NoPrune), one
    value per net (its mean over the moderate steps)."""
    measures, by_method = [], {}
    for name, (versus_dense, versus_control) in per_method.items():
        effects = [Measure("a", label, name, "NLL − dense, per-net mean over PR ≤ 0.8", Interval.across(versus_dense)),
                   Measure("a", label, name, f"NLL − {CONTROL_METHOD} at the same step, per-net mean over PR ≤ 0.8",
                           Interval.across(versus_control))]
        effects = [replace(m, verdict=decide(m.effect, delta, "lower")) for m in effects]
        measures += effects
        by_method[name] = combined([m.verdict for m in effects])
    if not by_method:
        return measures, Verdict("a", label, "not measured", "no pruned and NoPrune models at moderate prune ratios")
    return measures, run_verdict("a", label, by_method, _method_details(measures, by_method))


def improvement_noise(run: Run) -> dict[str, tuple[float, float]]:
    """Per pruning method, the (between-net, within-net) standard deviations of its test NLL minus the
    NoPrune control's over the moderate steps (`variance_components` of the nets × steps table; only
    nets with every moderate step of both)."""
    values = NetValues.of(run)
    noise = {}
    for method in PRUNING_METHODS:
        table = []
        for net in sorted(values.dense):
            steps = [ratio for ratio in values.steps(CONTROL_METHOD, net) if is_moderate(ratio)]
            if steps and all((method, net, ratio) in values.pruned for ratio in steps):
                table.append([values.pruned[(method, net, ratio)][0] - values.pruned[(CONTROL_METHOD, net, ratio)][0]
                              for ratio in steps])
        if len(table) >= 2 and len({len(row) for row in table}) == 1:
            noise[method_name(method)] = variance_components(np.array(table))
    return noise


def simulate_improvement_claim(between: float, within: float, nets: int, steps: int, effect: float, runs: int,
                               generator: np.random.Generator, delta: float = 0.005,
                               dense_gap: float = 0.04) -> tuple[float, float]:
    """How often claim (a)'s rule says "holds" on simulated runs of `nets` nets × `steps` moderate
    steps: (share of runs that hold, share in which WT holds). Each model's NLL is u + e per method
    (NoPrune, WT, FT), u ~ N(0, between²/2) per net, e ~ N(0, within²/2) per step, so that a method's
    difference to NoPrune has the given between-net and within-net standard deviations; WT's NLL is
    lower by −`effect` (0: no effect of pruning), FT's is not; each dense net lies `dense_gap` above
    its NoPrune mean, so that only the comparison with NoPrune decides."""
    holds = wt_holds = 0
    for _ in range(runs):
        values = (generator.normal(0.0, between / math.sqrt(2), (3, nets, 1))
                  + generator.normal(0.0, within / math.sqrt(2), (3, nets, steps)))
        values[1] += effect
        control, dense = values[0], values[0].mean(axis=1) + dense_gap
        per_method = {name: (list(values[index].mean(axis=1) - dense), list((values[index] - control).mean(axis=1)))
                      for index, name in ((1, "WT"), (2, "FT"))}
        measures, verdict = improvement_decision("simulated", per_method, delta)
        holds += verdict.verdict == HOLDS
        wt_holds += combined([m.verdict for m in measures if m.method == "WT"]) == HOLDS
    return holds / runs, wt_holds / runs


def converged_claim(run: Run, baseline: Run) -> tuple[list[Measure], Verdict]:
    """Claim (a) against a dense baseline trained to convergence (`baseline`: a run of dense nets of
    the same dataset and network, e.g. more epochs and a learning-rate decay): per method, the per-net
    means over the moderate steps against the baseline's dense nets (Welch's interval). The NoPrune
    control's are shown beside (retraining alone against convergence), without a verdict."""
    label = f"{_label(run)} vs {baseline.settings.training.num_epochs}-epoch dense"
    values, reference = NetValues.of(run), NetValues.of(baseline)
    delta = delta_of(main_metric(run.settings.training))
    converged = list(reference.dense.values())
    measures = [Measure("a", label, "dense", f"converged dense NLL ({baseline.settings.training.num_epochs} epochs)",
                        Interval.across(converged)),
                Measure("a", label, "dense", f"paper-schedule dense NLL ({run.settings.training.num_epochs} epochs)",
                        Interval.across(list(values.dense.values())))]
    by_method = {}
    for method in (*PRUNING_METHODS, CONTROL_METHOD):
        means = [mean for net in sorted(values.dense) if (mean := values.moderate_mean(method, net)) is not None]
        if not means:
            continue
        name = method_name(method)
        effect = Interval.difference(means, converged)
        verdict = decide(effect, delta, "lower") if method != CONTROL_METHOD else ""
        measures.append(Measure("a", label, name, "NLL − converged dense, per-net mean over PR ≤ 0.8", effect, verdict))
        if verdict:
            by_method[name] = verdict
    if not by_method or len(converged) == 0:
        return measures, Verdict("a", label, "not measured", "no pruned models at moderate ratios or no converged dense nets")
    return measures, run_verdict("a", label, by_method, _method_details(measures, by_method))


def potential_claim(run: Run) -> tuple[list[Measure], Verdict]:
    """Claim (d) for one run: the per-net prune potentials."""
    label, values = _label(run), NetValues.of(run)
    column = main_metric(run.settings.training)
    unit, delta = quantity_of(column)[0], delta_of(column)
    measures = [Measure("d", label, "dense", unit, Interval.across(list(values.dense.values())))] if values.dense else []
    by_method = {}
    for method in PRUNING_METHODS:
        potentials, there = [], []
        chains = {net: values.steps(method, net) for net in values.dense}
        last = max((max(steps) for steps in chains.values() if steps), default=None)
        for net, dense_value in sorted(values.dense.items()):
            steps = chains[net]
            if not steps or max(steps) < last:  # a chain that stopped short of the last step (see the rule)
                continue
            within = [values.pruned[(method, net, ratio)] for ratio in steps if values.pruned[(method, net, ratio)][0] <= dense_value + delta]
            best = max(within, key=lambda value_and_ratio: value_and_ratio[1], default=None)
            potentials.append(best[1] if best else 0.0)
            if best:
                there.append(best[0])
        if not potentials:
            continue
        name = method_name(method)
        effect = Interval.across(potentials)
        if not effect.has_bounds:
            verdict = UNSURE
        else:
            verdict = HOLDS if effect.low >= FULL_POTENTIAL else FAILS if effect.high < FULL_POTENTIAL else UNSURE
        measures.append(Measure("d", label, name, f"prune potential per net (δ = {delta:g}), achieved PR", effect, verdict))
        if there:
            measures.append(Measure("d", label, name, f"{unit} there", Interval.across(there)))
        by_method[name] = verdict
    if not by_method:
        return measures, Verdict("d", label, "not measured", "no pruned models")
    shown = ", ".join(f"{m.method} {m.effect.mean:.3f} [{m.effect.low:.3f}, {m.effect.high:.3f}]" for m in measures if m.verdict)
    return measures, run_verdict("d", label, by_method, f"prune potential, mean [95 % interval] over nets: {shown}; "
                                                        f"the schedule's last step is PR 0.98")


def mode_collapse_claim(path: Path) -> tuple[list[Measure], Verdict]:
    """Claim (b) from one `paper.mode_collapse` CSV (a row per model and k; `passes` is per model)."""
    rows = [row for row in read_csv(path) if row["method"] == "dense" or is_moderate(float(row["step_prune_ratio"]))]
    label = _csv_label(rows, path)
    passes: dict[tuple[str, int, int], list[int]] = {}  # (method, net, step) → pass per repetition
    seen = set()
    for row in rows:
        model = (row["method"], row["mode"], int(row["net"]), int(row["repetition"]), int(row["step"]))
        if model not in seen:
            seen.add(model)
            passes.setdefault((row["method"], int(row["net"]), int(row["step"])), []).append(int(row["passes"]))
    share = {key: float(np.mean(values)) for key, values in passes.items()}
    nets = sorted({net for (method, net, _) in share if method == "dense"})
    if not nets:
        return [], Verdict("b", label, "not measured", "no dense models in the mode-collapse table")
    dense = {net: share[("dense", net, 0)] for net in nets}
    measures = [Measure("b", label, "dense", "share of dense nets that pass", Interval.across(list(dense.values())))]

    def per_net(method: str, net: int, steps: set[int] | None = None) -> float | None:
        """The pass share of `method`'s models of `net` (at `steps` only, if given)."""
        values = [value for (name, n, step), value in share.items() if name == method and n == net and (steps is None or step in steps)]
        return float(np.mean(values)) if values else None

    def steps_of(method: str, net: int) -> set[int]:
        return {step for (name, n, step) in share if name == method and n == net}

    by_method = {}
    for method in PRUNING_METHODS:
        own, versus_dense, versus_control = [], [], []
        for net in nets:
            method_share = per_net(method, net)
            if method_share is None:
                continue
            own.append(method_share)
            versus_dense.append(method_share - dense[net])
            common = steps_of(method, net) & steps_of(CONTROL_METHOD, net)
            if common:
                versus_control.append(per_net(method, net, common) - per_net(CONTROL_METHOD, net, common))
        if not own:
            continue
        name = method_name(method)
        measures.append(Measure("b", label, name, "share of moderate models that pass", Interval.across(own)))
        effects = [Measure("b", label, name, "pass share − dense, per net", Interval.across(versus_dense))]
        if versus_control:
            effects.append(Measure("b", label, name, f"pass share − {CONTROL_METHOD} at the same steps, per net",
                                   Interval.across(versus_control)))
        effects = [replace(m, verdict=decide(m.effect, SHARE_DELTA, "higher")) for m in effects]
        measures += effects
        by_method[name] = combined([m.verdict for m in effects]) if versus_control else UNSURE
    control = [value for net in nets if (value := per_net(CONTROL_METHOD, net)) is not None]
    if control:
        measures.append(Measure("b", label, CONTROL_METHOD, "share of moderate models that pass", Interval.across(control)))
    if all(value == 1.0 for value in dense.values()):
        measures = [replace(m, verdict="") for m in measures]
        return measures, Verdict("b", label, "does not apply", f"every dense net passes ({len(nets)} of {len(nets)}): "
                                                                "there is no collapse to avoid")
    if not by_method:
        return measures, Verdict("b", label, "not measured", "no pruned models at moderate prune ratios")
    return measures, run_verdict("b", label, by_method, _method_details(measures, by_method))


def flatness_claim(path: Path) -> tuple[list[Measure], Verdict]:
    """Claim (c) from one `paper.flatness` CSV: per net, the median over its moderate models of the
    log ratios of λ_max to the controls (see the module docstring)."""
    rows = [row for row in read_csv(path) if row["method"] != "dense"
            and is_moderate(float(row["step_prune_ratio"]) if row.get("step_prune_ratio") not in (None, "") else 0.0)]
    label = _csv_label(rows, path)
    control_at = {(int(row["net"]), int(row["step"])): float(row["lambda_max"]) for row in rows if row["method"] == CONTROL_METHOD}
    measures, by_method = [], {}
    for method in PRUNING_METHODS:
        members = [row for row in rows if row["method"] == method]
        if not members:
            continue
        nets = sorted({int(row["net"]) for row in members})

        def per_net_median(denominator) -> list[float]:
            medians = []
            for net in nets:
                ratios = [math.log(float(row["lambda_max"]) / value) for row in members if int(row["net"]) == net
                          and (value := denominator(row)) is not None and value > 0 and float(row["lambda_max"]) > 0]
                if ratios:
                    medians.append(float(np.median(ratios)))
            return medians

        random_subset = per_net_median(lambda row: _number(row.get("control_lambda_max_mean")))
        versus_control = per_net_median(lambda row: control_at.get((int(row["net"]), int(row["step"]))))
        same_support = per_net_median(lambda row: _number(row.get("same_support_lambda_max")))
        name = method_name(method)
        effects = [Measure("c", label, name, "λ_max / random-subset control, per-net median over PR ≤ 0.8",
                           Interval.across(random_subset)),
                   Measure("c", label, name, f"λ_max / {CONTROL_METHOD} at the same step, per-net median over PR ≤ 0.8",
                           Interval.across(versus_control))]
        effects = [Measure(m.claim, m.run, m.method, m.measure, m.effect.mapped(math.exp),
                           decide(m.effect, FLATNESS_DELTA, "lower") if m.effect.count else UNSURE) for m in effects]
        measures += effects
        if same_support:
            measures.append(Measure("c", label, name, "λ_max / same-support control, per-net median over PR ≤ 0.8",
                                    Interval.across(same_support).mapped(math.exp)))
        by_method[name] = combined([m.verdict for m in effects])
    spreads = [std / mean for row in rows if (mean := _number(row.get("lambda_max_subsets_mean")))
               and (std := _number(row.get("lambda_max_subsets_std"))) is not None]
    if spreads:
        measures.append(Measure("c", label, "all", "relative std of λ_max over data subsets, per model",
                                Interval(float(np.median(spreads)), float(np.min(spreads)), float(np.max(spreads)), len(spreads))))
    if not by_method:
        return measures, Verdict("c", label, "not measured", "no pruned models at moderate ratios in the flatness table")
    return measures, run_verdict("c", label, by_method, _method_details(measures, by_method))


def _number(text) -> float | None:
    """A CSV cell as a finite float (None: empty or not finite)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def asked_plans(run: Run) -> list[Plan]:
    """The plans of every request made of the run (requests.yaml: each its own `experiments` on the
    recorded config), or of the recorded config alone for a run folder without requests."""
    config = recorded_config(run.config, str(run.folder.config_file))
    requests = run.folder.load_requests() if run.folder.requests_file.exists() else []
    if not requests:
        return [make_plan(config)]
    return [make_plan(recorded_config({**run.config, "experiments": request["experiments"]}, str(run.folder.requests_file)))
            for request in requests]


def recorded_plan(run: Run) -> Plan:
    """The plan of the run's config as the validator resolves it today (`recorded_config`)."""
    return make_plan(recorded_config(run.config, str(run.folder.config_file)))


def unfinished_jobs(run: Run) -> tuple[int, int]:
    """(jobs with rows missing, all jobs) over every request made of the run (`asked_plans`): a job
    counts as missing when some request asked for rows of it that are not there."""
    everything, missing = set(), set()
    for plan in asked_plans(run):
        names = {job.name for job in jobs_of(plan)}
        everything |= names
        missing |= names - finished_jobs(plan, run.folder)
    return len(missing), len(everything)


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


def same_model(run: Run, baseline: Run) -> bool:
    return (run.settings.network.dataset, run.settings.network.name) == (baseline.settings.network.dataset,
                                                                           baseline.settings.network.name)


def measure_claims(runs: Sequence[Run], mode_collapse: Sequence[Path] = (), flatness: Sequence[Path] = (),
                   baselines: Sequence[Run] = ()) -> tuple[list[Measure], list[Verdict]]:
    """Every claim's measures and verdicts for the given runs, converged dense `baselines` (each
    compared with the flow runs of its dataset and network) and analysis CSVs, in claim order; the
    verdicts on a run whose jobs are not all finished (also those from its analysis CSVs) say so."""
    results = []
    for run in runs:
        if main_metric(run.settings.training) == "nll":
            results.append(so_far(improvement_claim(run), run))
            results += [so_far(so_far(converged_claim(run, baseline), baseline), run)
                        for baseline in baselines if same_model(run, baseline)]
    results += [table_claim(mode_collapse_claim(Path(path)), Path(path), runs) for path in mode_collapse]
    results += [table_claim(flatness_claim(Path(path)), Path(path), runs) for path in flatness]
    results += [so_far(potential_claim(run), run) for run in runs]
    measures = [measure for found, _ in results for measure in found]
    verdicts = [verdict for _, verdict in results]
    return measures, verdicts
