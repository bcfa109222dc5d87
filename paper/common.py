"""What every analysis script shares: finding runs from a run folder, results root or config file,
the main quantity to plot, and writing figures (PNG and PDF) and tables."""

from __future__ import annotations

import argparse
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from experiment.config import load_configs
from experiment.files import atomic_write_bytes, atomic_write_text
from experiment.results import Run, run_dirs, run_folder
from experiment.report import main_metric

# How each main-metric column is shown: (label, transform of the stored value).
QUANTITIES = {
    "nll": ("test NLL (nats)", lambda value: value),
    "bits_per_dim": ("test bits/dim", lambda value: value),
    "top1_acc": ("test top-1 error (%)", lambda value: 100.0 * (1.0 - value)),
}


def find_runs(target: str | Path) -> list[Run]:
    """The runs of `target`: a run folder, a folder of run folders (e.g. a results root), or a
    config file (its run folders, one per customization, as `experiment.main` would create them)."""
    target = Path(target)
    if target.suffix in (".yaml", ".yml"):
        folders = [run_folder(config) for config in load_configs(target)]
        missing = [str(folder) for folder in folders if not (folder / "config.yaml").exists()]
        if missing:
            raise SystemExit(f"{target}: no results yet at {', '.join(missing)}; run python -m experiment.main {target}")
        return [Run(folder) for folder in folders]
    runs = [Run(folder.path) for folder in run_dirs(target)]
    if not runs:
        raise SystemExit(f"{target}: no run folders (folders with config.yaml) found")
    return runs


def quantity(run: Run) -> tuple[str, str, callable]:
    """(metrics column, axis label, value transform) of the run's main metric: test NLL for flows,
    bits/dim for images, top-1 error for classifiers."""
    column = main_metric(run.config["training"])
    return (column, *quantity_of(column))


def quantity_of(column: str) -> tuple[str, callable]:
    """(axis label, value transform) of a metrics column; top-k accuracies become error in %."""
    if column in QUANTITIES:
        return QUANTITIES[column]
    top = re.fullmatch(r"top(\d+)_acc", column)
    if top:
        return f"test top-{top.group(1)} error (%)", QUANTITIES["top1_acc"][1]
    return f"test {column}", lambda value: value


def parse_arguments(description: str, argv: list[str] | None = None, **extra: dict) -> argparse.Namespace:
    """`TARGET [--out DIR]` plus `extra` options ({flag: argparse kwargs})."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("target", help="run folder, results root or config file")
    parser.add_argument("--out", default=None, help="output folder (default: <run folder>/paper)")
    for flag, kwargs in extra.items():
        parser.add_argument(flag, **kwargs)
    return parser.parse_args(argv)


def output_folder(out: str | None, run: Run) -> Path:
    return Path(out) if out else run.path / "paper"


def run_label(run: Run) -> str:
    """A short unique name for a run in file names: dataset_network_runid."""
    network = run.config["network"]
    return f"{network['dataset']}_{network['name']}_{run.path.name}"


def save_figure(figure: plt.Figure, folder: Path, name: str) -> list[Path]:
    """Writes `name`.png and `name`.pdf into `folder` (atomically) and closes the figure."""
    paths = []
    for suffix in ("png", "pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, dpi=150, bbox_inches="tight")
        path = folder / f"{name}.{suffix}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    plt.close(figure)
    return paths


def save_text(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    atomic_write_text(path, text)
    return path


def collection_folder(out: str | None, target: str | Path, runs: list[Run]) -> Path:
    """Where a figure or table over several runs goes: `out`, else `<target>/paper` for a folder
    target (a results root), else `paper/` in the deepest folder holding all the runs."""
    if out:
        return Path(out)
    target = Path(target)
    if target.is_dir():
        return target / "paper"
    return Path(os.path.commonpath([str(run.path.resolve()) for run in runs])) / "paper"


# ------------------------------------------------------------------ points: metrics rows summarised

METHOD_NAMES = {"ThresNet": "WT", "FilterThresNet": "FT", "dense": "dense"}


@dataclass(frozen=True)
class Point:
    """One plotted point: the models of one (mode, method, target prune ratio), first averaged over
    the repetitions of each net, then mean ± std (population, as in the end-of-run table) over nets.
    `value_*` are in plotted units (after the quantity's transform)."""

    mode: str
    method: str
    target_prune_ratio: float
    prune_ratio_mean: float
    value_mean: float
    value_std: float
    nonzero_params_mean: float
    num_params: float
    num_nets: int


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _point(rows: list[dict], column: str, transform, mode: str, method: str, target: float) -> Point | None:
    per_net: dict[int, list[tuple[float, float, float, float]]] = {}
    for row in rows:
        value = _number(row.get(column))
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
    """{(mode, method): points sorted by target prune ratio} of a run's pruned models; rows of every
    mode (cascade, retrain) and method found in the rows, grouped by their target prune ratio."""
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for row in rows:
        if row["method"] == "dense":
            continue
        groups.setdefault((row["mode"], row["method"], round(float(row["target_prune_ratio"]), 9)), []).append(row)
    lines: dict[tuple[str, str], list[Point]] = {}
    for (mode, method, target), members in sorted(groups.items()):
        point = _point(members, column, transform, mode, method, target)
        if point is not None and math.isfinite(point.prune_ratio_mean):
            lines.setdefault((mode, method), []).append(point)
    return lines


def line_label(mode: str, method: str, modes: set[str]) -> str:
    """'WT' or, where a run holds several modes, 'WT (retrain)'."""
    name = METHOD_NAMES.get(method, method)
    return name if len(modes) <= 1 else f"{name} ({mode})"
