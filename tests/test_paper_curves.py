"""The paper's curve, sweep and table scripts (paper/README.md) on a real results tree: two tiny ToyMoons
classifier runs that differ in their activation (a sweep config with two customizations, both
pruning methods over two ratios in cascade mode), one of them also pruned by WT in retrain mode, so
its run folder holds rows of two modes.

* prune_curves writes its figure and a CSV whose points are the means/stds over nets computed here
  straight from metrics.csv (classifier: error = 100·(1 − top1_acc)), the dense nets at PR 0;
* sweeps' prune potential equals a hand computation with δ = 0.5 points, runs labelled by what
  differs between them;
* the table builder puts the published baselines next to our numbers (hand-made POWER rows), and
  the tables CLI runs end to end on the toy runs;
* paper.all writes the prune curves of every run and calls the other figure scripts where they fit.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

import math

import numpy as np
import pytest
import yaml

from conftest import NODE_BASE, REPO, describe, run_cli, run_process, write_yaml
from experiment.plan import sweep_labels
from experiment.analysis.prune_potential import delta_of, prune_potential
from experiment.analysis.references import ControlDifference, differences_to_control, mixture_floor_nll
from experiment.config import load_configs
from experiment.report import Point, method_color, pruned_points
from experiment.results import Run
from experiment.results.rebuild import load_run_data
from experiment.files import rows_to_csv
from paper import all as paper_all
from paper import prune_curves, sweeps, tables
from paper.common import bulk_range, run_label

pytestmark = pytest.mark.slow  # makes real runs and every figure of them

NETWORKS = ("node_l2_h8_tanh_da", "node_l2_h8_sigmoid_da")
KEEP = [0.5, 0.25]


def base_config(results: Path, **experiments) -> dict:
    return {
        "file": str(NODE_BASE),
        "network": {"name": NETWORKS[0], "dataset": "ToyMoons"},
        "training": {"numEpochs": 2},
        "experiments": {"numNets": 2, "methods": ["FilterThresNet", "ThresNet"], "mode": "cascade",
                        "spacing": [{"type": "manual", "values": KEEP}], **experiments},
        "directories": {"results": str(results), "training_data": str(results.parent / "training_data")},
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """(results root, sweep config, {network name: run folder}) of the real tiny runs."""
    folder = tmp_path_factory.mktemp("paper_tree")
    results = folder / "results"
    sweep = write_yaml(folder / "sweep.yaml", {
        **base_config(results), "customizations": [{"key": ["network", "name"], "value": name} for name in NETWORKS]})
    process = run_cli(sweep, cwd=folder)
    assert process.returncode == 0, describe(process)
    # the tanh run again in retrain mode: the same run folder (the run id ignores `experiments`)
    retrain = write_yaml(folder / "retrain.yaml", base_config(results, mode="retrain", methods=["ThresNet"]))
    process = run_cli(retrain, cwd=folder)
    assert process.returncode == 0, describe(process)
    runs = {config.parent.parent.name: config.parent for config in results.glob("*/*/*/config.yaml")}
    assert sorted(runs) == sorted(NETWORKS)
    return results, sweep, runs


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def error(row: dict) -> float:
    return 100.0 * (1.0 - float(row["top1_acc"]))


def expected_points(run: Path) -> dict[tuple[str, str, float], tuple[float, float, float, int]]:
    """{(method, mode, target PR): (mean achieved PR, mean error, std error, nets)} from metrics.csv
    (one repetition per net, so the mean over a net's repetitions is its one value)."""
    groups = defaultdict(list)
    for row in metrics(run):
        groups[(row["method"], row["mode"], float(row["target_prune_ratio"]))].append(row)
    return {key: (np.mean([float(row["prune_ratio"]) for row in rows]), np.mean([error(row) for row in rows]),
                  np.std([error(row) for row in rows]), len({row["net"] for row in rows}))
            for key, rows in groups.items()}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


# ------------------------------------------------------------------------------------ prune curves


def test_prune_curves_csv_holds_the_means_and_stds_over_nets(tree, tmp_path):
    results, _, runs = tree
    assert prune_curves.main([str(results), "--out", str(tmp_path)]) == 0
    for name, run in runs.items():
        stem = f"prune_curve_ToyMoons_{name}_{run.name}"
        for suffix in ("png", "pdf", "csv"):
            assert (tmp_path / f"{stem}.{suffix}").stat().st_size > 0
        rows = read_csv(tmp_path / f"{stem}.csv")
        assert list(rows[0]) == ["method", "mode", "target_prune_ratio", "prune_ratio_mean", "value_mean", "value_std",
                                 "num_nets"]
        expected = expected_points(run)
        got = {(row["method"], row["mode"], float(row["target_prune_ratio"])):
               (float(row["prune_ratio_mean"]), float(row["value_mean"]), float(row["value_std"]), int(row["num_nets"]))
               for row in rows}
        assert got.keys() == expected.keys()
        for key, point in expected.items():
            assert got[key] == pytest.approx(point, rel=1e-12, abs=1e-12), key
        dense = [row for row in rows if row["method"] == "dense"]
        assert len(dense) == 1 and rows[0] == dense[0]
        assert float(dense[0]["prune_ratio_mean"]) == 0.0 and float(dense[0]["target_prune_ratio"]) == 0.0
        modes = {row["mode"] for row in rows if row["method"] != "dense"}
        assert modes == ({"cascade", "retrain"} if name == NETWORKS[0] else {"cascade"})
        assert len(rows) == 1 + 2 * len(KEEP) + (len(KEEP) if name == NETWORKS[0] else 0)


def test_points_are_grouped_by_mode_and_average_repetitions_before_nets():
    def row(mode, net, repetition, value, pr):
        return dict(mode=mode, method="ThresNet", net=net, repetition=repetition, step=1, target_prune_ratio=0.5,
                    prune_ratio=pr, num_params=10, nonzero_params=5, nll=value)
    rows = [row("cascade", 0, 0, 1.0, 0.5), row("cascade", 0, 1, 3.0, 0.5), row("cascade", 1, 0, 4.0, 0.52),
            row("retrain", 0, 0, 7.0, 0.5)]
    lines = pruned_points(rows, "nll")
    assert sorted(lines) == [("cascade", "ThresNet"), ("retrain", "ThresNet")]
    (cascade,), (retrain,) = lines[("cascade", "ThresNet")], lines[("retrain", "ThresNet")]
    assert (cascade.value_mean, cascade.value_std, cascade.num_nets) == pytest.approx((3.0, 1.0, 2))  # nets: 2 and 4
    assert cascade.prune_ratio_mean == pytest.approx(0.51)
    assert (retrain.value_mean, retrain.num_nets) == (7.0, 1)


# ------------------------------------------------------------------------------------------ sweeps


def test_prune_potential_equals_a_hand_computation(tree, tmp_path):
    results, sweep, runs = tree
    assert sweeps.main([str(sweep), "--out", str(tmp_path)]) == 0  # the sweep config as the target
    for name in ("prune_potential.png", "prune_potential.pdf", "prune_potential.csv", "prune_potential.md",
                 "error_vs_params.png", "error_vs_params.pdf"):
        assert (tmp_path / name).stat().st_size > 0
    got = {(row["network"], row["mode"], row["method"]): row for row in read_csv(tmp_path / "prune_potential.csv")}
    expected_keys = set()
    for name, run in runs.items():
        rows = metrics(run)
        dense = np.mean([error(row) for row in rows if row["method"] == "dense"])
        by_line = defaultdict(lambda: defaultdict(list))
        for row in rows:
            if row["method"] != "dense":
                by_line[(row["mode"], row["method"])][row["target_prune_ratio"]].append(row)
        for (mode, method), targets in by_line.items():
            within = [np.mean([float(row["prune_ratio"]) for row in members]) for members in targets.values()
                      if np.mean([error(row) for row in members]) <= dense + 0.5]
            entry = got[(name, mode, method)]
            assert float(entry["prune_potential"]) == pytest.approx(max(within, default=0.0), abs=1e-12)
            assert float(entry["dense_value"]) == pytest.approx(dense, abs=1e-12)
            assert float(entry["delta"]) == 0.5
            assert entry["label"] == name.split("_")[3]  # tanh / sigmoid: what differs between the runs
            expected_keys.add((name, mode, method))
    assert set(got) == expected_keys
    markdown = (tmp_path / "prune_potential.md").read_text()
    assert all(run.name in markdown for run in runs.values())


def test_prune_potential_is_the_largest_ratio_within_delta():
    from experiment.report import Point

    def point(pr, value):
        return Point("cascade", "ThresNet", pr, pr, value, 0.0, 1.0, 1.0, 1)
    dense = point(0.0, 1.0)
    points = [point(0.2, 0.9), point(0.5, 1.004), point(0.7, 1.006), point(0.9, 1.5)]
    assert prune_potential(dense, points, 0.005).prune_ratio_mean == 0.5
    assert prune_potential(dense, points[2:], 0.005) is None
    assert delta_of("nll") == delta_of("bits_per_dim") == 0.005 and delta_of("top1_acc") == 0.5


def test_sweep_labels_come_from_the_config_differences():
    labels = sweep_labels(load_configs(REPO / "param" / "toy" / "node" / "moons" / "sweep_opt.yaml"))
    assert labels[:2] == ["lr=0.05, wd=0.01", "lr=0.05, wd=0.001"] and len(set(labels)) == 18
    labels = sweep_labels(load_configs(REPO / "param" / "toy" / "ffjord" / "gaussians" / "sweep_solver.yaml"))
    assert labels == ["da", "da_autograd", "rk4_adjoint", "rk4_autograd", "euler_adjoint", "euler_autograd"]
    labels = sweep_labels(load_configs(REPO / "param" / "toy" / "node" / "moons" / "sweep_model_small.yaml"))
    assert labels == ["l8_h10", "l6_h12", "l4_h17", "l3_h23", "l2_h128"]


# ------------------------------------------------------------------------------------------ tables


def power_rows() -> list[dict]:
    def row(mode, method, net, step, target, pr, nonzero, nll):
        return dict(mode=mode, method=method, net=net, repetition=0, step=step, target_prune_ratio=target,
                    prune_ratio=pr, weight_prune_ratio=pr, num_params=43325, nonzero_params=nonzero, nll=nll)
    return [row("train", "dense", 0, 0, 0.0, 0.0, 43325, -0.40), row("train", "dense", 1, 0, 0.0, 0.0, 43325, -0.44),
            row("cascade", "ThresNet", 0, 1, 0.5, 0.5, 21662, -0.50), row("cascade", "ThresNet", 1, 1, 0.5, 0.5, 21662, -0.54),
            row("cascade", "ThresNet", 0, 2, 0.75, 0.75, 10831, -0.30), row("cascade", "ThresNet", 1, 2, 0.75, 0.75, 10831, -0.30),
            row("cascade", "FilterThresNet", 0, 1, 0.5, 0.49, 22000, -0.45),
            row("cascade", "FilterThresNet", 1, 1, 0.5, 0.49, 22000, -0.47)]


def test_table_builder_puts_published_baselines_next_to_ours():
    entry = tables.table_entry("Power", "ffjord_l3_hm10_f5_tanh", "abc123", "nll", power_rows())
    assert entry.dense.value_mean == pytest.approx(-0.42) and entry.dense.num_params == 43325
    assert (entry.best.method, entry.best.value_mean, entry.best.prune_ratio_mean) == pytest.approx(("ThresNet", -0.52, 0.5))
    markdown = tables.markdown_tables([entry])
    assert "-0.46 / 43K" in markdown  # FFJORD on POWER, as published (paper/README.md)
    assert "-0.62 / 451K" in markdown and "3.08 / 5.9K" in markdown  # NAF, MADE
    assert "-0.420 ± 0.020" in markdown and "-0.520 ± 0.020" in markdown and "21,662" in markdown
    assert "| POWER |" in markdown and "Ours, pruned" in markdown
    assert "GAS" not in markdown  # only the datasets of the runs
    latex = tables.latex_tables([entry])
    assert r"\begin{tabular}" in latex and "$-0.46$ / 43K" in latex and r"ffjord\_l3\_hm10\_f5\_tanh" in latex
    assert tables.BASELINES["FFJORD"]["Power"] == (-0.46, "43K")



def test_the_noprune_control_is_compared_not_ranked():
    """NoPrune (nothing pruned, drawn at its step's ratio) is never the best pruned point nor a line of
    the prune potential; the table shows it at the step of the best pruned point."""
    def control(net, step, ratio, nll):
        return dict(mode="cascade", method="NoPrune", net=net, repetition=0, step=step, target_prune_ratio=0.0,
                    step_prune_ratio=ratio, prune_ratio=0.0, weight_prune_ratio=0.0, num_params=43325,
                    nonzero_params=43325, nll=nll)
    rows = power_rows() + [control(0, 1, 0.5, -0.60), control(1, 1, 0.5, -0.62), control(0, 2, 0.75, -0.70),
                           control(1, 2, 0.75, -0.70)]
    entry = tables.table_entry("Power", "ffjord_l3_hm10_f5_tanh", "abc123", "nll", rows)
    assert (entry.best.method, entry.best.value_mean) == pytest.approx(("ThresNet", -0.52))
    assert (entry.control.method, entry.control.target_prune_ratio, entry.control.value_mean) == pytest.approx(("NoPrune", 0.5, -0.61))
    assert "-0.610 ± 0.010" in tables.markdown_tables([entry])
    lines = pruned_points(rows, "nll")
    (first, second) = lines[("cascade", "NoPrune")]
    assert (first.plotted_prune_ratio, first.prune_ratio_mean, second.plotted_prune_ratio) == (0.5, 0.0, 0.75)
    assert lines[("cascade", "ThresNet")][0].plotted_prune_ratio == 0.5

def test_tables_cli_on_toy_runs(tree, tmp_path):
    results, _, runs = tree
    process = run_process([sys.executable, "-m", "paper.tables", str(results), "--out", str(tmp_path)], cwd=REPO)
    assert process.returncode == 0, describe(process)
    markdown = (tmp_path / "results_table.md").read_text()
    assert (tmp_path / "results_table.tex").read_text().count(r"\begin{tabular}") == 1  # no baselines for toy sets
    for name, run in runs.items():
        line = next(line for line in markdown.splitlines() if run.name in line)
        points = expected_points(run)
        dense = points[("dense", "train", 0.0)]
        pruned = [point for key, point in points.items() if key[0] != "dense"]
        lowest = min(point[1] for point in pruned)
        best = [point for point in pruned if point[1] == lowest]  # ties: any of them
        assert f"{dense[1]:.2f} ± {dense[2]:.2f}" in line and name in line, line
        assert any(f"{point[1]:.2f} ± {point[2]:.2f}" in line and f"{100 * point[0]:.1f}%" in line for point in best), line


# --------------------------------------------------------------------------------------- paper.all


def test_all_writes_everything_the_runs_support(tree, tmp_path):
    results, _, runs = tree
    assert paper_all.main([str(results), "--out", str(tmp_path)]) == 0
    for name, run in runs.items():
        label = f"ToyMoons_{name}_{run.name}"
        for suffix in ("png", "pdf", "csv"):
            assert (tmp_path / f"prune_curve_{label}.{suffix}").exists()
        for figure in ("decision", "field", "trajectories", "flatness", "spectrum"):
            assert (tmp_path / f"{figure}_{label}.png").exists(), figure
    assert not list(tmp_path.glob("mode_collapse_*"))  # classifiers: no mode collapse
    assert (tmp_path / "prune_potential.csv").exists() and (tmp_path / "error_vs_params.png").exists()  # 2 ToyMoons runs
    assert not (tmp_path / "results_table.md").exists()  # no tabular or image runs


# ----------------------------------------------------- references: NoPrune differences, mixture floor, baseline

FLOW_CONFIG = REPO / "param" / "reproduction" / "flow_gaussians.yaml"
STEPS = (0.2, 0.4, 0.6, 0.8, 0.98)
# per method the test NLL at STEPS of net 0; net 1 is `NET_OFFSET` higher, so every net pair differs
FLOW_NLL = {"FilterThresNet": (1.16, 1.15, 1.15, 1.15, 1.32), "ThresNet": (1.15, 1.14, 1.14, 1.145, 1.58),
            "NoPrune": (1.15, 1.15, 1.148, 1.15, 1.15)}
DENSE_NLL = (1.19, 1.18)
NET_OFFSET = 0.004


def fake_run(folder: Path, config_file: Path, overrides: list[str], rows: list[dict]) -> Run:
    """A run folder of `config_file` resolved with `overrides`, holding `rows` as its metrics and a
    data split (so that its data load), no models."""
    (config,) = load_configs(config_file, overrides)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "metrics.csv").write_text(rows_to_csv(rows))
    run = Run(folder)
    load_run_data(run.settings, run.folder, make_split=True)
    return run


def flow_row(method: str, net: int, step: int, ratio: float, nll: float, repetition: int = 0) -> dict:
    pruned = method not in ("dense", "NoPrune")
    return {"mode": "train" if method == "dense" else "cascade", "method": method, "net": net, "repetition": repetition,
            "step": step, "target_prune_ratio": ratio if pruned else 0.0,
            "step_prune_ratio": ratio if method == "NoPrune" else "", "prune_ratio": ratio if pruned else 0.0,
            "num_params": 8642, "nonzero_params": round(8642 * (1 - ratio)) if pruned else 8642, "nll": nll}


@pytest.fixture(scope="module")
def flow_runs(tmp_path_factory) -> tuple[Run, Run]:
    """(a finished Gaussians flow run of 2 nets, FT, WT and NoPrune at STEPS, breaking down at PR 0.98;
    a dense-only run of the same flow trained 500 epochs, 3 nets)."""
    folder = tmp_path_factory.mktemp("flows")
    rows = [flow_row("dense", net, 0, 0.0, nll) for net, nll in enumerate(DENSE_NLL)]
    rows += [flow_row(method, net, step, ratio, nll + NET_OFFSET * net) for method, values in FLOW_NLL.items()
             for net in (0, 1) for step, (ratio, nll) in enumerate(zip(STEPS, values), start=1)]
    spacing = f"experiments.spacing=[{{type: manual, values: {[round(1 - ratio, 9) for ratio in STEPS]}}}]"
    run = fake_run(folder / "run", FLOW_CONFIG, [spacing], rows)
    converged = fake_run(folder / "converged", FLOW_CONFIG, ["training.numEpochs=500", "experiments.mode=train"],
                         [flow_row("dense", net, 0, 0.0, nll) for net, nll in enumerate((1.150, 1.145, 1.155))])
    return run, converged


def test_differences_to_control_pair_each_net_with_the_control_of_its_step():
    rows = [flow_row("ThresNet", 0, 1, 0.5, 1.0), flow_row("ThresNet", 0, 1, 0.5, 2.0, repetition=1),
            flow_row("NoPrune", 0, 1, 0.5, 1.25), flow_row("ThresNet", 1, 1, 0.5, 3.0), flow_row("NoPrune", 1, 1, 0.5, 2.0),
            flow_row("ThresNet", 0, 2, 0.75, 1.0),  # no control at this step
            flow_row("FilterThresNet", 1, 1, 0.5, 2.5), flow_row("dense", 0, 0, 0.0, 9.0)]
    got = [(item.method, item.net, item.step_prune_ratio, item.difference) for item in differences_to_control(rows, "nll")]
    assert got == [("FilterThresNet", 1, 0.5, 0.5), ("ThresNet", 0, 0.5, 0.25), ("ThresNet", 1, 0.5, 1.0)]  # exact in binary
    percent = differences_to_control([{**row, "top1_acc": row["nll"] / 10} for row in rows], "top1_acc",
                                     lambda value: 100 * (1 - value))
    assert percent[0].difference == pytest.approx(-5.0)  # errors in % : lower accuracy, higher error


def test_bulk_range_leaves_out_a_breakdown_but_not_the_references():
    bulk = [1.18, 1.17, 1.155, 1.15, 1.148, 1.15, 1.145, 1.147, 1.15]
    low, high = bulk_range(bulk + [1.32, 1.58], shown=[1.0])
    assert low == 1.0 and max(bulk) < high < 1.32
    assert bulk_range(bulk + [1.32, 1.58], shown=[1.5])[1] == 1.5
    assert bulk_range([1.0, 2.0, 3.0, 4.0])[1] > 4.0  # a rising curve is all bulk


def test_mixture_floor_is_the_entropy_of_the_six_gaussians(flow_runs, tmp_path):
    """The floor of ToyGaussians (6 equal modes, std 0.5 on a circle of radius 4, each split divided by
    the std of its coordinates, ≈ sqrt(4²/2 + 0.5²)) is the entropy of well separated modes,
    log 6 + log(2πe σ²) with σ = 0.5 / sqrt(8.25), up to the test sample's error (≈ 0.01 nats)."""
    run, _ = flow_runs
    sigma_squared = 0.25 / 8.25
    assert mixture_floor_nll(run) == pytest.approx(math.log(6) + math.log(2 * math.pi * math.e * sigma_squared), abs=0.03)
    spirals = fake_run(tmp_path / "spirals", FLOW_CONFIG, ["network.dataset=ToySpirals2"], [])
    assert mixture_floor_nll(spirals) is None  # two spiral arms are no mixture of Gaussians


def test_flow_prune_curve_shows_control_differences_floor_baseline_and_clips_the_breakdown(flow_runs, tmp_path, capsys):
    run, converged = flow_runs
    assert prune_curves.main([str(run.path), "--out", str(tmp_path), "--baseline", str(converged.path)]) == 0
    assert (tmp_path / f"prune_curve_{run_label(run)}.png").stat().st_size > 0
    curve = prune_curves.CurveFigure("nll", *prune_curves.curve_points(run), run.settings.training.num_epochs,
                                     prune_curves.plotted_differences(run), mixture_floor_nll(run),
                                     prune_curves.dense_baseline(run, converged))
    figure = prune_curves.plot_curves(curve, "title")
    upper, lower = figure.axes
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert {"dense, 100 epochs (2 nets)", "dense, 500 epochs (3 nets)", "Gaussian mixture fitted\nto the training split",
            "net 0", "net 1", "±δ = 0.005 nats"} <= set(legend)
    floor = [line for line in upper.get_lines() if line.get_label().startswith("Gaussian")][0]
    assert floor.get_ydata()[0] == pytest.approx(mixture_floor_nll(run))
    # the breakdown at PR 98% is left out of the NLL axis and written at its top edge
    bottom, top = upper.get_ylim()
    assert max(DENSE_NLL) < top < min(FLOW_NLL["FilterThresNet"][-1], FLOW_NLL["ThresNet"][-1])
    assert bottom < mixture_floor_nll(run)
    notes = [text.get_text() for text in upper.texts]
    assert notes == ["FT 1.32, WT 1.58 at PR 98%"]
    # the lower panel: per step the mean over nets of the method minus NoPrune of the same net
    means = {line.get_color(): line.get_ydata() for line in lower.get_lines() if line.get_linestyle() == "-"
             and line.get_color() in (method_color("ThresNet"), method_color("FilterThresNet"))}
    for method in ("ThresNet", "FilterThresNet"):
        expected = np.subtract(FLOW_NLL[method], FLOW_NLL["NoPrune"])
        assert np.allclose(means[method_color(method)][:-1], expected[:-1]) and means[method_color(method)][-1] > 0.15
    assert lower.get_ylim()[1] < 0.1 and "NLL − NoPrune (nats)" == lower.get_ylabel()

    # no baseline from a run of other data; a run without NoPrune rows keeps one panel
    other = fake_run(tmp_path / "other", FLOW_CONFIG, ["network.dataset=ToyGaussiansSpiral"], [])
    assert prune_curves.dense_baseline(run, other) is None and "no baseline line" in capsys.readouterr().out
    single = prune_curves.plot_curves(prune_curves.CurveFigure("nll", curve.dense, curve.lines, 100, []), "title")
    assert len(single.axes) == 1


def test_classifier_differences_are_in_percentage_points_on_a_symlog_axis():
    def point(method, value):
        return Point("cascade", method, 0.5, 0.5 if method != "NoPrune" else 0.0, value, 0.0, 10.0, 10.0, 2)
    differences = [ControlDifference("cascade", "ThresNet", net, 0.5, value) for net, value in ((0, 30.0), (1, -2.0))]
    curve = prune_curves.CurveFigure("top1_acc", point("dense", 1.0), {("cascade", "ThresNet"): [point("ThresNet", 15.0)],
                                     ("cascade", "NoPrune"): [point("NoPrune", 1.0)]}, 50, differences)
    upper, lower = prune_curves.plot_curves(curve, "title").axes
    assert upper.get_yscale() == lower.get_yscale() == "symlog"
    assert lower.get_ylim() == (-10, 100) and lower.get_ylabel() == "top-1 error − NoPrune (points)"
    assert not lower.texts  # nothing clipped on a symlog axis
