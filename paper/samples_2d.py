"""2-D figures per prune ratio: what the toy models look like as they are pruned.

    python -m paper.samples_2d TARGET [key.path=value ...] [--out DIR] [--style screen|paper] [--ratios PR ...] [--num-ratios 4] [--net 0]

For every 2-D run under TARGET (a run folder, a results root or a config file), one grid per
figure, rows = pruning methods, columns = the dense net (first row only: it is the same for every
method) then a few prune ratios:

* flows (cnf_/ffjord_ toy runs): `samples_<run>`, the model density as a 2-D histogram of prior
  samples N(0, I) pushed back through the ODE (seeded), next to a histogram of the test data, all
  on one colour scale (colour bar);
* classifiers (node_ runs): `decision_<run>`, the decision regions (argmax of the logits on a grid)
  with the test data on top;
* both: `field_<run>`, the learned vector field f(t, z) as a streamplot coloured by its speed on
  one scale (colour bar; t = T/2, the toy fields are autonomous, so t does not matter), with the
  state's coordinates z₁, z₂ on the outer panels' axes, and `trajectories_<run>`, paths z(t) of
  test points from t = 0 to T coloured by label (legend below), rows: the shown prune ratio nearest
  50 % and the largest, columns: the dense net (first row only), then each method, every panel on
  its own axes.

Panels are titled with the achieved prune ratio (PR) and the test metric of the metrics row (the
NoPrune control, which prunes nothing, with the prune ratio of its step). One net (--net, default
0), repetition 0, is shown, and every figure says which. By default the columns are --num-ratios
target ratios spread evenly over the run's ratios within its `experiments.plotting` range, always
ending with the largest; --ratios picks the nearest ratios of that list instead. Runs whose data are not 2-D are skipped with a note.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from experiment.analysis.two_dimensional import GRID_RATIOS, fields_of, sample_flow, spread_ratios, trajectories, two_d_family
from experiment.pruning.rules import CONTROL_METHOD
from experiment.report import is_plotted, line_label, step_prune_ratio
from experiment.results import Run
from paper.common import (
    command, find_runs, is_error_rate, new_figure, output_folder, parse_arguments, quantity, run_label, save_figure, style,
)

METRIC_SHORT = {"nll": "NLL", "bits_per_dim": "bits/dim"}
CLASS_COLOURS = matplotlib.colormaps["tab10"].colors
MODERATE_RATIO = 0.5  # the trajectories show the shown prune ratio nearest this one, and the largest


# ------------------------------------------------------------------------------ which models


@dataclass
class Selection:
    """The models of one figure grid, all of net `net` (repetition `repetition`): `ratios` are the
    target prune ratios of the columns after the dense one; `cells[(mode, method)]` the metrics rows
    of that method at those ratios (None where a model is missing); `dense` the dense row (None if
    missing)."""

    dense: dict | None
    ratios: list[float]
    net: int = 0
    repetition: int = 0
    cells: dict[tuple[str, str], list[dict | None]] = field(default_factory=dict)

    @property
    def methods(self) -> list[tuple[str, str]]:
        return list(self.cells)


def select_models(run: Run, ratios: list[float] | None = None, num_ratios: int = GRID_RATIOS, net: int = 0,
                  repetition: int = 0) -> Selection:
    """The dense net `net` and, per (mode, method), its pruned models of repetition `repetition` at
    the chosen target prune ratios: the nearest of the run's ratios (within its plotted range,
    `experiments.plotting`) to each of `ratios`, or `num_ratios` of them spread evenly (see
    `spread_ratios`)."""
    rows = [row for row in run.rows if int(row["net"]) == net]
    dense = next((row for row in rows if row["method"] == "dense"), None)
    pruned = [row for row in rows if row["method"] != "dense" and int(row["repetition"]) == repetition
              and is_plotted(run.settings.experiments.plotting, step_prune_ratio(row))]
    available = sorted({round(step_prune_ratio(row), 9) for row in pruned})
    if ratios:
        chosen = sorted({min(available, key=lambda value: abs(value - wanted)) for wanted in ratios}) if available else []
    else:
        chosen = spread_ratios(available, num_ratios)
    selection = Selection(dense=dense, ratios=chosen, net=net, repetition=repetition)
    for key in sorted({(row["mode"], row["method"]) for row in pruned}):
        by_ratio = {round(step_prune_ratio(row), 9): row for row in pruned if (row["mode"], row["method"]) == key}
        selection.cells[key] = [by_ratio.get(ratio) for ratio in chosen]
    return selection


def grid_rows(selection: Selection) -> list[tuple[str, list[dict | None]]]:
    """(row label, [dense row, rows at each ratio]) per figure row; one 'dense' row if nothing was pruned."""
    if not selection.cells:
        return [("dense", [selection.dense])]
    modes = {mode for mode, _ in selection.cells}
    return [(line_label(mode, method, modes), [selection.dense, *cells]) for (mode, method), cells in selection.cells.items()]


# ------------------------------------------------------------------------------ model helpers


class ModelCache:
    """Loads each model of a run once."""

    def __init__(self, run: Run):
        self.run = run
        self.models: dict[tuple, torch.nn.Module] = {}

    def __call__(self, row: dict) -> torch.nn.Module:
        key = tuple(str(row[name]) for name in ("mode", "method", "net", "repetition", "step"))
        if key not in self.models:
            self.models[key] = self.run.load_model(row)
        return self.models[key]


def data_box(x: np.ndarray, margin: float = 0.1) -> tuple[tuple[float, float], tuple[float, float]]:
    """A square window around the points `x` (robust to a few outliers), `margin` of its size added."""
    low, high = np.percentile(x, 0.1, axis=0), np.percentile(x, 99.9, axis=0)
    centre, half = (low + high) / 2, (high - low).max() / 2 * (1 + margin)
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def grid_points(box, resolution: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    xs = np.linspace(*box[0], resolution)
    ys = np.linspace(*box[1], resolution)
    gx, gy = np.meshgrid(xs, ys)
    points = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32))
    return gx, gy, points


def panel_title(run: Run, row: dict | None) -> str:
    if row is None:
        return "missing"
    column, _, transform = quantity(run)
    if row["method"] == CONTROL_METHOD:  # nothing pruned: say which step's training budget it matches
        text = f"step of PR {100 * step_prune_ratio(row):.0f}%"
    else:
        text = f"PR {100 * float(row['prune_ratio']):.1f}%"
    value = row.get(column)
    if isinstance(value, (int, float)) and math.isfinite(value):
        value = transform(value)
        text += f"\nerror {value:.2f}%" if is_error_rate(column) else f"\n{METRIC_SHORT.get(column, column)} {value:.3f}"
    return text


def make_grid(num_rows: int, num_columns: int, colour_bar: bool = False, shared: bool = True, ticks: bool = False,
              legend_lines: int = 0):
    """A grid of square panels at the style's double-column width (room on the right for a colour
    bar if `colour_bar`, below for `legend_lines` lines of a figure legend), as high as the panels,
    their two-line titles and their tick labels need; the panels show the same window if `shared`.
    Without `ticks` the panels have none; with, `label_axes` says which show them."""
    width, text = style().double_width, matplotlib.rcParams["font.size"] / 72  # inches
    # tick labels and an axis label: left of the first panels of the rows (two columns of them in a
    # shared grid whose dense panel is alone in its column), or of every panel
    tick_columns = (num_columns if not shared else min(num_columns, 1 + (num_rows > 1))) if ticks else 0
    tick_rows = (num_rows if not shared else 1) if ticks else 0
    panel = (width - 3 * text - (8 * text if colour_bar else 0) - 4 * text * tick_columns) / num_columns
    title = 5 * text  # two lines of title and their padding
    height = (num_rows * (panel + title) + 3 * text * tick_rows + 2 * text * legend_lines
              + (3 * text if style().titles else 0))  # and the figure's title
    figure, axes = new_figure(num_rows, num_columns, aspect=height / width, wide=True, squeeze=False,
                              sharex=shared, sharey=shared)
    for ax in axes.flat:
        ax.set_aspect("equal")
        if ticks:  # round ticks (…, −2, 0, 2, …), not matplotlib's 2.5 steps
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    return figure, axes


def label_axes(axes, shared: bool) -> None:
    """The state's coordinates z₁ (x) and z₂ (y) as axis labels of the outer drawn panels, the first
    of each row and the lowest of each column, with tick labels there (`shared`: one window for all)
    or on every drawn panel (each at its own scale). Blank panels (no frame) get no ticks."""
    drawn = np.array([[ax.axison and ax.get_frame_on() for ax in row] for row in axes])
    for row_index, row in enumerate(axes):
        for column_index, ax in enumerate(row):
            if not drawn[row_index, column_index]:
                ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)
                continue
            first_in_row = column_index == np.flatnonzero(drawn[row_index])[0]
            lowest_in_column = row_index == np.flatnonzero(drawn[:, column_index])[-1]
            ax.tick_params(labelleft=first_in_row or not shared, labelbottom=lowest_in_column or not shared)
            if first_in_row:
                ax.set_ylabel("z₂")
            if lowest_in_column:
                ax.set_xlabel("z₁")


def label_rows(axes, labels: list[str], offset: int = 0) -> None:
    """Each row's label, rotated, left of the grid: all at one x, left of the y axis label (or the
    left edge) of the panel in column `offset` of the first row, each centred on its row."""
    anchor = axes[0, offset].yaxis.label
    for ax, label in zip(axes[:, offset], labels):
        ax.annotate(label, xy=(0.0, 0.5), xycoords=(anchor, ax.transAxes), xytext=(-4, 0), textcoords="offset points",
                    rotation=90, ha="right", va="center", fontsize=matplotlib.rcParams["axes.labelsize"])


def net_title(figure: Figure, selection: Selection, text: str) -> None:
    """Which net the figure shows ('net 0', with the repetition where it is not 0), after `text`
    (the run and what is drawn) on screen and alone in a paper, whose figures carry no other title."""
    which = f"net {selection.net}" + (f", repetition {selection.repetition}" if selection.repetition else "")
    figure.suptitle(f"{text}; {which}" if style().titles else which)


def mark_missing(ax) -> None:
    """A panel whose model is missing: the word, no frame (hence no ticks, `label_axes`)."""
    ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_frame_on(False)


def panels(run: Run, axes, rows, first_column: int = 0):
    """(axis, metrics row) of every grid panel that has a model, row by row: every panel is titled,
    the dense net (column `first_column`) only in the first row ("dense") and its repeats below
    left blank, panels of missing models are marked and skipped."""
    for index, (_, cells) in enumerate(rows):
        for column, row in enumerate(cells, start=first_column):
            ax = axes[index, column]
            if column == first_column and index > 0:
                ax.set_frame_on(False)  # the same dense net as in the first row; keeps the row label
                continue
            ax.set_title(("dense\n" if column == first_column else "") + panel_title(run, row))
            if row is None:
                mark_missing(ax)
                continue
            yield ax, row


def colour_bar(figure: Figure, axes, norm: Normalize, cmap: str, label: str, extend: str = "neither") -> None:
    """One colour bar for all `axes`, which share `norm`."""
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=label, shrink=0.8, aspect=30, extend=extend)


# ------------------------------------------------------------------------------ figures


def flow_samples_figure(run: Run, selection: Selection, models: ModelCache, num_samples: int = 20_000,
                        seed: int = 0, bins: int = 150):
    """Density histograms of the flow's samples: column 0 the test data (first row only), then the
    dense net and the selected ratios; rows = methods; one colour scale for all panels (up to the
    99.5th percentile of all their bins, so that one sharp model does not wash out the others).
    Returns (figure, axes [rows, 2 + ratios])."""
    x_test = run.load_data()["test"][0].double().numpy()
    box = data_box(x_test)
    rows = grid_rows(selection)
    figure, axes = make_grid(len(rows), len(rows[0][1]) + 1, colour_bar=True)

    def density(points: np.ndarray) -> np.ndarray:
        points = points[np.isfinite(points).all(1)]
        return np.histogram2d(points[:, 0], points[:, 1], bins=bins, range=box, density=True)[0].T

    histograms = [(axes[0, 0], density(x_test))]
    axes[0, 0].set_title("data (test)")
    for ax in axes[1:, 0]:
        ax.set_axis_off()
    samples: dict[int, np.ndarray] = {}
    for ax, row in panels(run, axes, rows, first_column=1):
        model = models(row)
        if id(model) not in samples:
            samples[id(model)] = density(sample_flow(model, num_samples, seed))
        histograms.append((ax, samples[id(model)]))
    norm = Normalize(0.0, max(float(np.percentile(np.concatenate([h.ravel() for _, h in histograms]), 99.5)), 1e-12))
    for ax, histogram in histograms:
        ax.imshow(histogram, origin="lower", extent=(*box[0], *box[1]), cmap="magma", norm=norm, interpolation="nearest",
                  aspect="equal", rasterized=True)
    colour_bar(figure, axes, norm, "magma", "density", extend="max")
    label_rows(axes, [label for label, _ in rows], offset=1)
    net_title(figure, selection, f"{run_label(run)}: samples ({num_samples} from N(0, I) through the ODE)")
    return figure, axes


@torch.no_grad()
def decision_figure(run: Run, selection: Selection, models: ModelCache, resolution: int = 200):
    """Decision regions of the classifier (argmax of the logits on a grid) with the test data on
    top; rows = methods, columns = dense then the ratios. Returns (figure, axes [rows, 1 + ratios])."""
    x_test, y_test = (tensor.numpy() for tensor in run.load_data()["test"])
    box = data_box(x_test, margin=0.2)
    gx, gy, points = grid_points(box, resolution)
    rows = grid_rows(selection)
    num_classes = run.settings.network.output_size
    colours = [CLASS_COLOURS[index % 10] for index in range(num_classes)]
    cmap = ListedColormap(colours)
    figure, axes = make_grid(len(rows), len(rows[0][1]))
    predictions: dict[int, np.ndarray] = {}
    for ax, row in panels(run, axes, rows):
        model = models(row)
        if id(model) not in predictions:
            predictions[id(model)] = model(points).argmax(1).numpy().reshape(gx.shape)
        prediction = predictions[id(model)]
        ax.contourf(gx, gy, prediction, levels=np.arange(num_classes + 1) - 0.5, cmap=cmap, alpha=0.35)
        ax.scatter(x_test[:, 0], x_test[:, 1], c=[colours[label] for label in y_test], s=3, linewidths=0)
        ax.set_xlim(box[0])
        ax.set_ylim(box[1])
    label_rows(axes, [label for label, _ in rows])
    net_title(figure, selection, f"{run_label(run)}: decision boundaries (test data on top)")
    return figure, axes


@torch.no_grad()
def field_figure(run: Run, selection: Selection, models: ModelCache, resolution: int = 40):
    """Streamplots of the vector field f(T/2, z) of the first ODE block, coloured by its speed |f| on
    one scale for all panels (colour bar); rows = methods, columns = dense then the ratios.
    Returns (figure, axes)."""
    x_test = run.load_data()["test"][0].double().numpy()
    box = data_box(x_test, margin=0.2)
    gx, gy, points = grid_points(box, resolution)
    rows = grid_rows(selection)
    figure, axes = make_grid(len(rows), len(rows[0][1]), colour_bar=True, ticks=True)
    fields = []
    for ax, row in panels(run, axes, rows):
        func, end_time, _ = fields_of(models(row))[0]
        velocity = func(end_time / 2, points).double().numpy()
        u, v = velocity[:, 0].reshape(gx.shape), velocity[:, 1].reshape(gx.shape)
        fields.append((ax, u, v, np.hypot(u, v)))
        ax.set_xlim(box[0])
        ax.set_ylim(box[1])
    speeds = [speed for *_, speed in fields if np.isfinite(speed).all()]
    norm = Normalize(0.0, max([float(speed.max()) for speed in speeds] + [1e-12]))
    for ax, u, v, speed in fields:
        if np.isfinite(speed).all() and speed.max() > 0:
            ax.streamplot(gx, gy, u, v, color=speed, cmap="viridis", norm=norm, density=0.8, linewidth=0.6, arrowsize=0.5)
    colour_bar(figure, axes, norm, "viridis", "speed |f(z)|")
    label_axes(axes, shared=True)
    label_rows(axes, [label for label, _ in rows])
    net_title(figure, selection, f"{run_label(run)}: vector field f(t, z) (colour: speed)")
    return figure, axes


def trajectory_ratio_indices(selection: Selection) -> list[int]:
    """Which of `selection.ratios` the rows of the trajectories figure show (indices): the one
    nearest `MODERATE_RATIO` and the largest, once if they are the same; none if nothing was pruned."""
    if not selection.ratios:
        return []
    moderate = min(range(len(selection.ratios)), key=lambda index: abs(selection.ratios[index] - MODERATE_RATIO))
    return sorted({moderate, len(selection.ratios) - 1})


def trajectories_figure(run: Run, selection: Selection, models: ModelCache, num_points: int = 300,
                        num_times: int = 50, seed: int = 0):
    """Paths z(t), t from 0 to T, of `num_points` test points coloured by label (start: small dot,
    end: larger dot; a legend of both below). Rows = a moderate and the largest prune ratio shown
    (`trajectory_ratio_indices`), columns = the dense net (first row only) then each method; each panel at
    its own scale (a pruned field may shrink or stretch the paths many times), with its ticks.
    Returns (figure, axes [rows, 1 + methods])."""
    x_test, y_test = run.load_data()["test"]
    chosen = np.random.default_rng(seed).permutation(len(x_test))[:num_points]
    x, y = x_test[chosen], y_test[chosen].numpy()
    colours = np.array([CLASS_COLOURS[int(label) % 10] for label in y])
    methods = [(label, cells[1:]) for label, cells in grid_rows(selection)] if selection.cells else []
    indices = trajectory_ratio_indices(selection)
    word = "class" if two_d_family(run) == "node" else "label"
    handles = [Line2D([], [], color=CLASS_COLOURS[int(label) % 10], marker="o", markersize=3, linewidth=0.8,
                      label=f"{word} {int(label)}") for label in np.unique(y_test.numpy())]
    handles += [Line2D([], [], color="grey", marker="o", markersize=size, linestyle="none", label=label)
                for size, label in ((2, "start, z(0) = x"), (4, "end, z(T)"))]
    legend_columns = min(len(handles), 4)
    figure, axes = make_grid(max(len(indices), 1), 1 + len(methods), shared=False, ticks=True,
                             legend_lines=-(-len(handles) // legend_columns))
    shown = [(0, 0, "dense", selection.dense)]
    shown += [(row, column, label, cells[index]) for row, index in enumerate(indices)
              for column, (label, cells) in enumerate(methods, start=1)]
    for ax in axes[1:, 0]:
        ax.set_axis_off()  # the dense net is shown once
    for row, column, label, model_row in shown:
        ax = axes[row, column]
        ax.set_title(label if model_row is None else f"{label}, {panel_title(run, model_row)}")
        if model_row is None:
            mark_missing(ax)
            continue
        path = trajectories(models(model_row), x, num_times).double().numpy()
        segments = np.transpose(path, (1, 0, 2))  # [N, times, 2]
        ax.add_collection(LineCollection(segments, colors=colours, linewidths=0.4, alpha=0.5))
        ax.scatter(path[0, :, 0], path[0, :, 1], c=colours, s=2, linewidths=0)
        ax.scatter(path[-1, :, 0], path[-1, :, 1], c=colours, s=8, linewidths=0, edgecolors="k")
        box = data_box(path.reshape(-1, 2), margin=0.05)
        ax.set_xlim(box[0])
        ax.set_ylim(box[1])
    label_axes(axes, shared=False)
    figure.legend(handles=handles, loc="outside lower center", ncols=legend_columns)
    net_title(figure, selection, f"{run_label(run)}: trajectories of test points, t = 0 → T")
    return figure, axes


# ------------------------------------------------------------------------------ script


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(
        __doc__.split("\n\n")[0], argv,
        **{
            "--ratios": dict(type=float, nargs="+", default=None,
                             help="prune ratios to show (the nearest of each run's list); default: --num-ratios spread evenly"),
            "--num-ratios": dict(type=int, default=GRID_RATIOS, help="how many ratios to show by default (always including the largest)"),
            "--net": dict(type=int, default=0, help="which net (default 0)"),
            "--repetition": dict(type=int, default=0, help="which repetition (default 0)"),
            "--num-samples": dict(type=int, default=20_000, help="flow samples per model (default 20000)"),
            "--num-trajectories": dict(type=int, default=300, help="test points whose paths are drawn (default 300)"),
            "--resolution": dict(type=int, default=200, help="grid points per axis of the decision regions (default 200)"),
            "--seed": dict(type=int, default=0, help="seed of the samples and of the chosen test points"),
            "--threads": dict(type=int, default=1, help="torch CPU threads (default 1)"),
        },
    )
    torch.set_num_threads(arguments.threads)
    for run in find_runs(arguments.target, arguments.overrides):
        family = two_d_family(run)
        if family is None:
            print(f"{run.path}: not a 2-D toy flow or classifier ({run.settings.network.name}); skipped")
            continue
        selection = select_models(run, arguments.ratios, arguments.num_ratios, arguments.net, arguments.repetition)
        if selection.dense is None and not any(row for cells in selection.cells.values() for row in cells):
            print(f"{run.path}: no trained models of net {arguments.net} yet; skipped")
            continue
        folder = output_folder(arguments.out, run)
        label = run_label(run)
        models = ModelCache(run)
        written = []
        if family == "cnf":
            figure, _ = flow_samples_figure(run, selection, models, arguments.num_samples, arguments.seed)
            written += save_figure(figure, folder, f"samples_{label}")
        else:
            figure, _ = decision_figure(run, selection, models, arguments.resolution)
            written += save_figure(figure, folder, f"decision_{label}")
        figure, _ = field_figure(run, selection, models)
        written += save_figure(figure, folder, f"field_{label}")
        figure, _ = trajectories_figure(run, selection, models, arguments.num_trajectories, seed=arguments.seed)
        written += save_figure(figure, folder, f"trajectories_{label}")
        for path in written:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(command(main))
