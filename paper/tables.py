"""Result tables: test NLL in nats (tabular sets) or bits/dim (images) with parameter
counts, the dense nets and the best pruned nets of every run, next to the published baselines.

    python -m paper.tables TARGET [key.path=value ...] [--out DIR]

TARGET is a run folder, a results root or a config file. Writes `results_table.md` and
`results_table.tex` into --out (default: `<TARGET>/paper` for a folder, else `paper/` next to the
runs) with two tables:

* per run: dense mean ± std over nets with its parameter count, the best pruned point (the
  (mode, method, prune ratio) with the lowest mean over nets; the NoPrune control is not a
  candidate) with its method, achieved prune ratio and non-zero parameter count, the NoPrune
  control at the same step (the same training budget, nothing pruned; "–" if the run has none), and
  the published FFJORD number of the dataset. Runs of any dataset
  appear here (toy sets with their own quantity, e.g. top-1 error for classifiers);
* against the published baselines, for the datasets that have them: one column per dataset, the
  baselines' rows, then ours (per dataset the run whose best pruned value is lowest).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from experiment.results import Run
from experiment.pruning.rules import CONTROL_METHOD
from experiment.report import Point, dense_point, method_name, pruned_points, quantity_of
from paper.common import command, markdown_table, quantity, save_text, write_over_runs

# Published baselines, test NLL / parameter count (tabular sets in nats, images in bits/dim; parameter
# counts as computed by the authors' size scripts, kept as published; also listed in
# docs/PAPER_SETTINGS.md). Missing entries (NAF on images) were not published.
BASELINES: dict[str, dict[str, tuple[float, str]]] = {
    "MADE": {"Power": (3.08, "5.9K"), "Gas": (-3.56, "6.2K"), "Hepmass": (20.98, "147K"), "Miniboone": (15.59, "164K"),
             "Bsds300": (-148.85, "621K"), "MNIST": (2.04, "1.20M"), "CIFAR10": (5.67, "11.5M")},
    "Real NVP": {"Power": (-0.17, "212K"), "Gas": (-8.33, "216K"), "Hepmass": (18.71, "5.46M"),
                 "Miniboone": (13.55, "5.68M"), "Bsds300": (-153.28, "22.3M"), "MNIST": (1.06, "16.1M"),
                 "CIFAR10": (3.49, "210M")},
    "MAF": {"Power": (-0.24, "59K"), "Gas": (-10.08, "62K"), "Hepmass": (17.70, "1.47M"), "Miniboone": (11.75, "1.64M"),
            "Bsds300": (-155.69, "6.21M"), "MNIST": (1.89, "12.0M"), "CIFAR10": (4.31, "115M")},
    "NAF": {"Power": (-0.62, "451K"), "Gas": (-11.96, "443K"), "Hepmass": (15.09, "10.7M"), "Miniboone": (8.86, "8.03M"),
            "Bsds300": (-157.73, "42.3M")},
    "SOS": {"Power": (-0.60, "212K"), "Gas": (-11.99, "256K"), "Hepmass": (15.15, "4.43M"), "Miniboone": (8.90, "6.87M"),
            "Bsds300": (-157.48, "9.09M"), "MNIST": (1.81, "17.2M"), "CIFAR10": (4.18, "67.1M")},
    "FFJORD": {"Power": (-0.46, "43K"), "Gas": (-8.59, "279K"), "Hepmass": (14.92, "547K"), "Miniboone": (10.43, "821K"),
               "Bsds300": (-157.40, "6.70M"), "MNIST": (0.99, "801K"), "CIFAR10": (3.40, "1.36M")},
}
DATASET_ORDER = ("Power", "Gas", "Hepmass", "Miniboone", "Bsds300", "MNIST", "CIFAR10")
DATASET_TITLES = {"Power": "POWER", "Gas": "GAS", "Hepmass": "HEPMASS", "Miniboone": "MINIBOONE", "Bsds300": "BSDS300",
                  "MNIST": "MNIST", "CIFAR10": "CIFAR-10"}
UNITS = {"nll": "NLL (nats)", "bits_per_dim": "bits/dim"}


@dataclass(frozen=True)
class TableEntry:
    """One run in the tables: its dense point, best pruned point and the NoPrune control at the best
    point's step (plotted units)."""

    dataset: str
    network: str
    run_id: str
    metric: str
    dense: Point | None
    best: Point | None
    control: Point | None = None

    @property
    def unit(self) -> str:
        return UNITS.get(self.metric, quantity_of(self.metric)[0].removeprefix("test "))

    @property
    def decimals(self) -> int:
        return 3 if self.metric in UNITS else 2


def table_entry(dataset: str, network: str, run_id: str, metric: str, rows: list[dict], transform=None) -> TableEntry:
    """The table entry of a run from its metrics rows; `transform` defaults to the metric's own
    (e.g. top-1 accuracy → error in %)."""
    transform = transform or quantity_of(metric)[1]
    lines = pruned_points(rows, metric, transform)
    points = [point for (_, method), line in lines.items() if method != CONTROL_METHOD for point in line]
    best = min(points, key=lambda point: point.value_mean, default=None)
    control = None
    if best is not None:
        same_step = [point for point in lines.get((best.mode, CONTROL_METHOD), []) if point.target_prune_ratio == best.target_prune_ratio]
        control = same_step[0] if same_step else None
    return TableEntry(dataset, network, run_id, metric, dense_point(rows, metric, transform), best, control)


def run_entry(run: Run) -> TableEntry:
    column, _, transform = quantity(run)
    network = run.settings.network
    return table_entry(network.dataset, network.name, run.path.name, column, run.rows, transform)


def sort_entries(entries: list[TableEntry]) -> list[TableEntry]:
    def key(entry: TableEntry):
        order = DATASET_ORDER.index(entry.dataset) if entry.dataset in DATASET_ORDER else len(DATASET_ORDER)
        return order, entry.dataset, entry.network, entry.run_id
    return sorted(entries, key=key)


# ------------------------------------------------------------------------------------ formatting


def compact_count(count: float) -> str:
    """43325 → 43.3K, 6698666 → 6.7M (the published tables' style)."""
    if count >= 1e6:
        return f"{count / 1e6:.3g}M"
    if count >= 1e3:
        return f"{count / 1e3:.3g}K"
    return f"{count:.0f}"


def _mean_std(point: Point, decimals: int) -> str:
    return f"{point.value_mean:.{decimals}f} ± {point.value_std:.{decimals}f}"


def _published(dataset: str, model: str = "FFJORD") -> str:
    if dataset not in BASELINES[model]:
        return "–"
    value, params = BASELINES[model][dataset]
    return f"{value:.2f} / {params}"


def per_run_rows(entries: list[TableEntry]) -> tuple[list[str], list[list[str]]]:
    header = ["dataset", "network", "run", "quantity", "dense (mean ± std)", "nets", "params", "best pruned (mean ± std)",
              "method", "prune ratio", "non-zero params", "NoPrune, same step", "FFJORD (published)"]
    rows = []
    for entry in sort_entries(entries):
        dense, best = entry.dense, entry.best
        rows.append([
            DATASET_TITLES.get(entry.dataset, entry.dataset), entry.network, entry.run_id, entry.unit,
            _mean_std(dense, entry.decimals) if dense else "–", str(dense.num_nets) if dense else "–",
            f"{dense.num_params:,.0f}" if dense else "–",
            _mean_std(best, entry.decimals) if best else "–",
            (method_name(best.method) + ("" if best.mode == "cascade" else f" ({best.mode})")) if best else "–",
            f"{100 * best.prune_ratio_mean:.1f}%" if best else "–",
            f"{best.nonzero_params_mean:,.0f}" if best else "–",
            _mean_std(entry.control, entry.decimals) if entry.control else "–",
            _published(entry.dataset) if entry.dataset in BASELINES["FFJORD"] else "–",
        ])
    return header, rows


def comparison_rows(entries: list[TableEntry]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, notes) of the table against the published baselines (empty without such
    datasets); the lowest value of each column is marked with a leading '*'."""
    datasets = [dataset for dataset in DATASET_ORDER if any(entry.dataset == dataset for entry in entries)]
    if not datasets:
        return [], [], []
    ours: dict[str, TableEntry] = {}
    for dataset in datasets:
        candidates = [entry for entry in entries if entry.dataset == dataset and (entry.best or entry.dense)]
        if candidates:
            ours[dataset] = min(candidates, key=lambda entry: (entry.best or entry.dense).value_mean)
    values: dict[tuple[str, str], tuple[float, str]] = {}  # (row, dataset) → (value, cell text)
    for model, published in BASELINES.items():
        for dataset in datasets:
            if dataset in published:
                values[(model, dataset)] = (published[dataset][0], _published(dataset, model))
    for dataset, entry in ours.items():
        if entry.dense:
            values[("Ours, dense", dataset)] = (entry.dense.value_mean, f"{entry.dense.value_mean:.{entry.decimals}f} / "
                                                f"{compact_count(entry.dense.num_params)}")
        if entry.best:
            values[("Ours, pruned", dataset)] = (
                entry.best.value_mean, f"{entry.best.value_mean:.{entry.decimals}f} / "
                f"{compact_count(entry.best.nonzero_params_mean)} (PR {100 * entry.best.prune_ratio_mean:.0f}%)")
    best_in_column = {dataset: min(value for (_, column), (value, _) in values.items() if column == dataset)
                      for dataset in datasets}
    header = ["model"] + [DATASET_TITLES[dataset] for dataset in datasets]
    rows = []
    for model in [*BASELINES, "Ours, dense", "Ours, pruned"]:
        if not any((model, dataset) in values for dataset in datasets):
            continue
        cells = []
        for dataset in datasets:
            if (model, dataset) not in values:
                cells.append("–")
                continue
            value, text = values[(model, dataset)]
            cells.append(("*" if value == best_in_column[dataset] else "") + text)
        rows.append([model, *cells])
    notes = [f"{DATASET_TITLES[dataset]}: ours = {entry.network}, run {entry.run_id}; pruned = "
             f"{method_name(entry.best.method) if entry.best else '–'}"
             for dataset, entry in ours.items()]
    return header, rows, notes


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A table whose cells marked with a leading '*' are set in bold."""
    return markdown_table(header, [[f"**{cell[1:]}**" if cell.startswith("*") else cell for cell in row] for row in rows])


def markdown_tables(entries: list[TableEntry]) -> str:
    """Both tables as markdown."""
    header, rows = per_run_rows(entries)
    lines = ["# Results", "", "## Per run", "",
             "Test values, mean ± std over nets. Best pruned: the (mode, method, prune ratio) with the lowest mean; "
             "prune ratio achieved over all parameters (mean over nets).", "", *_markdown(header, rows)]
    header, rows, notes = comparison_rows(entries)
    if header:
        lines += ["", "## Against published baselines", "",
                  "Test NLL in nats (tabular) or bits/dim (images) / parameter count (non-zero parameters for pruned "
                  "nets). Baselines as published; the lowest value per column in bold.", "",
                  *_markdown(header, rows), "", *[f"* {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for plain, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(plain, escaped)
    return text.replace("±", r"$\pm$").replace("–", "--").replace("δ", r"$\delta$")


def _tex_cell(cell: str) -> str:
    bold = cell.startswith("*")
    cell = _tex_escape(cell[1:] if bold else cell)
    cell = " ".join(f"${word}$" if word.startswith("-") and word[1:2].isdigit() else word for word in cell.split(" "))
    return rf"\textbf{{{cell}}}" if bold else cell


def _latex(header: list[str], rows: list[list[str]], caption: str) -> list[str]:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{_tex_escape(caption)}}}",
             r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule",
             " & ".join(_tex_escape(cell) for cell in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex_cell(cell) for cell in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return lines


def latex_tables(entries: list[TableEntry]) -> str:
    """Both tables as LaTeX (booktabs)."""
    header, rows = per_run_rows(entries)
    lines = ["% Generated by python -m paper.tables; needs \\usepackage{booktabs}.",
             *_latex(header, rows, "Test values per run, mean ± std over nets: dense and best pruned.")]
    header, rows, notes = comparison_rows(entries)
    if header:
        lines += ["", *_latex(header, rows, "Test NLL (nats) or bits/dim / parameter count against published baselines. "
                                            + "; ".join(notes) + ".")]
    return "\n".join(lines) + "\n"


def write_tables(runs: list[Run], folder: Path) -> list[Path]:
    entries = [run_entry(run) for run in runs]
    folder.mkdir(parents=True, exist_ok=True)
    return [save_text(folder, "results_table.md", markdown_tables(entries)),
            save_text(folder, "results_table.tex", latex_tables(entries))]


def main(argv: list[str] | None = None) -> int:
    return write_over_runs(__doc__.split("\n\n")[0], argv, write_tables)


if __name__ == "__main__":
    sys.exit(command(main))
