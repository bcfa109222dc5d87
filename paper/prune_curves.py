"""The main quantity vs prune ratio of every run (SPEC §8, first item): test NLL in nats for flows,
bits/dim for image flows, top-1 error in % for classifiers, one line per (mode, method), mean ± std
over nets as a band, the dense nets' mean as the point at prune ratio 0 and a dashed reference line.
The NoPrune control (same chain, nothing pruned) is drawn at the prune ratio of each step, so each
pruned point sits beside an unpruned model with the same training budget.

    python -m paper.prune_curves TARGET [key.path=value ...] [--out DIR]

TARGET is a run folder, a results root or a config file. For each run it writes
`prune_curve_<run label>.png/.pdf` and `prune_curve_<run label>.csv`, the plotted points:
the dense point (method `dense`) and one row per (mode, method, target prune ratio).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import PercentFormatter

from experiment.report import Point, dense_point, pruned_points
from paper.common import (
    find_runs, line_label, output_folder, parse_arguments, quantity, run_label, save_figure, save_text,
)
from experiment.results import Run

CSV_COLUMNS = ("method", "mode", "target_prune_ratio", "prune_ratio_mean", "value_mean", "value_std", "num_nets")
METHOD_COLORS = {"FilterThresNet": "tab:blue", "ThresNet": "tab:orange", "NoPrune": "tab:gray"}
MODE_STYLES = {"cascade": "-", "retrain": "--"}


def curve_points(run: Run) -> tuple[Point | None, dict[tuple[str, str], list[Point]]]:
    """(dense point, {(mode, method): pruned points}) of a run's main quantity, in plotted units."""
    column, _, transform = quantity(run)
    return dense_point(run.rows, column, transform), pruned_points(run.rows, column, transform)


def points_csv(dense: Point | None, lines: dict[tuple[str, str], list[Point]]) -> str:
    """The plotted points as CSV text (CSV_COLUMNS; full float precision)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for point in ([dense] if dense else []) + [point for points in lines.values() for point in points]:
        writer.writerow([point.method, point.mode, repr(point.target_prune_ratio), repr(point.prune_ratio_mean),
                         repr(point.value_mean), repr(point.value_std), point.num_nets])
    return buffer.getvalue()


def plot_curves(dense: Point | None, lines: dict[tuple[str, str], list[Point]], ylabel: str, title: str) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    modes = {mode for mode, _ in lines}
    if dense is not None:
        axes.axhline(dense.value_mean, color="black", linestyle="--", linewidth=1,
                     label=f"dense ({dense.num_nets} net{'s' if dense.num_nets != 1 else ''})")
        axes.errorbar([0.0], [dense.value_mean], yerr=[dense.value_std], color="black", marker="s", markersize=4,
                      capsize=3, zorder=3)
    for index, ((mode, method), points) in enumerate(sorted(lines.items(), key=lambda item: (item[0][1], item[0][0]))):
        line = ([dense] if dense else []) + points  # every line starts at the dense nets
        x = [point.plotted_prune_ratio for point in line]
        mean = [point.value_mean for point in line]
        low = [point.value_mean - point.value_std for point in line]
        high = [point.value_mean + point.value_std for point in line]
        color = METHOD_COLORS.get(method, f"C{index + 2}")
        axes.plot(x, mean, color=color, linestyle=MODE_STYLES.get(mode, ":"), marker="o", markersize=3,
                  label=line_label(mode, method, modes))
        axes.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    axes.set_xlabel("prune ratio (share of all parameters removed)")
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def write_prune_curve(run: Run, folder: Path) -> list[Path]:
    """Writes the figure (PNG, PDF) and the CSV of one run into `folder`; returns the paths."""
    dense, lines = curve_points(run)
    if dense is None and not lines:
        print(f"{run.path}: no metrics rows with a main-metric value yet; no prune curve")
        return []
    _, ylabel, _ = quantity(run)
    network = run.config["network"]
    title = f"{network['name']} on {network['dataset']} (run {run.path.name}); mean ± std over nets"
    name = f"prune_curve_{run_label(run)}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = save_figure(plot_curves(dense, lines, ylabel, title), folder, name)
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
