"""Loss-surface flatness of dense and pruned nets: the Hessian of the *training* loss restricted to
the surviving (non-zero) parameters, on a seeded subset of the training data, beside two controls,
with λ_max measured on several data subsets for its uncertainty.

    python -m paper.flatness TARGET [key.path=value ...] [--out DIR] [--subset 0.1] [--ratios 0.25 0.5 ...] [--all-steps]
                                    [--nets 0 1 ...] [--control-subsets 3] [--data-subsets 3] [--no-same-support]

For each net of `--nets` (default: net 0), its dense net and, per (mode, method), its pruned nets at
the steps whose achieved prune ratio is closest to each of `--ratios` (or every step with
`--all-steps`; the NoPrune control, which prunes nothing, at every step chosen for FT or WT of its
mode, placed at the ratio scheduled for its step, `experiment.report.step_prune_ratio`), it reports

* ``lambda_max``: the largest (algebraic) eigenvalue of the restricted Hessian H;
* ``trace``: tr H (and ``trace_stderr``, the standard error of Hutchinson's estimate; 0 when exact);
* ``condition_number``: κ = λ_max / λ_min⁺, λ_min⁺ the smallest eigenvalue above ``--eig-tol`` · λ_max
  (default 1e-6): the condition number of H on its numerically positive-definite part (NaN on the
  iterative path when the smallest eigenvalue is not above the tolerance); ``lambda_min``, the
  smallest algebraic eigenvalue, is reported alongside so negative curvature is visible;
* the spectral density: a Gaussian-broadened density of the eigenvalues (exact path) or its stochastic
  Lanczos quadrature (SLQ) estimate (iterative path), ∫ρ = 1, ∫λρ(λ)dλ ≈ tr H / n;
* λ_max over data subsets (``lambda_max_subsets_mean``, ``lambda_max_subsets_std``, ``data_subsets``):
  λ_max on ``--data-subsets`` training-data subsets of the same size (default 3): the first is the
  subset of every other column (so ``lambda_max`` is one of the values averaged), the others are
  drawn with seeds derived from ``--seed``; their mean, population std (NaN from a single subset)
  and how many subsets were measured (fewer than asked for a model whose checkpoint is gone and
  whose cache entry predates the option). The std is the uncertainty of λ_max that the choice of
  data brings; only λ_max is measured on the further subsets;
* the random-subset control (``control_*`` columns): the same quantities of H_dense[S, S], the
  Hessian of the model's dense net on ``--control-subsets`` uniformly random sets S of as many
  parameters as the model keeps (mean and population std; 0 switches the control off). A pruned net
  whose λ_max lies below its control is flatter than a random restriction of the dense surface of
  the same size (interlacing alone puts a restriction below the dense λ_max); the control does not
  account for the retraining after pruning (that is what the NoPrune models are for);
* the same-support control (``same_support_*`` columns): H_dense[S, S] with S exactly the model's
  surviving parameters (their positions in the full layout the checkpoints keep, FT's removed
  neurons included as zeros): ``same_support_lambda_max`` and ``same_support_trace`` on the first
  data subset, and ``same_support_lambda_max_subsets_mean``, ``_std`` and
  ``same_support_data_subsets`` over the data subsets, as for the model. The pruned model's own
  Hessian is H[S, S] at its retrained weights, this one at the dense weights: pruned λ_max against
  it is what moving the weights (pruning, then retraining) did on a fixed support, and the
  random-subset control beside it what choosing this support did. For the dense net and NoPrune S is
  every parameter and the columns are the dense net's. NaN (count 0) where a checkpoint is gone and
  the cache has no entry; ``--no-same-support`` leaves the control out.

How they are computed, with the maths: `experiment.analysis.hessian` (the restricted loss, its
Hessian-vector products, the exact and the iterative path, Lanczos and SLQ) and
`experiment.analysis.flatness` (the data subsets, the models, the controls). The options: a subset is
a ``--subset`` share of the training split, the first chosen with ``--seed`` (which also seeds probes,
starting vectors and control subsets), in ``--chunk-size`` samples per forward pass, computed in
``--dtype`` (float64 by default, so that roundoff stays far below the eigenvalue tolerance). Up to
``--exact-max`` surviving parameters the full Hessian is formed (n HVPs); beyond, ARPACK Lanczos
gives λ_max and λ_min, Hutchinson's estimator with ``--probes`` Rademacher probes the trace, and SLQ
with ``--slq-vectors`` × ``--slq-steps`` Lanczos steps the density. ``--hvp-batch`` products share a
backward pass; ``--no-cache-graph`` rebuilds the gradient graph for every product (less memory).

Cost: the exact path needs n HVPs (≈ seconds for the toy NODEs, the controls and further data
subsets included); the iterative path a few hundred to a thousand (ffjord_l4_h64 on 2 % of
ToyGaussians, 295 samples, n ≈ 8.6k, one CPU thread: an HVP ≈ 0.2 s on an idle core, ≈ 0.6 s on two
cores shared with two trainings; λ_max 21 HVPs, λ_min 55–330, the trace 100, SLQ 240: ≈ 90 s per
model idle, 110–150 s shared; ≈ 5 × that on 10 %). The SLQ basis holds slq_vectors × slq_steps × n
floats. The random-subset control is computed once per distinct number of survivors k, right after
the dense net and from its operator: on the exact path each subset costs one k × k `eigvalsh` and no
HVP; on the iterative path about a pruned model's cost less SLQ (≈ 50 s idle). The same-support
control comes from the same operator, per pruned model: on the iterative path λ_max and the trace
(λ_min, and so κ, is left out: hundreds of HVPs), 55–95 s shared. Each further data subset costs λ_max
alone: ≈ 20 s shared per model, the dense net's graph on it serving the same-support λ_max of every
pruned model (≈ 15 s shared each). Per pruned model of the flow that is ≈ 140 s shared on top of its
own measurement, per NoPrune model ≈ 40 s: 16 min (measured, shared) for net 0 at `--ratios 0.25
0.5 0.75` with its ten models and their random-subset controls already cached.

For the claims, which judge only models at prune ratio ≤ 0.8, the moderate ratios suffice (three
steps per method, NoPrune at the steps chosen for FT and WT; models already in the cache cost nothing):

    python -m paper.flatness RUN --subset 0.02 --exact-max 400 --nets 0 1 --ratios 0.25 0.5 0.75 --out paper/figures --style paper

Outputs in the output folder (per run): ``flatness_<run>.csv`` / ``.md`` (one row per evaluated
model, with its controls), ``flatness_<run>.png/.pdf`` (λ_max as mean ± std over the data subsets,
trace and κ against prune ratio, one solid line per method, its random-subset control dashed and
its same-support control dotted in the same colour), ``spectrum_<run>.png/.pdf`` (spectral
densities overlaid, coloured by prune ratio) and ``spectrum_<run>.csv`` (the quadrature nodes and
weights behind them), and ``flatness_<run>.cache.json``: every model's and control's measurement,
written as each finishes and keyed by checkpoint SHA-256 (a same-support control by both the dense
and the pruned checkpoint's) and the options that change the numbers (λ_max on a further data
subset by that subset's data and the options λ_max depends on, so that changing ``--probes`` or the
SLQ options keeps it). A second call (after a kill, or with more models in the run, or more data
subsets) measures only what is not in it, and a model whose checkpoint is gone is taken from it;
delete the file to measure everything again. A run folder without its data_split.npz (a
results-only copy) is analysed on the split drawn again from the run's seed; the cache entries,
keyed by the data's contents, serve only if it is the same.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from experiment.analysis.flatness import COLUMNS, FlatnessSettings, analyse_run, placed_ratio
from experiment.analysis.hessian import density_grid, spectral_density
from experiment.pruning.rules import CONTROL_METHOD
from experiment.report import line_label, method_color, prune_ratio_axis
from experiment.files import rows_to_csv
from paper.common import (
    command, cache_saver, figure_title, find_runs, markdown_table, new_figure, output_folder, parse_arguments, read_cache, run_label, save_figure,
    save_text,
)


def flatness_markdown(rows: list[dict]) -> str:
    """The table rows (COLUMNS) as markdown, floats to 6 significant digits."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.6g}"
        return str(value)

    return "\n".join(markdown_table(COLUMNS, [[cell(row[column]) for column in COLUMNS] for row in rows])) + "\n"


def _lines(rows: list[dict]) -> dict[tuple[str, str, int], tuple[str, list[dict]]]:
    """(mode, method, net) → (line label: 'WT', 'FT (retrain)', 'WT net 1' where several nets are
    measured, …; the rows sorted by `placed_ratio`, starting at the net's dense net)."""
    nets = sorted({int(row["net"]) for row in rows})
    dense = {net: [row for row in rows if row["method"] == "dense" and int(row["net"]) == net] for net in nets}
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for row in rows:
        if row["method"] != "dense":
            groups.setdefault((row["mode"], row["method"], int(row["net"])), []).append(row)
    if not groups:
        return {("", "dense", net): ("dense" if len(nets) == 1 else f"dense net {net}", dense[net]) for net in nets}
    modes = {mode for mode, _, _ in groups}
    order = list(dict.fromkeys((mode, method) for mode, method, _ in groups))  # the nets of a method next to each other
    return {(mode, method, net): (line_label(mode, method, modes) + (f" net {net}" if len(nets) > 1 else ""),
                                  dense[net] + sorted(members, key=placed_ratio))
            for (mode, method, net), members in sorted(groups.items(), key=lambda item: (order.index(item[0][:2]), item[0][2]))}


NET_MARKERS = "osD^v"  # net 0, 1, … of a method: one colour, one marker each


CONTROL_LABEL = "dense, random subset of same size"
SAME_SUPPORT_LABEL = "dense, on the model's own survivors"


def spans_decades(values: list[float], decades: float = 2.0) -> bool:
    """Whether positive `values` span more than `decades` powers of ten (a log axis reads better:
    a sparse net's sharp λ_max beside the flat moderate ratios)."""
    finite = [value for value in values if math.isfinite(value)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 10 ** decades


def error_bars(line: list[dict], column: str | None) -> list[float] | None:
    """The error bars of `column` along a line (NaN, e.g. no spread from a single data subset: none)."""
    if column is None:
        return None
    return [value if math.isfinite(value) else 0.0 for value in (float(row[column]) for row in line)]


def plot_flatness(rows: list[dict], title: str) -> Figure:
    """λ_max, tr H and κ against prune ratio, one solid line per (mode, method, net) (a colour per
    method, a marker per net) and beside it, in the same colour, its random-subset control dashed
    (mean ± std over the parameter subsets) and its same-support control dotted (the pruning methods'
    lines; NoPrune's is the dense net, as its dashed line); one legend below. λ_max, the model's and
    its same-support control's, is the mean ± std over the data subsets; the trace carries
    Hutchinson's standard error. Where some model's κ is undefined (an indefinite Hessian on the
    iterative path), the third panel shows λ_min instead (no controls). κ is drawn on a log axis,
    λ_max and the trace too where they span more than two decades."""
    figure, axes = new_figure(1, 3, aspect=0.36)
    has_condition = all(math.isfinite(row["condition_number"]) for row in rows)
    several = any(int(row["data_subsets"]) > 1 for row in rows)
    # (value, its error, random-subset control stem, same-support value, its error, axis label)
    panels = (("lambda_max_subsets_mean", "lambda_max_subsets_std", "control_lambda_max", "same_support_lambda_max_subsets_mean",
               "same_support_lambda_max_subsets_std", "λ_max, mean ± std\nover data subsets" if several else "largest eigenvalue λ_max"),
              ("trace", "trace_stderr", "control_trace", "same_support_trace", None, "trace of the Hessian"),
              ("condition_number", None, "control_condition", None, None, "condition number κ") if has_condition
              else ("lambda_min", None, None, None, None, "smallest eigenvalue λ_min"))
    methods = list(dict.fromkeys(method for _, method, _ in _lines(rows)))
    for (_, method, net), (name, line) in _lines(rows).items():
        ratios = [placed_ratio(row) for row in line]
        colour = method_color(method, methods.index(method))
        marker = NET_MARKERS[net % len(NET_MARKERS)]
        for axis, (column, error, control, same, same_error, _) in zip(axes, panels):
            axis.errorbar(ratios, [row[column] for row in line], yerr=error_bars(line, error),
                          color=colour, marker=marker, markersize=3, capsize=2, label=name)
            if control:
                axis.errorbar(ratios, [row[f"{control}_mean"] for row in line], yerr=error_bars(line, f"{control}_std"),
                              color=colour, linestyle="--", linewidth=0.8, marker="x", markersize=3, capsize=2)
            if same and method not in ("dense", CONTROL_METHOD):
                axis.errorbar(ratios, [row[same] for row in line], yerr=error_bars(line, same_error),
                              color=colour, linestyle=":", linewidth=1.0, marker="+", markersize=4, capsize=2)
    for axis, (column, _, control, same, _, label) in zip(axes, panels):
        prune_ratio_axis(axis)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        plotted = ([row[column] for row in rows] + ([row[f"{control}_mean"] for row in rows] if control else [])
                   + ([row[same] for row in rows] if same else []))
        if spans_decades(plotted) or (column == "condition_number" and any(value > 0 for value in plotted)):
            axis.set_yscale("log")
    figure.legend(*legend_columns(axes[0], _lines(rows)), loc="outside lower center", ncol=len(methods) + 1)
    figure_title(figure, title)
    return figure


def legend_columns(axis: Axes, lines: dict[tuple[str, str, int], tuple[str, list[dict]]]) -> tuple[list, list[str]]:
    """(handles, labels) of the legend below the flatness panels (`lines` as `_lines` gives them),
    laid out column by column as matplotlib fills a legend: a column per method, its nets one below
    the other, then a column saying what the dashed and the dotted lines are; shorter columns are
    padded with blank entries."""
    solid = {label: handle for handle, label in zip(*axis.get_legend_handles_labels())}
    columns: dict[str, list[tuple]] = {}
    for (_, method, _), (name, _) in lines.items():
        columns.setdefault(method, []).append((solid[name], name))
    keys = [(Line2D([], [], color="grey", linestyle="--", linewidth=0.8, marker="x", markersize=3), f"dashed: {CONTROL_LABEL}"),
            (Line2D([], [], color="grey", linestyle=":", linewidth=1.0, marker="+", markersize=4), f"dotted: {SAME_SUPPORT_LABEL}")]
    height = max(len(keys), *(len(column) for column in columns.values()))
    blank = (Line2D([], [], linestyle="none"), "")
    entries = [entry for column in [*columns.values(), keys] for entry in column + [blank] * (height - len(column))]
    return [handle for handle, _ in entries], [label for _, label in entries]


def plot_spectra(rows: list[dict], quadratures: dict[tuple, list], title: str, sigma_fraction: float) -> Figure:
    """One panel per (mode, method) and net (a row per net): the densities of the dense net (black)
    and of every pruned net, coloured by prune ratio (`placed_ratio`, colour bar)."""
    lines = _lines(rows)
    nets = sorted({net for _, _, net in lines})
    columns = list(dict.fromkeys((mode, method) for mode, method, _ in lines))
    figure, axes = new_figure(len(nets), len(columns), aspect=0.36 * len(nets) if len(columns) > 1 else 0.72 * len(nets),
                              wide=len(columns) > 1, squeeze=False, sharey=True)
    everything = [q for parts in quadratures.values() for q in parts]
    grid, sigma = density_grid(everything, sigma_fraction)
    colours = colormaps["viridis"]
    norm = Normalize(0.0, 1.0)
    for (mode, method, net), (name, line) in lines.items():
        axis = axes[nets.index(net), columns.index((mode, method))]
        for row in line:
            density = spectral_density(quadratures[(row["mode"], row["method"], int(row["net"]), row["step"])], grid, sigma)
            is_dense = row["method"] == "dense"
            axis.semilogy(grid, np.maximum(density, 1e-12), color="black" if is_dense else colours(norm(placed_ratio(row))),
                          linewidth=0.8, label="dense" if is_dense else None)
        axis.set_ylim(bottom=max(1e-8, axis.get_ylim()[0]))
        axis.set_xlabel("eigenvalue λ")
        axis.set_title(name)
        axis.grid(alpha=0.3)
    for row_axes in axes:
        row_axes[0].set_ylabel("spectral density ρ(λ)")
    axes[0, 0].legend(loc="upper right")
    figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=axes, label="prune ratio (%)",
                    format=lambda value, _: f"{100 * value:.0f}", shrink=0.9)
    figure_title(figure, f"{title} (Gaussian broadening σ = {sigma:.3g})")
    return figure


def write_outputs(folder: Path, label: str, table: list[dict], spectra: list[dict], sigma_fraction: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [save_text(folder, f"flatness_{label}.csv", rows_to_csv(table, COLUMNS)),
             save_text(folder, f"flatness_{label}.md", flatness_markdown(table)),
             save_text(folder, f"spectrum_{label}.csv", rows_to_csv(spectra))]
    if not table:
        return paths
    title = f"Hessian of the training loss on the surviving parameters: {label}"
    paths += save_figure(plot_flatness(table, title), folder, f"flatness_{label}")
    quadratures: dict[tuple, list] = {}
    for row in table:
        key = (row["mode"], row["method"], int(row["net"]), row["step"])
        points = [entry for entry in spectra if (entry["mode"], entry["method"], int(entry["net"]), entry["step"]) == key]
        vectors = sorted({entry["vector"] for entry in points})
        quadratures[key] = [(np.array([e["node"] for e in points if e["vector"] == v]), np.array([e["weight"] for e in points if e["vector"] == v]))
                            for v in vectors]
    paths += save_figure(plot_spectra(table, quadratures, title, sigma_fraction), folder, f"spectrum_{label}")
    return paths


def main(argv: list[str] | None = None) -> int:
    defaults = FlatnessSettings()
    arguments = parse_arguments(
        "Hessian flatness (λ_max, trace, condition number, spectral density) of dense and pruned nets", argv,
        **{
            "--subset": dict(type=float, default=defaults.subset, help="share of the training split to use (default %(default)s)"),
            "--ratios": dict(type=float, nargs="+", default=list(defaults.ratios),
                             help="prune ratios: per method, the steps closest to these (default %(default)s)"),
            "--all-steps": dict(action="store_true", help="every pruning step instead of --ratios"),
            "--nets": dict(type=int, nargs="+", default=list(defaults.nets), help="which nets (default %(default)s)"),
            "--repetition": dict(type=int, default=defaults.repetition, help="which repetition of the pruned nets (default %(default)s)"),
            "--seed": dict(type=int, default=defaults.seed, help="seed of the subset, probes and starting vectors"),
            "--exact-max": dict(type=int, default=defaults.exact_max, help="compute the full Hessian up to this many surviving parameters"),
            "--probes": dict(type=int, default=defaults.probes, help="Hutchinson probes (iterative path)"),
            "--slq-vectors": dict(type=int, default=defaults.slq_vectors, help="SLQ starting vectors (iterative path)"),
            "--slq-steps": dict(type=int, default=defaults.slq_steps, help="Lanczos steps per SLQ vector (iterative path)"),
            "--eig-tol": dict(type=float, default=defaults.eig_tol, help="eigenvalues ≤ eig_tol·λ_max are left out of the condition number"),
            "--sigma": dict(type=float, default=0.01, help="Gaussian broadening of the densities, as a share of the spectrum's spread"),
            "--chunk-size": dict(type=int, default=defaults.chunk_size, help="samples per forward pass"),
            "--hvp-batch": dict(type=int, default=defaults.hvp_batch, help="Hessian-vector products per backward pass"),
            "--no-cache-graph": dict(action="store_true", help="rebuild the gradient graph for every product (less memory)"),
            "--dtype": dict(choices=["float64", "float32"], default="float64"),
            "--control-subsets": dict(type=int, default=defaults.control_subsets,
                                      help="random parameter subsets per model size for the control: the dense net's "
                                           "Hessian restricted to as many parameters as the model keeps (default %(default)s; 0: none)"),
            "--data-subsets": dict(type=int, default=defaults.data_subsets,
                                   help="training-data subsets to measure λ_max on (the first with --seed, the others with "
                                        "seeds derived from it), for every model and its same-support control (default "
                                        "%(default)s; 1: the first only)"),
            "--no-same-support": dict(action="store_true",
                                      help="leave out the same-support control (the dense net's Hessian on exactly the "
                                           "pruned model's surviving parameters)"),
        },
    )
    settings = FlatnessSettings(
        subset=arguments.subset, ratios=tuple(arguments.ratios), all_steps=arguments.all_steps, nets=tuple(arguments.nets),
        repetition=arguments.repetition, seed=arguments.seed, exact_max=arguments.exact_max, probes=arguments.probes,
        slq_vectors=arguments.slq_vectors, slq_steps=arguments.slq_steps, eig_tol=arguments.eig_tol,
        chunk_size=arguments.chunk_size, hvp_batch=arguments.hvp_batch, cache_graph=not arguments.no_cache_graph,
        dtype=getattr(torch, arguments.dtype), control_subsets=arguments.control_subsets,
        data_subsets=arguments.data_subsets, same_support=not arguments.no_same_support)
    for run in find_runs(arguments.target, arguments.overrides):
        label, folder = run_label(run), output_folder(arguments.out, run)
        cache_name = f"flatness_{label}.cache.json"
        cache = read_cache(folder / cache_name)
        table, spectra = analyse_run(run, label, settings, cache, saved=cache_saver(folder, cache_name, cache))
        for path in write_outputs(folder, label, table, spectra, arguments.sigma):
            print(path)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(command(main))
