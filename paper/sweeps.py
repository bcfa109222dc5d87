"""Sweeps over architectures, activations, solvers or optimizer settings: the prune
potential of each run and the error against the absolute number of non-zero parameters.

    python -m paper.sweeps TARGET [key.path=value ...] [--out DIR]

TARGET is a results root, a folder of run folders or a sweep config file (its run folders, one per
customization). Runs are compared within a dataset; each is labelled by what its config does
differently from the other runs of that dataset (the differing part of the network name, e.g.
`l4_h30` or `sigmoid` or `rk4_adjoint`, and `key=value` for other keys, e.g. `lr=0.05, wd=1e-05`).

Prune potential of a (run, mode, method) = the largest achieved prune ratio (mean over nets) whose
main-metric mean over nets is within δ of the dense nets' mean: value ≤ dense + δ, with δ = 0.005
nats (NLL), 0.005 bits/dim, 0.5 percentage points (top-1 error); lower is better for all three.
0 where no pruned point qualifies.

Writes `prune_potential.png/.pdf/.csv/.md` and `error_vs_params.png/.pdf` into --out (default:
`<TARGET>/paper` for a folder, else `paper/` next to the runs).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
import numpy as np

from experiment.analysis.prune_potential import delta_of, prune_potential
from experiment.results import Run
from experiment.plan import sweep_labels
from experiment.files import rows_to_csv
from experiment.pruning.rules import CONTROL_METHOD
from experiment.report import Point, dense_point, line_label, method_name, plotted_lines, pruned_points
from paper.common import command, markdown_table, new_figure, quantity, save_figure, save_text, value_axis, write_over_runs

POTENTIAL_COLUMNS = ("dataset", "run_id", "network", "label", "mode", "method", "metric", "delta", "dense_value",
                     "prune_potential", "value_at_potential", "nonzero_params_at_potential", "num_params", "num_nets")


# ------------------------------------------------------------------------------ sweep summaries


@dataclass
class SweepRun:
    run: Run
    label: str
    column: str
    delta: float
    dense: Point | None
    lines: dict[tuple[str, str], list[Point]]


def sweep_groups(runs: list[Run]) -> dict[tuple[str, str], list[SweepRun]]:
    """{(dataset, metric column): its runs, labelled against each other}."""
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.settings.network.dataset, quantity(run)[0]), []).append(run)
    groups = {}
    for (dataset, column), members in sorted(grouped.items()):
        labels = sweep_labels([run.config for run in members])
        if len(set(labels)) < len(labels):  # the same experiment in two places: say which run
            labels = [f"{label} ({run.path.name})" for label, run in zip(labels, members)]
        entries = []
        for run, label in zip(members, labels):
            _, _, transform = quantity(run)
            lines = {key: points for key, points in pruned_points(run.rows, column, transform).items() if key[1] != CONTROL_METHOD}
            entries.append(SweepRun(run, label, column, delta_of(column), dense_point(run.rows, column, transform), lines))
        groups[(dataset, column)] = entries
    return groups


def potential_rows(groups: dict[tuple[str, str], list[SweepRun]]) -> list[dict]:
    """One row per (run, mode, method) with a dense point: its prune potential (POTENTIAL_COLUMNS)."""
    rows = []
    for (dataset, column), entries in groups.items():
        for entry in entries:
            if entry.dense is None:
                print(f"{entry.run.path}: no dense nets, no prune potential")
                continue
            for (mode, method), points in sorted(entry.lines.items()):
                best = prune_potential(entry.dense, points, entry.delta)
                rows.append({
                    "dataset": dataset, "run_id": entry.run.path.name, "network": entry.run.settings.network.name,
                    "label": entry.label, "mode": mode, "method": method, "metric": column, "delta": entry.delta,
                    "dense_value": entry.dense.value_mean,
                    "prune_potential": best.prune_ratio_mean if best else 0.0,
                    "value_at_potential": best.value_mean if best else entry.dense.value_mean,
                    "nonzero_params_at_potential": best.nonzero_params_mean if best else entry.dense.nonzero_params_mean,
                    "num_params": entry.dense.num_params, "num_nets": best.num_nets if best else entry.dense.num_nets,
                })
    return rows


def potential_markdown(rows: list[dict]) -> str:
    header = ["dataset", "run", "label", "mode", "method", "metric (δ)", "dense", "prune potential", "value there",
              "non-zero params"]
    cells = [[row["dataset"], row["run_id"], row["label"], row["mode"], method_name(row["method"]),
              f"{row['metric']} ({row['delta']:g})", f"{row['dense_value']:.4f}", f"{100 * row['prune_potential']:.1f}%",
              f"{row['value_at_potential']:.4f}",
              f"{row['nonzero_params_at_potential']:,.0f} / {row['num_params']:,.0f}"] for row in rows]
    lines = ["# Prune potential", "",
             "Largest mean achieved prune ratio whose mean test value over nets is within δ of the dense nets' "
             "mean (δ = 0.005 nats / bits per dim, 0.5 percentage points of top-1 error).", "",
             *markdown_table(header, cells)]
    return "\n".join(lines) + "\n"


def _panels(count: int, max_columns: int, aspect: float, wide: bool | None = None) -> tuple[Figure, list[Axes]]:
    """One panel per (dataset, metric), at most `max_columns` side by side, each `aspect` × its
    width high (`new_figure` picks the width: single-column for one panel unless `wide`)."""
    columns = min(count, max_columns)
    rows = math.ceil(count / columns)
    figure, axes = new_figure(rows, columns, aspect=aspect * rows / columns, wide=wide, squeeze=False)
    for unused in axes.flat[count:]:
        unused.set_visible(False)
    return figure, list(axes.flat[:count])


def plot_potential(groups: dict[tuple[str, str], list[SweepRun]], rows: list[dict]) -> Figure:
    figure, panels = _panels(len(groups), 3, 1.0)
    for axes, ((dataset, column), entries) in zip(panels, groups.items()):
        mine = [row for row in rows if row["dataset"] == dataset and row["metric"] == column]
        series = list(dict.fromkeys((row["mode"], row["method"]) for row in mine))
        modes = {mode for mode, _ in series}
        labels = [entry.label for entry in entries]
        width = 0.8 / max(1, len(series))
        for index, (mode, method) in enumerate(series):
            heights = [next((100 * row["prune_potential"] for row in mine if row["label"] == label
                             and (row["mode"], row["method"]) == (mode, method)), np.nan) for label in labels]
            axes.bar(np.arange(len(labels)) + (index - (len(series) - 1) / 2) * width, heights, width,
                     label=line_label(mode, method, modes))
        axes.set_xticks(np.arange(len(labels)))
        axes.set_xticklabels(labels, rotation=30, ha="right")
        axes.set_ylim(0, 100)
        axes.set_ylabel("prune potential (%)")
        axes.set_title(f"{dataset}, δ = {entries[0].delta:g}")
        axes.grid(alpha=0.3, axis="y")
    legend = {label: handle for axes in panels for handle, label in zip(*axes.get_legend_handles_labels())}
    if legend:  # below the panels: bars near 100% leave no room inside
        figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=len(legend))
    return figure


def plot_error_vs_params(groups: dict[tuple[str, str], list[SweepRun]]) -> Figure:
    figure, panels = _panels(len(groups), 1, 0.35, wide=True)  # room for the legend of many runs beside each panel
    markers = {"FilterThresNet": "o", "ThresNet": "^"}
    styles = {("cascade", "FilterThresNet"): "-", ("cascade", "ThresNet"): "--", ("retrain", "FilterThresNet"): "-.",
              ("retrain", "ThresNet"): ":"}
    for axes, ((dataset, column), entries) in zip(panels, groups.items()):
        values = []
        for index, entry in enumerate(entries):
            color = f"C{index % 10}"
            modes = {mode for mode, _ in entry.lines}
            if entry.dense is not None:
                axes.plot([entry.dense.nonzero_params_mean], [entry.dense.value_mean], color=color, marker="s",
                          markersize=5, linestyle="none")
            for (mode, method), points in sorted(plotted_lines(entry.run.settings.experiments.plotting, entry.lines).items()):
                line = ([entry.dense] if entry.dense else []) + points
                values += [point.value_mean for point in line]
                axes.plot([point.nonzero_params_mean for point in line], [point.value_mean for point in line],
                          color=color, marker=markers.get(method, "x"), markersize=3, linestyle=styles.get((mode, method), ":"),
                          label=f"{entry.label}: {line_label(mode, method, modes)}")
        axes.set_xscale("log")
        axes.set_xlabel("non-zero parameters (mean over nets)")
        value_axis(axes, column, values)
        axes.set_title(f"{dataset} (■ dense)")
        axes.grid(alpha=0.3, which="both")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), ncol=2 if len(entries) > 6 else 1)
    return figure


def write_sweeps(runs: list[Run], folder: Path) -> list[Path]:
    """Writes the prune-potential figure/CSV/markdown and the error-vs-parameters figure of `runs`."""
    groups = sweep_groups(runs)
    rows = potential_rows(groups)
    folder.mkdir(parents=True, exist_ok=True)
    paths = save_figure(plot_potential(groups, rows), folder, "prune_potential")
    paths.append(save_text(folder, "prune_potential.csv", rows_to_csv(rows, POTENTIAL_COLUMNS)))
    paths.append(save_text(folder, "prune_potential.md", potential_markdown(rows)))
    paths += save_figure(plot_error_vs_params(groups), folder, "error_vs_params")
    return paths


def main(argv: list[str] | None = None) -> int:
    return write_over_runs(__doc__.split("\n\n")[0], argv, write_sweeps)


if __name__ == "__main__":
    sys.exit(command(main))
