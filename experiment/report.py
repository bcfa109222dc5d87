"""The end-of-run summary: prune ratio vs the main test metric per method, mean ± std over nets, as
a printed table and a first plot (`prune_curve.png` in the run folder)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

from experiment.files import atomic_write_bytes
from experiment.training.metrics import metric_column


def main_metric(schedule: dict) -> str:
    """The metrics-table column of the first real metric in `metricsTest` (else the test loss)."""
    for spec in schedule["metricsTest"]:
        column = metric_column(spec["type"], spec["kwargs"])
        if column:
            return column
    return "test_loss"


def summarize(rows: list[dict], metric: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """{method: [(target PR, mean achieved PR, mean metric, std metric) per step]} with the dense
    nets as step 0 of every method; means and stds over nets and repetitions."""
    dense = [row[metric] for row in rows if row["method"] == "dense"]
    methods = sorted({row["method"] for row in rows if row["method"] != "dense"})
    summary = {}
    for method in methods or ["dense"]:
        points = [(0.0, 0.0, float(np.mean(dense)), float(np.std(dense)))] if dense else []
        method_rows = [row for row in rows if row["method"] == method]
        for step in sorted({row["step"] for row in method_rows}):
            at_step = [row for row in method_rows if row["step"] == step]
            values = [row[metric] for row in at_step]
            points.append((at_step[0]["target_prune_ratio"], float(np.mean([row["prune_ratio"] for row in at_step])),
                           float(np.mean(values)), float(np.std(values))))
        summary[method] = points
    return summary


def format_table(summary: dict, metric: str) -> str:
    """Rows of target prune ratio, one column per method: 'metric mean ± std (achieved PR)'."""
    methods = list(summary)
    targets = sorted({point[0] for points in summary.values() for point in points})
    lines = [f"{'prune ratio':>11}  " + "  ".join(f"{method + ' ' + metric:>30}" for method in methods)]
    for target in targets:
        cells = []
        for method in methods:
            match = [point for point in summary[method] if point[0] == target]
            cells.append(f"{match[0][2]:>12.4f} ± {match[0][3]:<7.4f} ({match[0][1]:.3f})" if match else f"{'':>30}")
        lines.append(f"{target:>11.3f}  " + "  ".join(cells))
    return "\n".join(lines)


def plot_prune_curve(summary: dict, metric: str, title: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    for method, points in summary.items():
        _, achieved, mean, std = (np.array(values) for values in zip(*points))
        axes.errorbar(achieved, mean, yerr=std, marker="o", markersize=3, capsize=2, label=method)
    axes.set_xlabel("prune ratio (share of all parameters removed)")
    axes.set_ylabel(f"test {metric}")
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
