"""What every analysis script shares: finding runs from a run folder, results root or config file,
the main quantity to plot, the figure style (`--style screen|paper`) and its axes, and writing
figures (PNG and PDF) and tables (CSV: `experiment.results.tree.rows_to_csv`; markdown:
`markdown_table`)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.style
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

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
    column = main_metric(run.settings.training)
    return (column, *quantity_of(column))


def is_error_rate(column: str) -> bool:
    """Whether a metrics column is plotted as an error rate in % (top-k accuracies)."""
    return re.fullmatch(r"top\d+_acc", column) is not None


def parse_arguments(description: str, argv: list[str] | None = None, **extra: dict) -> argparse.Namespace:
    """`TARGET [key.path=value ...] [--out DIR] [--style screen|paper]` plus `extra` options ({flag:
    argparse kwargs}); the overrides (for a config file TARGET, those it was run with) go to
    `find_runs`. Applies the chosen figure style (`use_style`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("target", help="run folder, results root or config file")
    add_overrides_argument(parser)
    parser.add_argument("--out", default=None, help="output folder (default: <run folder>/paper)")
    parser.add_argument("--style", choices=sorted(STYLES), default="screen",
                        help="screen (default): large, titled with the run; paper: column widths, 8 pt text, "
                             "TrueType fonts in the PDF, no run ids in titles")
    for flag, kwargs in extra.items():
        parser.add_argument(flag, **kwargs)
    arguments = parser.parse_intermixed_args(argv)  # options may come after the overrides too
    use_style(arguments.style)
    return arguments


# ------------------------------------------------------------------ figure style


@dataclass(frozen=True)
class Style:
    """How figures look. `single_width` / `double_width`: width in inches of one-panel and of
    multi-panel figures; `titles`: whether figures carry a descriptive title (dataset, network, run
    id); `dpi` of the PNG; `rc`: matplotlib settings."""

    name: str
    single_width: float
    double_width: float
    titles: bool
    dpi: int
    rc: dict


STYLES = {
    "screen": Style("screen", 6.4, 13.0, True, 150, {"legend.fontsize": 8, "axes.titlesize": 10, "figure.titlesize": 11}),
    # A two-column paper: 3.3 in and 6.9 in columns, text at 8 pt once printed at that width; Type 42
    # (TrueType) fonts, since publishers reject the Type 3 fonts matplotlib embeds by default.
    "paper": Style("paper", 3.3, 6.9, False, 300, {
        "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
        "legend.fontsize": 8, "figure.titlesize": 9, "legend.handlelength": 1.5, "legend.borderaxespad": 0.3,
        "lines.linewidth": 1.0, "lines.markersize": 3, "axes.linewidth": 0.6, "grid.linewidth": 0.5,
        "xtick.major.width": 0.6, "ytick.major.width": 0.6, "pdf.fonttype": 42, "ps.fonttype": 42}),
}
_active_style = STYLES["screen"]


def use_style(name: str) -> Style:
    """Makes `name` the style of every figure made from now on (matplotlib's settings are global)."""
    global _active_style
    _active_style = STYLES[name]
    matplotlib.style.use(["default", _active_style.rc])
    return _active_style


def style() -> Style:
    return _active_style


def new_figure(rows: int = 1, columns: int = 1, aspect: float = 0.7, wide: bool | None = None, **subplots) -> tuple:
    """(figure, axes) of `rows` × `columns` panels at the style's width, single-column for one panel
    and double-column for several (or as `wide` says), `aspect` × width high, constrained layout (so
    the saved file has exactly that width). A bare Figure, not pyplot's: no backend, no registry of
    open figures; saving renders it with the file format's canvas."""
    width = style().double_width if (columns > 1 if wide is None else wide) else style().single_width
    figure = Figure(figsize=(width, aspect * width), layout="constrained")
    return figure, figure.subplots(rows, columns, **subplots)


def figure_title(figure: Figure, text: str) -> None:
    """A descriptive title (run id and all) on screen; none in a paper, where the caption says it."""
    if style().titles:
        figure.suptitle(text)


def value_axis(axes: Axes, column: str, values: Sequence[float]) -> None:
    """The axis of a main quantity (`quantity_of`). Error rates in % go on a symlog scale, linear
    from 0 to 1 % and logarithmic above, up to the next tick above the largest of `values`: errors of
    0–4 % stay apart next to a breakdown to 80 % at the highest prune ratio (paper/README.md)."""
    axes.set_ylabel(quantity_of(column)[0])
    if not is_error_rate(column):
        return
    ticks = [0, 0.5, 1, 2, 5, 10, 20, 50, 100]
    top = next((tick for tick in ticks[1:] if tick >= 1.05 * max(values, default=0)), 100)
    axes.set_yscale("symlog", linthresh=1.0, linscale=0.6)
    axes.set_ylim(-0.15, top)  # a margin below 0, where many points lie, so their markers show whole
    axes.yaxis.set_major_locator(FixedLocator([tick for tick in ticks if tick <= top]))
    axes.yaxis.set_minor_locator(NullLocator())
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def output_folder(out: str | None, run: Run) -> Path:
    return Path(out) if out else run.path / "paper"


def run_label(run: Run) -> str:
    """A short unique name for a run in file names: dataset_network_runid."""
    network = run.settings.network
    return f"{network.dataset}_{network.name}_{run.path.name}"


def save_figure(figure: Figure, folder: Path, name: str) -> list[Path]:
    """Writes `name`.png and `name`.pdf into `folder` (atomically)."""
    paths = []
    for suffix in ("png", "pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, dpi=style().dpi)  # no tight box: keep the style's width
        path = folder / f"{name}.{suffix}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: the header, the `|---|` rule, then a line per row of cells."""
    def line(cells: Sequence[str]) -> str:
        return "|" + "".join(f" {cell} |" if cell else " |" for cell in cells)

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def save_text(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    atomic_write_text(path, text)
    return path


def read_cache(path: Path) -> dict:
    """An analysis' cache of per-model measurements (JSON); empty when it is missing or unreadable,
    so a damaged cache costs a recomputation, never a wrong number (entries are keyed by checkpoint
    contents and settings)."""
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def cache_saver(folder: Path, name: str, cache: dict) -> Callable[[], Path]:
    """Writes `cache` (as it is then) to `folder`/`name`, atomically."""
    def save() -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return save_text(folder, name, json.dumps(cache))
    return save


def collection_folder(out: str | None, target: str | Path, runs: list[Run]) -> Path:
    """Where a figure or table over several runs goes: `out`, else `<target>/paper` for a folder
    target (a results root), else `paper/` in the deepest folder holding all the runs."""
    if out:
        return Path(out)
    target = Path(target)
    if target.is_dir():
        return target / "paper"
    return Path(os.path.commonpath([str(run.path.resolve()) for run in runs])) / "paper"


def write_over_runs(description: str, argv: list[str] | None, write: Callable[[list[Run], Path], list[Path]]) -> int:
    """The command line of a script whose files cover all the runs of TARGET (`parse_arguments`):
    `write(runs, folder)` into `collection_folder`, printing the paths written."""
    arguments = parse_arguments(description, argv)
    runs = find_runs(arguments.target, arguments.overrides)
    for path in write(runs, collection_folder(arguments.out, arguments.target, runs)):
        print(path)
    return 0
