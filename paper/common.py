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
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import PIL.Image
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from experiment.config import ConfigError, add_overrides_argument
from experiment.files import DamagedFileError, atomic_write_bytes, atomic_write_text
from experiment.results import Run, run_dirs
from experiment.results.table import NoResults, config_run_dirs
from experiment.pruning.rules import CONTROL_METHOD
from experiment.report import main_metric, method_name, quantity_of


def command(main: Callable[[], int]) -> int:
    """Runs a script's `main` as a command: a damaged or missing results file (a checkpoint gone from
    a trimmed copy, a metrics table cut short) is one line naming it and what to do, exit code 2."""
    try:
        return main()
    except DamagedFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def find_runs(target: str | Path, overrides: Sequence[str] = ()) -> list[Run]:
    """The runs of `target`: a run folder, a folder of run folders (e.g. a results root), or a
    config file (its run folders, one per customization, as `experiment.main` would create them with
    the same `key.path=value` `overrides`, which change the run id)."""
    target = Path(target)
    if target.suffix in (".yaml", ".yml"):
        try:
            return [Run(folder.path) for folder in config_run_dirs(target, overrides)]
        except ConfigError as error:
            raise SystemExit(f"config error: {error}") from None
        except NoResults as error:
            raise SystemExit(str(error)) from None
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


ERROR_TICKS = (0, 0.5, 1, 2, 5, 10, 20, 50, 100)  # ticks of an error axis in %


def symlog_axis(axes: Axes, ticks: Sequence[float], low: float, high: float) -> None:
    """A symlog value axis, linear from −1 to 1 and logarithmic beyond, from `low` to `high`, with
    those of `ticks` that fall in between, written as plain numbers."""
    axes.set_yscale("symlog", linthresh=1.0, linscale=0.6)
    axes.set_ylim(low, high)
    axes.yaxis.set_major_locator(FixedLocator([tick for tick in ticks if low <= tick <= high]))
    axes.yaxis.set_minor_locator(NullLocator())
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}".replace("-", "−")))  # a typeset minus


def next_tick(ticks: Sequence[float], value: float) -> float:
    """The first of the ascending `ticks` above 1.05 × `value` (the largest tick if none is)."""
    return next((tick for tick in ticks if tick >= 1.05 * value), ticks[-1])


def value_axis(axes: Axes, column: str, values: Sequence[float]) -> None:
    """The axis of a main quantity (`quantity_of`). Error rates in % go on a symlog scale, linear
    from 0 to 1 % and logarithmic above, up to the next tick above the largest of `values`: errors of
    0–4 % stay apart next to a breakdown to 80 % at the highest prune ratio (paper/README.md)."""
    axes.set_ylabel(quantity_of(column)[0])
    if is_error_rate(column):
        # a margin below 0, where many points lie, so that their markers show whole
        symlog_axis(axes, ERROR_TICKS, -0.15, next_tick(ERROR_TICKS[1:], max(values, default=0)))


def split_label(column: str) -> tuple[str, str | None]:
    """(name, unit) of a main quantity's axis label (`quantity_of`) without its leading 'test ':
    ('NLL', 'nats'), ('top-1 error', '%'), ('bits/dim', None)."""
    label = quantity_of(column)[0].removeprefix("test ")
    name, unit = re.fullmatch(r"(.*?)(?: \((.*)\))?", label).groups()
    return name, unit


def difference_unit(column: str) -> str | None:
    """The unit of a difference of a main quantity: its own, percentage points for one in %."""
    unit = split_label(column)[1]
    return "points" if unit == "%" else unit


def difference_label(column: str) -> str:
    """The axis label of a main quantity minus the NoPrune control's: 'NLL − NoPrune (nats)',
    'top-1 error − NoPrune (points)'."""
    name = f"{split_label(column)[0]} − {method_name(CONTROL_METHOD)}"
    unit = difference_unit(column)
    return name if unit is None else f"{name} ({unit})"


def difference_axis(axes: Axes, column: str, values: Sequence[float]) -> None:
    """The axis of differences of a main quantity to the NoPrune control (`difference_label`); for
    error rates the symlog scale of `value_axis`, on both sides of 0 with a tick per decade, up to
    the next tick beyond the largest and the smallest of `values`."""
    axes.set_ylabel(difference_label(column))
    if is_error_rate(column):
        ticks = [1, 10, 100]
        high = next_tick(ticks, max(values, default=0))
        low = -next_tick(ticks, -min(values, default=0))
        symlog_axis(axes, [-tick for tick in reversed(ticks)] + [0] + ticks, low, high)


FAR_OUT = 3.0  # Tukey's "far out" fence: 3 interquartile ranges beyond the quartiles


def bulk_range(values: Sequence[float], shown: Sequence[float] = (), fence: float = FAR_OUT) -> tuple[float, float]:
    """(low, high) = [Q1 − fence·IQR, Q3 + fence·IQR] of `values`, widened to hold every value of
    `shown`: the values outside lie far from the bulk (a breakdown at the highest prune ratio)."""
    first, third = np.percentile(np.asarray(values, dtype=np.float64), [25, 75])
    spread = fence * (third - first)
    return min([first - spread, *shown]), max([third + spread, *shown])


@dataclass(frozen=True)
class Mark:
    """A plotted value, for `clip_to_bulk`: drawn at (`x`, `value`) with ± `spread` (a std band or
    error bar, 0 for none), belonging to `name` (e.g. 'FT') drawn in `colour`, at step `where`
    (e.g. 'PR 98%')."""

    x: float
    value: float
    spread: float
    name: str
    colour: str
    where: str


def clip_to_bulk(axes: Axes, marks: Sequence[Mark], shown: Sequence[float] = (), number: str = "{:.3g}") -> None:
    """Limits a linear value axis to the marks within `bulk_range` (with their spread) and the
    values `shown` (reference lines), so that a breakdown far away does not squash the rest; nothing
    changes when every mark is in the bulk. The marks left out are marked at the edge they lie
    beyond (`mark_left_out`, values formatted with `number`)."""
    if not marks:
        return
    low, high = bulk_range([mark.value for mark in marks], shown)
    kept = [mark for mark in marks if low <= mark.value <= high]
    if len(kept) == len(marks):
        return
    bottom = min([mark.value - mark.spread for mark in kept] + list(shown))
    top = max([mark.value + mark.spread for mark in kept] + list(shown))
    margin = 0.05 * (top - bottom or abs(top) or 1.0)
    axes.set_ylim(bottom - margin, top + margin)
    mark_left_out(axes, [mark for mark in marks if mark.value > high], above=True, number=number)
    mark_left_out(axes, [mark for mark in marks if mark.value < low], above=False, number=number)


def mark_left_out(axes: Axes, marks: Sequence[Mark], above: bool, number: str) -> None:
    """Marks beyond the top (`above`) or bottom edge of the axis: a triangle per method and step on
    the edge in the method's colour, and their values written, one line per step, e.g. "FT 1.32,
    WT 1.58 at PR 98%" (several marks of one method and step, e.g. one per net: "FT +0.28/+0.074").
    The text stands over the frame at the top and inside the frame at the bottom (where the tick
    labels are), on the side of the last step's triangles that faces the middle."""
    if not marks:
        return
    edge = axes.get_ylim()[1 if above else 0]
    x_low, x_high = axes.get_xlim()
    by_step: dict[str, list[Mark]] = {}
    for mark in sorted(marks, key=lambda mark: mark.x):
        by_step.setdefault(mark.where, []).append(mark)
    lines = []
    for where, step_marks in by_step.items():
        by_name: dict[str, list[Mark]] = {}
        for mark in sorted(step_marks, key=lambda mark: mark.name):  # stable: a name's marks keep their order
            by_name.setdefault(mark.name, []).append(mark)
        stagger = 0.01 * (x_high - x_low)  # the triangles of one step side by side, not on top of each other
        centre = float(np.mean([mark.x for mark in step_marks]))
        for index, named in enumerate(by_name.values()):
            axes.plot([centre + (index - (len(by_name) - 1) / 2) * stagger], [edge], marker="^" if above else "v",
                      color=named[0].colour, markersize=5, linestyle="none", clip_on=False, zorder=4)
        values = ", ".join(f"{name} {'/'.join(number.format(mark.value) for mark in named)}" for name, named in by_name.items())
        lines.append(f"{values} at {where}")
    x = max(mark.x for mark in marks)
    right = x > (x_low + x_high) / 2
    axes.annotate("\n".join(lines), xy=(x, edge), xytext=(-4 if right else 4, 3 if above else 6), textcoords="offset points",
                  ha="right" if right else "left", va="bottom", fontsize=matplotlib.rcParams["legend.fontsize"],
                  annotation_clip=False)


def output_folder(out: str | None, run: Run) -> Path:
    return Path(out) if out else run.path / "paper"


def run_label(run: Run) -> str:
    """A short unique name for a run in file names: dataset_network_runid."""
    network = run.settings.network
    return f"{network.dataset}_{network.name}_{run.path.name}"


# A PNG is for reading on screen (the PDF carries full quality): at most this many pixels wide, in
# a palette of at most 128 colours, which keeps a many-panel figure to a few hundred KB.
PNG_MAX_WIDTH = 1200
PNG_COLOURS = 128


def png_bytes(figure: Figure) -> bytes:
    """`figure` as a palette PNG: rendered at the style's dpi, or less where that would be wider than
    PNG_MAX_WIDTH pixels, then reduced to PNG_COLOURS colours (median cut, no dithering, so that flat
    areas stay flat)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=min(style().dpi, PNG_MAX_WIDTH / figure.get_figwidth()))
    image = PIL.Image.open(buffer).convert("RGB").quantize(PNG_COLOURS, method=PIL.Image.Quantize.MEDIANCUT,
                                                            dither=PIL.Image.Dither.NONE)
    compact = io.BytesIO()
    image.save(compact, format="png", optimize=True)
    return compact.getvalue()


def save_figure(figure: Figure, folder: Path, name: str) -> list[Path]:
    """Writes `name`.png (`png_bytes`) and `name`.pdf into `folder` (atomically)."""
    pdf = io.BytesIO()
    figure.savefig(pdf, format="pdf")  # no tight box: keep the style's width
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    atomic_write_bytes(paths[0], png_bytes(figure))
    atomic_write_bytes(paths[1], pdf.getvalue())
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
