"""Mode collapse of pruned 2-D flows (SPEC §8).

    python -m paper.mode_collapse TARGET [--out DIR] [--num-samples 20000] [--min-hits N | --min-share 0.01]

For flows on ToyGaussians / ToyGaussiansSpiral (other runs are skipped with a note):

* the modes are the per-label mean μ_j and covariance Σ_j of the run's training data (the split the
  run trained on, `Run.load_data()["train"]`);
* every model of the run (all nets, repetitions and prune steps, the dense nets included) draws
  `--num-samples` samples (prior N(0, I) through the ODE, seeded with `--seed`, the same prior draws
  for every model);
* each sample is assigned to its nearest mode by the Mahalanobis distance
  d_j(x) = sqrt((x − μ_j)ᵀ Σ_j⁻¹ (x − μ_j)), i.e. how many standard deviations of mode j the sample
  lies from its centre in the sample's direction;
* for k in {0.25, 0.5, 1, 2, 3, 5, 7, 10, 15, 20}: `share_within_k` = share of all samples whose
  distance to their nearest mode is at most k (non-finite samples count as outside), and
  `modes_hit` = how many modes are the nearest mode of at least `min_hits` samples within k of
  them. The default threshold is 1% of the samples a mode would get if all modes were equally
  likely, min_hits = ceil(0.01 · num_samples / num_modes) (34 samples for 20,000 samples and 6
  modes), so a few stray samples do not count as covering a mode; `--min-hits` sets it directly.

Writes `mode_collapse_<run>.csv` (one row per model and k), `mode_collapse_<run>.md` (means ± stds
over nets per method and step) and `mode_collapse_<run>.png/.pdf` (share within k and modes hit at
k = `--figure-k` vs prune ratio, one line per method, mean ± std over nets). The per-model results
are cached in `mode_collapse_<run>.cache.json` next to them and reused while the checkpoint and the
settings are unchanged.
"""

from __future__ import annotations

import json
import math
import sys

import matplotlib.pyplot as plt
import numpy as np
import torch

from experiment.results import Run, model_name
from experiment.results.tree import rows_to_csv
from paper.common import find_runs, output_folder, parse_arguments, run_label, save_figure, save_text
from paper.samples_2d import METHOD_LABELS, is_2d_run, sample_flow

KS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0)
MODE_DATASETS = ("ToyGaussians", "ToyGaussiansSpiral")
DEFAULT_MIN_SHARE = 0.01


# ------------------------------------------------------------------------------ the computation


def mode_statistics(x_train: np.ndarray, y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label mean [M, D] and covariance [M, D, D] (unbiased) of labelled data, labels in
    sorted order."""
    x_train, y_train = np.asarray(x_train, dtype=np.float64), np.asarray(y_train)
    labels = np.unique(y_train)
    means = np.stack([x_train[y_train == label].mean(0) for label in labels])
    covariances = np.stack([np.atleast_2d(np.cov(x_train[y_train == label], rowvar=False)) for label in labels])
    return means, covariances


def mahalanobis_distances(samples: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """d[n, j] = sqrt((x_n − μ_j)ᵀ Σ_j⁻¹ (x_n − μ_j)); +inf for non-finite samples."""
    samples = np.asarray(samples, dtype=np.float64)
    inverse = np.linalg.inv(np.asarray(covariances, dtype=np.float64))
    difference = samples[:, None, :] - np.asarray(means, dtype=np.float64)[None]
    squared = np.einsum("nmi,mij,nmj->nm", difference, inverse, difference)
    distances = np.sqrt(np.maximum(squared, 0.0))
    return np.where(np.isfinite(distances), distances, np.inf)


def nearest_modes(samples: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest mode by Mahalanobis distance, that distance) per sample."""
    distances = mahalanobis_distances(samples, means, covariances)
    nearest = distances.argmin(1)
    return nearest, distances[np.arange(len(distances)), nearest]


def default_min_hits(num_samples: int, num_modes: int, min_share: float = DEFAULT_MIN_SHARE) -> int:
    """ceil(min_share · num_samples / num_modes), at least 1: the samples a mode needs to count as hit."""
    return max(1, math.ceil(min_share * num_samples / num_modes - 1e-9))


def coverage(samples: np.ndarray, means: np.ndarray, covariances: np.ndarray, ks=KS,
             min_hits: int = 1) -> dict[float, tuple[float, int]]:
    """k → (share of the samples within k of their nearest mode, number of modes that are the
    nearest mode of at least `min_hits` samples within k of them)."""
    nearest, distance = nearest_modes(samples, means, covariances)
    result = {}
    for k in ks:
        within = distance <= k
        counts = np.bincount(nearest[within], minlength=len(means))
        share = float(within.mean()) if len(within) else 0.0
        result[float(k)] = (share, int((counts >= min_hits).sum()))
    return result


# ------------------------------------------------------------------------------ over a run


def fits(run: Run) -> str | None:
    """Why a run cannot be analysed, or None if it can."""
    if is_2d_run(run) != "cnf":
        return f"not a 2-D flow ({run.config['network']['name']})"
    if run.config["network"]["dataset"] not in MODE_DATASETS:
        return f"no Gaussian modes in {run.config['network']['dataset']} (only {', '.join(MODE_DATASETS)})"
    return None


def checkpoint_signature(run: Run, row: dict) -> list:
    stat = run.folder.checkpoint(model_name(row)).stat()
    return [stat.st_size, stat.st_mtime_ns]


def run_coverage(run: Run, num_samples: int, seed: int, ks=KS, min_hits: int | None = None,
                 min_share: float = DEFAULT_MIN_SHARE, cache: dict | None = None, log=print) -> list[dict]:
    """One row per (model of the run, k): run, method, mode, net, repetition, step, target and
    achieved prune ratio, k, share_within_k, modes_hit, num_modes, min_hits. `cache` (a dict, updated
    in place) holds per-model results from earlier calls."""
    x_train, y_train = (tensor.numpy() for tensor in run.load_data()["train"])
    means, covariances = mode_statistics(x_train, y_train)
    hits_needed = min_hits if min_hits is not None else default_min_hits(num_samples, len(means), min_share)
    settings = {"num_samples": num_samples, "seed": seed, "ks": [float(k) for k in ks], "min_hits": hits_needed,
                "means": means.round(12).tolist(), "covariances": covariances.round(12).tolist()}
    cache = {} if cache is None else cache
    label = run_label(run)
    rows = []
    for row in run.rows:
        name = model_name(row)
        entry = cache.get(name)
        signature = checkpoint_signature(run, row)
        if entry is None or entry["settings"] != settings or entry["checkpoint"] != signature:
            log(f"{label}: sampling {name}")
            samples = sample_flow(run.load_model(row), num_samples, seed)
            result = coverage(samples, means, covariances, ks, hits_needed)
            entry = {"settings": settings, "checkpoint": signature,
                     "coverage": [[k, share, hit] for k, (share, hit) in result.items()]}
            cache[name] = entry
        for k, share, hit in entry["coverage"]:
            rows.append({
                "run": label, "method": row["method"], "mode": row["mode"], "net": int(row["net"]),
                "repetition": int(row["repetition"]), "step": int(row["step"]),
                "target_prune_ratio": float(row["target_prune_ratio"]), "prune_ratio": float(row["prune_ratio"]),
                "k": float(k), "share_within_k": float(share), "modes_hit": int(hit), "num_modes": len(means),
                "min_hits": hits_needed,
            })
    return rows


def summarize(rows: list[dict], k: float) -> dict[tuple[str, str], list[tuple]]:
    """{(mode, method): [(mean PR, mean share, std share, mean hits, std hits) per step]} at `k`,
    means and stds over nets and repetitions, the dense nets as the first point of every method."""
    at_k = [row for row in rows if math.isclose(row["k"], k)]
    dense = [row for row in at_k if row["method"] == "dense"]
    methods = sorted({(row["mode"], row["method"]) for row in at_k if row["method"] != "dense"}) or [("train", "dense")]

    def point(group: list[dict]) -> tuple:
        shares = [row["share_within_k"] for row in group]
        hits = [row["modes_hit"] for row in group]
        return (float(np.mean([row["prune_ratio"] for row in group])), float(np.mean(shares)), float(np.std(shares)),
                float(np.mean(hits)), float(np.std(hits)))

    summary = {}
    for key in methods:
        points = [point(dense)] if dense else []
        if key[1] != "dense":
            method_rows = [row for row in at_k if (row["mode"], row["method"]) == key]
            for step in sorted({row["step"] for row in method_rows}):
                points.append(point([row for row in method_rows if row["step"] == step]))
        summary[key] = points
    return summary


def method_label(key: tuple[str, str], keys) -> str:
    label = METHOD_LABELS.get(key[1], key[1])
    return label + (f" ({key[0]})" if len({mode for mode, _ in keys if mode != "train"}) > 1 else "")


def markdown_table(rows: list[dict], ks=KS) -> str:
    """Per method and step: mean PR, then share within k and modes hit per k, mean ± std over nets."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"] != "dense", row["mode"], row["method"], row["step"]), []).append(row)
    num_modes = rows[0]["num_modes"] if rows else 0
    min_hits = rows[0]["min_hits"] if rows else 0
    lines = [
        f"Mode coverage of {rows[0]['run'] if rows else ''}: {num_modes} modes; share of samples within k "
        f"(Mahalanobis) of their nearest mode, and modes hit (≥ {min_hits} samples within k); "
        "mean ± std over nets.",
        "",
        "| method | step | PR | " + " | ".join(f"k={k:g}" for k in ks) + " |",
        "|---|---|---|" + "---|" * len(ks),
    ]
    for (_, mode, method, step), group in sorted(groups.items()):
        cells = []
        for k in ks:
            at_k = [row for row in group if math.isclose(row["k"], k)]
            shares = [row["share_within_k"] for row in at_k]
            hits = [row["modes_hit"] for row in at_k]
            cells.append(f"{np.mean(shares):.3f}±{np.std(shares):.3f} ({np.mean(hits):.1f})" if at_k else "")
        ratio = np.mean([row["prune_ratio"] for row in group])
        lines.append(f"| {METHOD_LABELS.get(method, method)} | {step} | {ratio:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: share within k ± std (mean modes hit)."]
    return "\n".join(lines) + "\n"


def coverage_figure(rows: list[dict], k: float = 1.0, title: str = ""):
    """Share within k and modes hit at k vs prune ratio, one line per method, mean ± std over nets.
    Returns (figure, axes [2])."""
    summary = summarize(rows, k)
    num_modes = rows[0]["num_modes"] if rows else 0
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, points in summary.items():
        if not points:
            continue
        ratio, share, share_std, hits, hits_std = (np.array(values) for values in zip(*points))
        label = method_label(key, summary)
        line, = axes[0].plot(ratio, share, marker="o", markersize=3, label=label)
        axes[0].fill_between(ratio, share - share_std, share + share_std, color=line.get_color(), alpha=0.2)
        axes[1].plot(ratio, hits, marker="o", markersize=3, label=label, color=line.get_color())
        axes[1].fill_between(ratio, hits - hits_std, hits + hits_std, color=line.get_color(), alpha=0.2)
    axes[0].set_ylabel(f"share of samples within k={k:g} of nearest mode")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel(f"modes hit at k={k:g}")
    axes[1].axhline(num_modes, color="grey", linestyle="--", linewidth=0.8)
    axes[1].set_ylim(-0.2, num_modes + 0.5)
    for ax in axes:
        ax.set_xlabel("prune ratio")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure, axes


# ------------------------------------------------------------------------------ script


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(
        __doc__.split("\n\n")[0], argv,
        **{
            "--num-samples": dict(type=int, default=20_000, help="samples per model (default 20000)"),
            "--seed": dict(type=int, default=0, help="seed of the prior draws (the same for every model)"),
            "--min-hits": dict(type=int, default=None, help="samples within k a mode needs to count as hit "
                                                            "(default: ceil(min-share · samples / modes))"),
            "--min-share": dict(type=float, default=DEFAULT_MIN_SHARE,
                                help="default threshold as a share of the samples expected per mode (0.01)"),
            "--figure-k": dict(type=float, default=1.0, help="k shown in the figure (default 1)"),
            "--threads": dict(type=int, default=1, help="torch CPU threads (default 1)"),
        },
    )
    torch.set_num_threads(arguments.threads)
    for run in find_runs(arguments.target):
        reason = fits(run)
        if reason:
            print(f"{run.path}: {reason}; skipped")
            continue
        if not run.rows:
            print(f"{run.path}: no trained models yet; skipped")
            continue
        folder = output_folder(arguments.out, run)
        label = run_label(run)
        cache_path = folder / f"mode_collapse_{label}.cache.json"
        try:
            cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        except (OSError, ValueError):
            cache = {}
        ks = sorted(set(KS) | {arguments.figure_k})
        rows = run_coverage(run, arguments.num_samples, arguments.seed, ks, arguments.min_hits, arguments.min_share, cache)
        save_text(folder, cache_path.name, json.dumps(cache))
        written = [save_text(folder, f"mode_collapse_{label}.csv", rows_to_csv(rows)),
                   save_text(folder, f"mode_collapse_{label}.md", markdown_table(rows, ks))]
        figure, _ = coverage_figure(rows, arguments.figure_k, f"{label}: mode coverage")
        written += save_figure(figure, folder, f"mode_collapse_{label}")
        for path in written:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
