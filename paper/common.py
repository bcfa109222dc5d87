"""What every analysis script shares: finding runs from a run folder, results root or config file,
the main quantity to plot, and writing figures (PNG and PDF) and tables."""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from experiment.config import ConfigError, add_overrides_argument, load_configs
from experiment.files import atomic_write_bytes, atomic_write_text
from experiment.results import Run, run_dirs, run_folder
from experiment.report import main_metric, quantity_of


def find_runs(target: str | Path, overrides: Sequence[str] = ()) -> list[Run]:
    """The runs of `target`: a run folder, a folder of run folders (e.g. a results root), or a
    config file (its run folders, one per customization, as `experiment.main` would create them with
    the same `key.path=value` `overrides`, which change the run id)."""
    target = Path(target)
    if target.suffix in (".yaml", ".yml"):
        try:
            configs = load_configs(target, overrides)
        except ConfigError as error:
            raise SystemExit(f"config error: {error}") from None
        folders = [run_folder(config) for config in configs]
        missing = [str(folder) for folder in folders if not (folder / "config.yaml").exists()]
        if missing:
            command = " ".join(["python -m experiment.main", str(target), *overrides])
            raise SystemExit(f"{target}: no results yet at {', '.join(missing)}; run {command}")
        return [Run(folder) for folder in folders]
    if overrides:
        raise SystemExit(f"{target}: key.path=value overrides apply only to a config file target, got {' '.join(overrides)}")
    runs = [Run(folder.path) for folder in run_dirs(target)]
    if not runs:
        raise SystemExit(f"{target}: no run folders (folders with config.yaml) found")
    return runs


def quantity(run: Run) -> tuple[str, str, Callable[[float], float]]:
    """(metrics column, axis label, value transform) of the run's main metric: test NLL for flows,
    bits/dim for images, top-1 error for classifiers (`experiment.report.quantity_of`, which the
    end-of-run table shows too)."""
    column = main_metric(run.config["training"])
    return (column, *quantity_of(column))


def parse_arguments(description: str, argv: list[str] | None = None, **extra: dict) -> argparse.Namespace:
    """`TARGET [key.path=value ...] [--out DIR]` plus `extra` options ({flag: argparse kwargs}); the
    overrides (for a config file TARGET, those it was run with) go to `find_runs`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("target", help="run folder, results root or config file")
    add_overrides_argument(parser)
    parser.add_argument("--out", default=None, help="output folder (default: <run folder>/paper)")
    for flag, kwargs in extra.items():
        parser.add_argument(flag, **kwargs)
    return parser.parse_intermixed_args(argv)  # options may come after the overrides too


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

METHOD_NAMES = {"ThresNet": "WT", "FilterThresNet": "FT", "NoPrune": "NoPrune (no pruning, same training)", "dense": "dense"}


def line_label(mode: str, method: str, modes: set[str]) -> str:
    """'WT' or, where a run holds several modes, 'WT (retrain)'."""
    name = METHOD_NAMES.get(method, method)
    return name if len(modes) <= 1 else f"{name} ({mode})"
