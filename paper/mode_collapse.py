"""Mode collapse of pruned 2-D flows, measured against the true mixture.

    python -m paper.mode_collapse TARGET [key.path=value ...] [--out DIR] [--num-samples 20000] [--hit-fraction 0.75] [--max-tv 0.1]

The true mixture, the measures, the thresholds and why they are what they are:
`experiment.analysis.mode_collapse`. A model passes when every mode is hit at k = 2 and the TV
distance at k = 3 is at most `--max-tv` (0.1). Runs other than flows on ToyGaussians / ToyGaussiansSpiral are
skipped with a note.

Writes `mode_collapse_<run>.csv` (one row per model and k), `mode_collapse_<run>.md` (a headline
table with the verdict per method and prune ratio, and the share within k for every k with the true
mixture's row; means ± stds over nets) and `mode_collapse_<run>.png/.pdf` (share within k =
`--figure-k` with the true mixture as a dashed line, TV distance at 3 std, modes hit at 2 std, vs
prune ratio, one line per method). Points are placed and grouped by the step's prune ratio
(`experiment.report.step_prune_ratio`: the target ratio, or for NoPrune the ratio the pruning methods
reach at that step). The per-model shares are cached in `mode_collapse_<run>.cache.json` next to them,
written after each model (a killed analysis keeps what it measured), and reused while the checkpoint
and the sampling settings are unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch

from experiment.analysis.mode_collapse import (
    HIT_FRACTION, HIT_K, KS, MAX_TV, TV_K, at, method_groups, run_measures, summarize, true_share_within,
    unmeasurable_reason,
)
from experiment.report import is_plotted, line_label, method_color, method_name, prune_ratio_axis
from experiment.files import rows_to_csv
from paper.common import (
    command, cache_saver, figure_title, find_runs, markdown_table, new_figure, output_folder, parse_arguments, read_cache, run_label,
    save_figure, save_text,
)


def mean_std(values: np.ndarray, digits: int = 3) -> str:
    return f"{values.mean():.{digits}f}±{values.std():.{digits}f}"


def collapse_markdown(rows: list[dict], ks: Sequence[float] = KS, figure_k: float = 1.0,
                      max_tv: float = MAX_TV) -> str:
    """Per method and step prune ratio: the headline measures with the verdict, then the share
    within k for every k under the true mixture's; means ± stds over nets (`rows` not empty)."""
    groups = method_groups(rows)
    run, num_modes, hit_fraction = rows[0]["run"], rows[0]["num_modes"], rows[0]["hit_fraction"]
    headline = [
        [method_name(key[2]), f"{key[3]:.3f}", f"{at(group, HIT_K, 'prune_ratio').mean():.3f}",
         mean_std(at(group, figure_k, "share_within_k")), mean_std(at(group, TV_K, "tv_distance")),
         f"{mean_std(at(group, HIT_K, 'modes_hit'), 1)} / {num_modes}",
         f"{int(at(group, HIT_K, 'passes').sum())}/{len(at(group, HIT_K, 'passes'))}"]
        for key, group in groups.items()]
    shares = [["true mixture", "", *(f"{true_share_within(rows, k):.3f}" for k in ks)]]
    shares += [[method_name(key[2]), f"{key[3]:.3f}", *(mean_std(at(group, k, "share_within_k")) for k in ks)]
               for key, group in groups.items()]
    lines = [
        f"Mode collapse of {run}: {num_modes} modes (per-label Gaussians of the training data, weighted by "
        "label share); the true mixture is the reference. Mean ± std over nets.",
        f"A model passes when all modes are hit at k = {HIT_K:g} (each gets ≥ {hit_fraction:g} × the share the true "
        f"mixture puts within k = {HIT_K:g} std of it) and the TV distance to the true mixture over the modes plus an "
        f"off-mode bin (beyond k = {TV_K:g} std of every mode) is ≤ {max_tv:g}.",
        "",
        *markdown_table(["method", "PR (step)", "PR (achieved)",
                         f"share within {figure_k:g} std (true {true_share_within(rows, figure_k):.3f})",
                         f"TV at {TV_K:g} std", f"modes hit at {HIT_K:g} std", "passes"], headline),
        "",
        "Share of samples within k std (Mahalanobis) of any mode:",
        "",
        *markdown_table(["method", "PR (step)", *(f"k={k:g}" for k in ks)], shares),
    ]
    return "\n".join(lines) + "\n"


def collapse_figure(rows: list[dict], title: str, figure_k: float = 1.0, max_tv: float = MAX_TV):
    """Share within `figure_k` (true mixture dashed), TV distance at `TV_K` (threshold dashed) and
    modes hit at `HIT_K` (all modes dashed) vs step prune ratio, one line per method, mean ± std
    over nets (`rows` not empty; the caller leaves out steps outside the plotted range); one legend
    below the panels. Returns (figure, axes [3])."""
    num_modes, hit_fraction = rows[0]["num_modes"], rows[0]["hit_fraction"]
    panels = [
        (figure_k, "share_within_k", f"share within {figure_k:g} std\nof a mode",
         true_share_within(rows, figure_k), "true mixture", (-0.02, 1.02)),
        (TV_K, "tv_distance", f"TV distance at {TV_K:g} std\nto the true mixture",
         max_tv, f"pass threshold (TV ≤ {max_tv:g})", (-0.02, 1.02)),
        (HIT_K, "modes_hit", f"modes hit at {HIT_K:g} std\n(≥ {hit_fraction:g} of expected share)",
         num_modes, "all modes", (-0.2, num_modes + 0.5)),
    ]
    figure, axes = new_figure(1, 3, aspect=0.36)
    for ax, (k, column, ylabel, reference, reference_label, ylim) in zip(axes, panels):
        summary = summarize(rows, k, column)
        for index, (key, points) in enumerate(summary.items()):
            ratio, mean, std = (np.array(values) for values in zip(*points))
            colour = method_color(key[1], index)
            ax.plot(ratio, mean, color=colour, marker="o", markersize=3,
                    label=line_label(*key, {mode for mode, _ in summary}))
            ax.fill_between(ratio, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        ax.axhline(reference, color="black", linestyle="--", linewidth=0.8, label="dashed: " + " / ".join(
            label for _, _, _, _, label, _ in panels))
        ax.set_ylabel(ylabel)
        ax.set_ylim(*ylim)
        prune_ratio_axis(ax)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    figure_title(figure, title)
    return figure, axes


# ------------------------------------------------------------------------------ script


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(
        __doc__.split("\n\n")[0], argv,
        **{
            "--num-samples": dict(type=int, default=20_000, help="samples per model (default 20000)"),
            "--seed": dict(type=int, default=0, help="seed of the prior draws (the same for every model)"),
            "--hit-fraction": dict(type=float, default=HIT_FRACTION,
                                   help=f"share of a mode's expected share within k it needs to count as hit "
                                        f"(default {HIT_FRACTION})"),
            "--max-tv": dict(type=float, default=MAX_TV,
                             help=f"largest TV distance at {TV_K:g} std a passing model may have (default {MAX_TV})"),
            "--figure-k": dict(type=float, default=1.0, help="k of the share panel of the figure (default 1)"),
            "--threads": dict(type=int, default=1, help="torch CPU threads (default 1)"),
        },
    )
    torch.set_num_threads(arguments.threads)
    for run in find_runs(arguments.target, arguments.overrides):
        reason = unmeasurable_reason(run)
        if reason:
            print(f"{run.path}: {reason}; skipped")
            continue
        if not run.rows:
            print(f"{run.path}: no trained models yet; skipped")
            continue
        folder = output_folder(arguments.out, run)
        label = run_label(run)
        cache_name = f"mode_collapse_{label}.cache.json"
        cache = read_cache(folder / cache_name)
        ks = sorted(set(KS) | {arguments.figure_k})
        rows = run_measures(run, label, arguments.num_samples, arguments.seed, ks, arguments.hit_fraction,
                            arguments.max_tv, cache, cache_saver(folder, cache_name, cache))
        written = [save_text(folder, f"mode_collapse_{label}.csv", rows_to_csv(rows)),
                   save_text(folder, f"mode_collapse_{label}.md",
                             collapse_markdown(rows, ks, arguments.figure_k, arguments.max_tv))]
        plotted = [row for row in rows if row["method"] == "dense"
                   or is_plotted(run.settings.experiments.plotting, row["step_prune_ratio"])]
        figure, _ = collapse_figure(plotted, f"{label}: mode collapse", arguments.figure_k, arguments.max_tv)
        written += save_figure(figure, folder, f"mode_collapse_{label}")
        for key, group in method_groups(rows).items():
            verdicts = at(group, HIT_K, "passes")
            print(f"{label}: {method_name(key[2])} at PR {key[3]:.3f}: "
                  f"{int(verdicts.sum())}/{len(verdicts)} models pass")
        for path in written:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(command(main))
