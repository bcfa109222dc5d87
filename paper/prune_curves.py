"""The main quantity vs prune ratio of every run (SPEC §8, first item): test NLL in nats for flows,
bits/dim for image flows, top-1 error in % for classifiers, one line per (mode, method), mean ± std
over nets as a band, the dense nets' mean as the point at prune ratio 0 and a dashed reference line.
The NoPrune control (same chain, nothing pruned) is drawn at the prune ratio of each step, so each
pruned point sits beside an unpruned model with the same training budget.

    python -m paper.prune_curves TARGET [key.path=value ...] [--out DIR] [--style screen|paper]

TARGET is a run folder, a results root or a config file. For each run it writes
`prune_curve_<run label>.png/.pdf` and `prune_curve_<run label>.csv`, the plotted points:
the dense point (method `dense`) and one row per (mode, method, target prune ratio) within the
run's `experiments.plotting` range.
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.figure import Figure

from experiment.report import Point, dense_point, draw_prune_curves, plotted_lines, pruned_points
from experiment.results import Run
from experiment.results.tree import rows_to_csv
from paper.common import (
    figure_title, find_runs, new_figure, output_folder, parse_arguments, quantity, run_label, save_figure, save_text,
    value_axis,
)

CSV_COLUMNS = ("method", "mode", "target_prune_ratio", "prune_ratio_mean", "value_mean", "value_std", "num_nets")


def curve_points(run: Run) -> tuple[Point | None, dict[tuple[str, str], list[Point]]]:
    """(dense point, {(mode, method): pruned points}) of a run's main quantity, in plotted units; only
    the steps within the run's `experiments.plotting` range."""
    column, _, transform = quantity(run)
    lines = plotted_lines(run.settings.experiments.plotting, pruned_points(run.rows, column, transform))
    return dense_point(run.rows, column, transform), lines


def points_csv(dense: Point | None, lines: dict[tuple[str, str], list[Point]]) -> str:
    """The plotted points as CSV text (CSV_COLUMNS; full float precision)."""
    points = ([dense] if dense else []) + [point for points in lines.values() for point in points]
    return rows_to_csv([{column: getattr(point, column) for column in CSV_COLUMNS} for point in points], CSV_COLUMNS)


def plot_curves(dense: Point | None, lines: dict[tuple[str, str], list[Point]], column: str, title: str) -> Figure:
    """The curves (`draw_prune_curves`) on the value axis of `column` (`value_axis`), `title` on screen only."""
    figure, axes = new_figure(aspect=0.72)
    draw_prune_curves(axes, dense, lines)
    value_axis(axes, column, [point.value_mean + point.value_std for points in lines.values() for point in points]
               + ([dense.value_mean + dense.value_std] if dense else []))
    axes.legend(loc="best")
    figure_title(figure, title)
    return figure


def write_prune_curve(run: Run, folder: Path) -> list[Path]:
    """Writes the figure (PNG, PDF) and the CSV of one run into `folder`; returns the paths."""
    dense, lines = curve_points(run)
    if dense is None and not lines:
        print(f"{run.path}: no metrics rows with a main-metric value yet; no prune curve")
        return []
    column, _, _ = quantity(run)
    network = run.settings.network
    title = f"{network.name} on {network.dataset} (run {run.path.name}); mean ± std over nets"
    name = f"prune_curve_{run_label(run)}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = save_figure(plot_curves(dense, lines, column, title), folder, name)
    paths.append(save_text(folder, f"{name}.csv", points_csv(dense, lines)))
    return paths


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(__doc__.split("\n\n")[0], argv)
    for run in find_runs(arguments.target, arguments.overrides):
        for path in write_prune_curve(run, output_folder(arguments.out, run)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
