"""The main quantity vs prune ratio of every run (the paper's prune curves): test NLL in nats for flows,
bits/dim for image flows, top-1 error in % for classifiers, one line per (mode, method), mean ± std
over nets as a band, the dense nets' mean as the point at prune ratio 0 and a dashed reference line.
The NoPrune control (same chain, nothing pruned) is drawn at the prune ratio of each step, so each
pruned point sits beside an unpruned model with the same training budget.

    python -m paper.prune_curves TARGET [key.path=value ...] [--out DIR] [--style screen|paper] [--baseline RUN_FOLDER]

TARGET is a run folder, a results root or a config file. For each run it writes
`prune_curve_<run label>.png/.pdf` and `prune_curve_<run label>.csv`, the plotted points:
the dense point (method `dense`) and one row per (mode, method, target prune ratio) within the
run's `experiments.plotting` range.

What else the figure shows:

* a run with NoPrune rows gets a second panel, each pruning method minus NoPrune at the same step
  and net (`experiment.analysis.references.differences_to_control`): one marker per net, the mean
  over nets as a line, 0 and the prune potential's tolerance ±δ (`delta_of`) as a band;
* flows on a mixture of per-label Gaussians get the test NLL of the mixture fitted to the training
  split as a line (`mixture_floor_nll`), which no flow should beat by more than chance;
* `--baseline RUN_FOLDER`: the dense nets of another run of the same dataset and network (e.g. one
  trained for longer, mode train) as a second dense line with its ±std band; both dense lines say
  how many epochs their nets were trained;
* NLL and bits/dim axes are limited to the bulk of the points (`paper.common.clip_to_bulk`): a
  breakdown far above the rest is marked at the top edge with its value written there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from experiment.analysis.prune_potential import delta_of
from experiment.analysis.references import ControlDifference, differences_to_control, mixture_floor_nll
from experiment.report import (
    Point, dense_label, dense_point, draw_prune_curves, is_plotted, method_color, method_name, plotted_lines,
    prune_ratio_axis, pruned_points,
)
from experiment.results import Run
from experiment.files import rows_to_csv
from paper.common import (
    command, Mark, clip_to_bulk, difference_axis, difference_unit, figure_title, find_runs, is_error_rate, new_figure, output_folder,
    parse_arguments, quantity, run_label, save_figure, save_text, value_axis,
)

CSV_COLUMNS = ("method", "mode", "target_prune_ratio", "prune_ratio_mean", "value_mean", "value_std", "num_nets")
NET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # net k: NET_MARKERS[k mod 8]
REFERENCE_COLOURS = {"baseline": "tab:purple", "mixture": "tab:green"}


@dataclass(frozen=True)
class DenseReference:
    """Dense nets drawn as a horizontal reference line: their point and the epochs they trained."""

    point: Point
    epochs: int


@dataclass(frozen=True)
class CurveFigure:
    """What one run's prune-curve figure shows, in plotted units: the main quantity's metrics
    `column`, the dense point and the pruned lines (`curve_points`), the epochs of the dense nets,
    the differences to NoPrune within the plotted range (empty: no second panel), the mixture floor
    (None: not a Gaussian-mixture flow) and a dense `baseline` from another run (None: none)."""

    column: str
    dense: Point | None
    lines: dict[tuple[str, str], list[Point]]
    dense_epochs: int
    differences: list[ControlDifference]
    mixture_floor: float | None = None
    baseline: DenseReference | None = None


def curve_points(run: Run) -> tuple[Point | None, dict[tuple[str, str], list[Point]]]:
    """(dense point, {(mode, method): pruned points}) of a run's main quantity, in plotted units; only
    the steps within the run's `experiments.plotting` range."""
    column, _, transform = quantity(run)
    lines = plotted_lines(run.settings.experiments.plotting, pruned_points(run.rows, column, transform))
    return dense_point(run.rows, column, transform), lines


def plotted_differences(run: Run) -> list[ControlDifference]:
    """`differences_to_control` of the run's main quantity at the steps within its plotted range."""
    column, _, transform = quantity(run)
    plotting = run.settings.experiments.plotting
    return [difference for difference in differences_to_control(run.rows, column, transform)
            if is_plotted(plotting, difference.step_prune_ratio)]


def dense_baseline(run: Run, baseline: Run) -> DenseReference | None:
    """The dense nets of `baseline` as a reference for `run`; None, with a note, when `baseline` is
    not a run of the same dataset and network or has no dense nets yet."""
    ours, theirs = run.settings.network, baseline.settings.network
    if (ours.dataset, ours.name) != (theirs.dataset, theirs.name):
        print(f"{run.path}: the baseline {baseline.path} is {theirs.name} on {theirs.dataset}, not {ours.name} on "
              f"{ours.dataset}; no baseline line")
        return None
    column, _, transform = quantity(run)
    point = dense_point(baseline.rows, column, transform)
    if point is None:
        print(f"{baseline.path}: no dense nets with a {column} value yet; no baseline line")
        return None
    return DenseReference(point, baseline.settings.training.num_epochs)


def points_csv(dense: Point | None, lines: dict[tuple[str, str], list[Point]]) -> str:
    """The plotted points as CSV text (CSV_COLUMNS; full float precision)."""
    points = ([dense] if dense else []) + [point for points in lines.values() for point in points]
    return rows_to_csv([{column: getattr(point, column) for column in CSV_COLUMNS} for point in points], CSV_COLUMNS)


def step_text(prune_ratio: float) -> str:
    """How a clipped point names its step: 'PR 98%' (the step's scheduled prune ratio)."""
    return f"PR {100 * prune_ratio:.0f}%"


def draw_references(axes: Axes, curve: CurveFigure) -> list[float]:
    """The baseline's dense line with its ±std band and the mixture floor; returns the values they
    span, which the value axis must show."""
    shown = []
    if curve.baseline is not None:
        point, colour = curve.baseline.point, REFERENCE_COLOURS["baseline"]
        axes.axhline(point.value_mean, color=colour, linestyle="-.", linewidth=0.8,
                     label=dense_label(point, curve.baseline.epochs))
        axes.axhspan(point.value_mean - point.value_std, point.value_mean + point.value_std, color=colour, alpha=0.15,
                     linewidth=0)
        shown += [point.value_mean - point.value_std, point.value_mean + point.value_std]
    if curve.mixture_floor is not None:
        axes.axhline(curve.mixture_floor, color=REFERENCE_COLOURS["mixture"], linestyle=":", linewidth=1.0,
                     label="Gaussian mixture fitted\nto the training split")
        shown.append(curve.mixture_floor)
    return shown


def draw_curves_panel(axes: Axes, curve: CurveFigure) -> None:
    """The curves (`draw_prune_curves`) with the reference lines, on the value axis of the main
    quantity, an NLL or bits/dim axis limited to the bulk of the points (`clip_to_bulk`)."""
    draw_prune_curves(axes, curve.dense, curve.lines, curve.dense_epochs)
    shown = draw_references(axes, curve)
    points = [point for points in curve.lines.values() for point in points]
    value_axis(axes, curve.column, [point.value_mean + point.value_std for point in points]
               + ([curve.dense.value_mean + curve.dense.value_std] if curve.dense else []))
    if is_error_rate(curve.column):
        return
    if curve.dense is not None:
        shown += [curve.dense.value_mean - curve.dense.value_std, curve.dense.value_mean + curve.dense.value_std]
    clip_to_bulk(axes, [Mark(point.plotted_prune_ratio, point.value_mean, point.value_std, method_name(point.method),
                             method_color(point.method), step_text(point.target_prune_ratio)) for point in points], shown)


def draw_differences_panel(axes: Axes, curve: CurveFigure) -> None:
    """Each pruning method minus NoPrune at the same step: a hollow marker per net (shape = net),
    the mean over nets per step as a line (colour = method), 0 and the tolerance ±δ as a band."""
    delta = delta_of(curve.column)
    axes.axhspan(-delta, delta, color="grey", alpha=0.2, linewidth=0)
    axes.axhline(0.0, color="black", linewidth=0.6)
    nets = sorted({difference.net for difference in curve.differences})
    methods = sorted({difference.method for difference in curve.differences})
    for index, method in enumerate(methods):
        colour = method_color(method, index)
        of_method = [difference for difference in curve.differences if difference.method == method]
        for net in nets:
            of_net = [difference for difference in of_method if difference.net == net]
            axes.plot([difference.step_prune_ratio for difference in of_net], [difference.difference for difference in of_net],
                      marker=NET_MARKERS[net % len(NET_MARKERS)], markerfacecolor="none", markeredgecolor=colour,
                      markeredgewidth=0.6, markersize=4, linestyle="none")
        ratios = sorted({difference.step_prune_ratio for difference in of_method})
        means = [np.mean([difference.difference for difference in of_method if difference.step_prune_ratio == ratio])
                 for ratio in ratios]
        axes.plot(ratios, means, color=colour, linewidth=1.0)
    values = [difference.difference for difference in curve.differences]
    difference_axis(axes, curve.column, values)
    if not is_error_rate(curve.column):
        clip_to_bulk(axes, [Mark(difference.step_prune_ratio, difference.difference, 0.0, method_name(difference.method),
                                 method_color(difference.method), step_text(difference.step_prune_ratio))
                            for difference in curve.differences], [-delta, delta], number="{:+.2g}")
    prune_ratio_axis(axes)
    axes.set_xlabel("prune ratio of the step (%)")
    axes.grid(alpha=0.3)


def differences_legend(curve: CurveFigure) -> list:
    """Legend handles of the differences panel: the mean lines' meaning, a marker per net, the ±δ band."""
    nets = sorted({difference.net for difference in curve.differences})
    handles = [Line2D([], [], color="black", linewidth=1.0, label="mean over nets")]
    handles += [Line2D([], [], color="black", marker=NET_MARKERS[net % len(NET_MARKERS)], markerfacecolor="none",
                       markeredgewidth=0.6, markersize=4, linestyle="none", label=f"net {net}") for net in nets]
    unit = difference_unit(curve.column)
    handles.append(Patch(color="grey", alpha=0.2, linewidth=0,
                         label=f"±δ = {delta_of(curve.column):g}" + (f" {unit}" if unit else "")))
    return handles


def plot_curves(curve: CurveFigure, title: str) -> Figure:
    """One panel of curves (`draw_curves_panel`) or, where NoPrune differences exist, two: the curves
    above the differences (`draw_differences_panel`), sharing the prune-ratio range and one legend
    below them; `title` on screen only."""
    if not curve.differences:
        figure, axes = new_figure(aspect=0.72)
        draw_curves_panel(axes, curve)
        axes.legend(loc="best")
    else:
        figure, (axes, lower) = new_figure(2, 1, aspect=1.45, wide=False, gridspec_kw={"height_ratios": [3, 2]})
        draw_curves_panel(axes, curve)
        draw_differences_panel(lower, curve)
        lower.set_xlim(axes.get_xlim())
        # references first: the legend fills its columns top to bottom, so the long labels share the first
        handles = axes.get_legend_handles_labels()[0]
        references = [handle for handle in handles if handle.get_label().startswith(("dense", "Gaussian"))]
        handles = references + [handle for handle in handles if handle not in references] + differences_legend(curve)
        figure.legend(handles=handles, loc="outside lower center", ncols=2)
    figure_title(figure, title)
    return figure


def write_prune_curve(run: Run, folder: Path, baseline: Run | None = None) -> list[Path]:
    """Writes the figure (PNG, PDF) and the CSV of one run into `folder`, with the dense nets of
    `baseline` as a second reference; returns the paths."""
    dense, lines = curve_points(run)
    if dense is None and not lines:
        print(f"{run.path}: no metrics rows with a main-metric value yet; no prune curve")
        return []
    column, _, _ = quantity(run)
    curve = CurveFigure(column, dense, lines, run.settings.training.num_epochs, plotted_differences(run),
                        mixture_floor_nll(run), dense_baseline(run, baseline) if baseline is not None else None)
    network = run.settings.network
    title = f"{network.name} on {network.dataset} (run {run.path.name})\nmean ± std over nets"
    name = f"prune_curve_{run_label(run)}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = save_figure(plot_curves(curve, title), folder, name)
    paths.append(save_text(folder, f"{name}.csv", points_csv(dense, lines)))
    return paths


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(__doc__.split("\n\n")[0], argv, **{
        "--baseline": dict(default=None, help="a run folder of the same dataset and network whose dense nets (e.g. "
                                              "trained longer) are drawn as a second dense line"),
    })
    baseline = Run(arguments.baseline) if arguments.baseline else None
    for run in find_runs(arguments.target, arguments.overrides):
        if baseline is not None and run.path.resolve() == baseline.path.resolve():
            print(f"{run.path}: the baseline run itself; no prune curve")
            continue
        for path in write_prune_curve(run, output_folder(arguments.out, run), baseline):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(command(main))
