"""The end-of-run summary and the point summary the `paper/` scripts share: the main test metric
per (mode, method, prune ratio), averaged over each net's repetitions, then mean ± std over nets;
printed as a table and plotted (`prune_curve.png` in the run folder) at the end of every run, in the
quantity the `paper/` figures show (`quantity_of`: test NLL, bits/dim, or top-k error in %); and
what a command reports at its end: each run's table (`report`), the models that failed and the exit
code that says so (`summarize_failures`, MODELS_FAILED)."""

from __future__ import annotations

import io
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from experiment.config.settings import PlottedKeepRatios, Schedule
from experiment.files import atomic_write_bytes, remove_temporaries
from experiment.plan import Plan
from experiment.pruning.rules import CONTROL_METHOD
from experiment.files import numeric
from experiment.plan import step_prune_ratio
from experiment.results.tree import RunDir, is_failed, model_name
from experiment.training.metrics import metric_column


# How methods are named in every figure and table: the paper's FT / WT, and the control.
METHOD_NAMES = {"ThresNet": "WT", "FilterThresNet": "FT", CONTROL_METHOD: "NoPrune", "dense": "dense"}


def method_name(method: str) -> str:
    """How a method is named in figures and tables (`METHOD_NAMES`; any other by its own name)."""
    return METHOD_NAMES.get(method, method)


def line_label(mode: str, method: str, modes: set[str]) -> str:
    """'WT' or, where a run holds several modes, 'WT (retrain)'."""
    name = method_name(method)
    return name if len(modes) <= 1 else f"{name} ({mode})"


def main_metric(schedule: Schedule) -> str:
    """The metrics-table column of the first real metric of the schedule's `metrics_test` (else the
    test loss)."""
    for spec in schedule.metrics_test:
        column = metric_column(spec["type"], spec["kwargs"])
        if column:
            return column
    return "test_loss"


# How each main-metric column is shown: (label, transform of the stored value).
QUANTITIES: dict[str, tuple[str, Callable[[float], float]]] = {
    "nll": ("test NLL (nats)", lambda value: value),
    "bits_per_dim": ("test bits/dim", lambda value: value),
    "top1_acc": ("test top-1 error (%)", lambda value: 100.0 * (1.0 - value)),
}


def quantity_of(column: str) -> tuple[str, Callable[[float], float]]:
    """(label, value transform) of a metrics column; top-k accuracies become error in %."""
    if column in QUANTITIES:
        return QUANTITIES[column]
    top = re.fullmatch(r"top(\d+)_acc", column)
    if top:
        return f"test top-{top.group(1)} error (%)", QUANTITIES["top1_acc"][1]
    return f"test {column}", lambda value: value


@dataclass(frozen=True)
class Point:
    """One plotted point: the models of one (mode, method, step prune ratio), first averaged over
    the repetitions of each net, then mean ± std (population, as in the end-of-run table) over nets.
    `value_*` are in plotted units (after the quantity's transform). `target_prune_ratio` is the
    step's scheduled ratio (`step_prune_ratio`), also for the NoPrune control, whose achieved
    `prune_ratio_mean` is 0."""

    mode: str
    method: str
    target_prune_ratio: float
    prune_ratio_mean: float
    value_mean: float
    value_std: float
    nonzero_params_mean: float
    num_params: float
    num_nets: int

    @property
    def plotted_prune_ratio(self) -> float:
        """Where the point is drawn: at its achieved prune ratio; the control at its step's ratio, next
        to the pruned models of the same training budget."""
        return self.target_prune_ratio if self.method == CONTROL_METHOD else self.prune_ratio_mean


def _point(rows: list[dict], column: str, transform, mode: str, method: str, target: float) -> Point | None:
    per_net: dict[int, list[tuple[float, float, float, float]]] = {}
    for row in rows:
        value = numeric(row.get(column))
        if value is None:
            continue  # no value recorded for this model
        per_net.setdefault(row["net"], []).append((
            transform(value), float(row["prune_ratio"]), float(row["nonzero_params"]), float(row["num_params"])))
    if not per_net:
        return None
    nets = np.array([np.mean(np.array(values), axis=0) for _, values in sorted(per_net.items())])
    return Point(mode=mode, method=method, target_prune_ratio=float(target), prune_ratio_mean=float(nets[:, 1].mean()),
                 value_mean=float(nets[:, 0].mean()), value_std=float(nets[:, 0].std()),
                 nonzero_params_mean=float(nets[:, 2].mean()), num_params=float(nets[:, 3].mean()),
                 num_nets=len(nets))


def dense_point(rows: list[dict], column: str, transform=lambda value: value) -> Point | None:
    """The dense nets of a run's metrics rows as one point at prune ratio 0 (None without dense rows)."""
    dense = [row for row in rows if row["method"] == "dense"]
    mode = dense[0]["mode"] if dense else "train"
    return _point(dense, column, transform, mode, "dense", 0.0)


def pruned_points(rows: list[dict], column: str, transform=lambda value: value) -> dict[tuple[str, str], list[Point]]:
    """{(mode, method): points sorted by step prune ratio} of a run's pruned models; rows of every
    mode (cascade, retrain) and method found in the rows, grouped by their step's prune ratio."""
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for row in rows:
        if row["method"] == "dense":
            continue
        groups.setdefault((row["mode"], row["method"], round(step_prune_ratio(row), 9)), []).append(row)
    lines: dict[tuple[str, str], list[Point]] = {}
    for (mode, method, target), members in sorted(groups.items()):
        point = _point(members, column, transform, mode, method, target)
        if point is not None and math.isfinite(point.prune_ratio_mean):
            lines.setdefault((mode, method), []).append(point)
    return lines


def selected_points(rows: list[dict], column: str, transform=lambda value: value) -> dict[tuple[str, str], Point]:
    """{(mode, method): the nets' selected models as one point} of the chains a stop rule judged
    (their rows carry `selected`, experiment/stopping.py): per net the row marked 1, or the dense net
    where no pruned step was within tolerance. `target_prune_ratio` is NaN: the nets may differ."""
    chosen: dict[tuple[str, str], list[dict]] = {}
    dense = {row["net"]: row for row in rows if row["method"] == "dense"}
    judged: dict[tuple[str, str, int, int], list[dict]] = {}
    for row in rows:
        if row["method"] != "dense" and row.get("selected") in (0, 1):
            judged.setdefault((row["mode"], row["method"], row["net"], row["repetition"]), []).append(row)
    for (mode, method, net, _), chain in sorted(judged.items()):
        marked = [row for row in chain if row["selected"] == 1]
        choice = marked[0] if marked else dense.get(net)
        if choice is not None:
            chosen.setdefault((mode, method), []).append(choice)
    points = {key: _point(members, column, transform, *key, math.nan) for key, members in chosen.items()}
    return {key: point for key, point in points.items() if point is not None}


def spread_text(point: Point) -> str:
    """'mean ± std' over the point's nets, or 'mean (n = 1)' for a single net, whose spread is unknown."""
    if point.num_nets == 1:
        return f"{point.value_mean:.4f} (n = 1)"
    return f"{point.value_mean:.4f} ± {point.value_std:.4f}"


def format_selection(points: dict[tuple[str, str], Point], label: str) -> str:
    """One line per (mode, method) of a stop rule's choice: the sparsest nets within tolerance."""
    return "\n".join(f"stop rule, {method} ({mode}): the sparsest nets within tolerance have PR {point.prune_ratio_mean:.3f}, "
                     f"{label} {spread_text(point)}{f' (mean ± std over {point.num_nets} nets)' if point.num_nets > 1 else ''}"
                     for (mode, method), point in points.items())


def format_table(dense: Point | None, lines: dict[tuple[str, str], list[Point]], label: str) -> str:
    """Rows of target prune ratio (dense first), one column per method headed 'method label' (the
    points' quantity, e.g. 'ThresNet test top-1 error (%)'): 'mean ± std (PR achieved)', 'mean
    (n = 1)' for a single net; a dense-only run (mode train) gets one column, 'dense'."""
    methods = [method for _, method in lines] or ["dense"]
    by_target = {key: {point.target_prune_ratio: point for point in points} for key, points in lines.items()}
    targets = sorted({target for points in by_target.values() for target in points})
    widths = [max(33, len(f"{method} {label}")) for method in methods]  # 33: a cell's width
    header = f"{'target PR':>11}  " + "  ".join(f"{method + ' ' + label:>{width}}" for method, width in zip(methods, widths))
    cell = lambda point: f"{spread_text(point):<16} (PR {point.prune_ratio_mean:.3f})"
    rows = [f"{0.0:>11.3f}  " + "  ".join(f"{cell(dense):>{width}}" for width in widths)] if dense else []
    for target in targets:
        rows.append(f"{target:>11.3f}  " + "  ".join(f"{cell(points[target]) if target in points else '':>{width}}"
                                                     for points, width in zip(by_target.values(), widths)))
    return "\n".join([header, *rows])


SWEEP_TABLE_RATIOS = (0.5, 0.8, 1.0)  # the sweep table shows each method at the target ratios nearest these


def format_sweep_table(experiments: list[tuple[str, Point | None, dict[tuple[str, str], list[Point]]]], label: str) -> str:
    """One row per experiment of a sweep: what it sets (its swept values), its dense nets and each
    method at the target prune ratios nearest SWEEP_TABLE_RATIOS (of all experiments' ratios), as
    'mean ± std' (or 'mean (n = 1)'); `experiments`: (swept values, dense point, pruned lines)."""
    targets = sorted({point.target_prune_ratio for _, _, lines in experiments for points in lines.values() for point in points})
    shown = sorted({min(targets, key=lambda target: abs(target - wanted)) for wanted in SWEEP_TABLE_RATIOS}) if targets else []
    methods = list(dict.fromkeys(method for _, _, lines in experiments for _, method in lines))
    columns = ["dense"] + [f"{method_name(method)} @ PR {target:.2f}" for method in methods for target in shown]
    width = max(len("experiment"), *(len(swept) for swept, _, _ in experiments))
    widths = [max(16, len(column)) for column in columns]  # 16: 'mean ± std'
    rows = [f"{'experiment':<{width}}  " + "  ".join(f"{column:>{cell}}" for column, cell in zip(columns, widths))]
    for swept, dense, lines in experiments:
        by_method = {method: {point.target_prune_ratio: point for point in points} for (_, method), points in lines.items()}
        cells = [spread_text(dense) if dense else ""]
        cells += [spread_text(by_method[method][target]) if target in by_method.get(method, {}) else ""
                  for method in methods for target in shown]
        rows.append(f"{swept:<{width}}  " + "  ".join(f"{text:>{cell}}" for text, cell in zip(cells, widths)))
    return f"{label} across the sweep (mean ± std over nets):\n" + "\n".join(rows)


def plotted_prune_ratios(plotting: PlottedKeepRatios) -> tuple[float, float]:
    """(lowest, highest) prune ratio that figures show: `experiments.plotting` bounds the *keep*
    ratios, like `spacing` and the original framework, so prune ratios 1 − max_val to 1 − min_val."""
    return 1.0 - plotting.max_val, 1.0 - plotting.min_val


def is_plotted(plotting: PlottedKeepRatios, prune_ratio: float) -> bool:
    """Whether a step scheduled at `prune_ratio` is in the plotted range (`plotted_prune_ratios`)."""
    low, high = plotted_prune_ratios(plotting)
    return low - 1e-9 <= prune_ratio <= high + 1e-9


def plotted_lines(plotting: PlottedKeepRatios, lines: dict[tuple[str, str], list[Point]]) -> dict[tuple[str, str], list[Point]]:
    """`lines` without the points whose step lies outside the plotted range (lines left empty dropped)."""
    kept = {key: [point for point in points if is_plotted(plotting, point.target_prune_ratio)] for key, points in lines.items()}
    return {key: points for key, points in kept.items() if points}


def prune_ratio_axis(axes: Axes) -> None:
    """The x axis as prune ratio in %: label 'prune ratio (%)', ticks 0 … 100 (the ratios are stored as shares)."""
    axes.set_xlabel("prune ratio (%)")
    axes.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0, symbol=""))


METHOD_COLORS = {"FilterThresNet": "tab:blue", "ThresNet": "tab:orange", CONTROL_METHOD: "tab:gray", "dense": "black"}
MODE_STYLES = {"cascade": "-", "retrain": "--"}


def method_color(method: str, index: int = 0) -> str:
    """The colour of a method in every figure (FT blue, WT orange, NoPrune grey); others by `index`."""
    return METHOD_COLORS.get(method, f"C{index + 2}")


def dense_label(dense: Point, epochs: int | None = None) -> str:
    """'dense (2 nets)' or, given the epochs the nets were trained for, 'dense, 100 epochs (2 nets)'."""
    nets = f"({dense.num_nets} net{'s' if dense.num_nets != 1 else ''})"
    return f"dense {nets}" if epochs is None else f"dense, {epochs} epochs {nets}"


def draw_prune_curves(axes: Axes, dense: Point | None, lines: dict[tuple[str, str], list[Point]],
                      dense_epochs: int | None = None) -> None:
    """The main metric vs achieved prune ratio: one line per (mode, method) starting at the dense
    point, mean ± std over nets as a band (the NoPrune control at its steps' prune ratios), the dense
    mean as a dashed reference line (labelled with `dense_epochs` where given, `dense_label`); the
    prune-ratio axis in %."""
    modes = {mode for mode, _ in lines}
    if dense is not None:
        axes.axhline(dense.value_mean, color="black", linestyle="--", linewidth=0.8, label=dense_label(dense, dense_epochs))
        axes.errorbar([0.0], [dense.value_mean], yerr=[dense.value_std], color="black", marker="s", markersize=3,
                      capsize=2, zorder=3)
    for index, ((mode, method), points) in enumerate(sorted(lines.items(), key=lambda item: (item[0][1], item[0][0]))):
        line = ([dense] if dense else []) + points  # every line starts at the dense nets
        x = [point.plotted_prune_ratio for point in line]
        mean = np.array([point.value_mean for point in line])
        std = np.array([point.value_std for point in line])
        color = method_color(method, index)
        axes.plot(x, mean, color=color, linestyle=MODE_STYLES.get(mode, ":"), marker="o", markersize=3,
                  label=line_label(mode, method, modes))
        axes.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    prune_ratio_axis(axes)
    axes.grid(alpha=0.3)


def draw_selected(axes: Axes, selected: dict[tuple[str, str], Point]) -> None:
    """A stop rule's selected nets (`selected_points`) as stars in their method's colour."""
    for index, ((_, method), point) in enumerate(sorted(selected.items(), key=lambda item: (item[0][1], item[0][0]))):
        axes.plot([point.prune_ratio_mean], [point.value_mean], marker="*", markersize=12, color=method_color(method, index),
                  markeredgecolor="black", linestyle="none", label=f"{method_name(method)}: selected by the stop rule")


def plot_prune_curve(dense: Point | None, lines: dict[tuple[str, str], list[Point]], label: str, title: str,
                     path: Path, selected: dict[tuple[str, str], Point] | None = None) -> None:
    """The run's own end-of-run plot (`draw_prune_curves`, the same drawing as `paper.prune_curves`)
    of the main metric as the figures show it (`label`), a stop rule's `selected` nets starred."""
    # A bare Figure, not pyplot: no open-figure registry; savefig renders with the file format's canvas.
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    draw_prune_curves(axes, dense, lines)
    if selected:
        draw_selected(axes, selected)
    axes.set_ylabel(label)
    axes.set_title(title)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


MODELS_FAILED = 3  # the exit code of a command that did all its jobs but some models failed



def failures(plan: Plan, run: RunDir) -> list[str]:
    """'{run folder} {model}: {reason}' for each failed model of the plan."""
    return [f"{run.path} {model_name(row)}: {row['error']}" for row in plan.planned_rows(run.read_metrics()) if is_failed(row)]


def summarize_failures(plans: Sequence[Plan]) -> int:
    """Prints every failed model of `plans` (run folder, model, reason) on stderr; returns
    MODELS_FAILED if there is one, else 0: the exit code of a command that did all its jobs."""
    failed = [failure for plan in plans for failure in failures(plan, RunDir(plan.run_folder))]
    if failed:
        print(f"{len(failed)} model(s) failed; the other models finished (a rerun does not retry these; docs/RUNNING.md, 'When a model fails'):",
              *failed, sep="\n  ", file=sys.stderr, flush=True)
    return MODELS_FAILED if failed else 0


def report(plan: Plan, run: RunDir, replot: bool = True, swept: str = "") -> None:
    """Prints prune ratio vs the main metric per method, in the quantity the paper/ figures show
    (`quantity_of`: top-k error in %, NLL, bits/dim; failed models left out, and listed below)
    and plots it into the run folder (under report.lock, which also clears a killed plot's leftover
    temporary file); with `replot=False` (a finished run, only read) only if the plot is missing.
    `swept`: what this experiment of a sweep sets (`sweep_labels`), said in the title."""
    metric = main_metric(plan.settings.training)
    label, transform = quantity_of(metric)  # what the paper/ figures show: top-k error in %, NLL, bits/dim
    rows = [row for row in plan.planned_rows(run.read_metrics()) if not is_failed(row)]
    dense, lines = dense_point(rows, metric, transform), pruned_points(rows, metric, transform)
    selected = selected_points(rows, metric, transform) if plan.stop_rule is not None else {}
    title = f"{plan.settings.network.name} on {plan.settings.network.dataset}{f' ({swept})' if swept else ''}"
    print(f"\n{title}, run {run.path.absolute()}\n{label}: mean ± std over nets, the achieved prune ratio as PR:")
    if dense is not None or lines:
        print(format_table(dense, lines, label))
        if selected:
            print(format_selection(selected, label))
        path = run.path / "prune_curve.png"
        if replot or not path.exists():
            with run.lock("report"):
                remove_temporaries(run.path, lambda name: name == path.name)
                plot_prune_curve(dense, plotted_lines(plan.settings.experiments.plotting, lines), label, title, path, selected)
    for failure in failures(plan, run):
        print(f"FAILED {failure}")

