"""Tests of the 2-D analyses (paper/README.md): `paper.samples_2d` / `paper.mode_collapse` end to end on a
tiny real results tree (a 2-D flow on ToyGaussians and a neural-ODE classifier on ToyMoons, each with
one pruned ratio per method). The mode-collapse measures on hand-made samples: test_mode_collapse.py."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import HANG_TIMEOUT, PARAM, cli_command, cli_env, describe, run_folders
from experiment.analysis.mode_collapse import HIT_K, KS, run_measures, unmeasurable_reason
from experiment.analysis.two_dimensional import spread_ratios, trajectories, two_d_family
from experiment.results import Run
from paper import mode_collapse, prune_curves, samples_2d
from paper.common import PNG_MAX_WIDTH, STYLES, use_style

pytestmark = pytest.mark.slow  # makes real runs and every figure of them

# ------------------------------------------------------------------------------ model selection


def test_spread_ratios_end_with_the_largest():
    ratios = [round(0.02 * index, 2) for index in range(1, 30)]
    chosen = spread_ratios(ratios, 4)
    assert len(chosen) == 4 and chosen[-1] == max(ratios) and chosen == sorted(chosen)
    gaps = np.diff([ratios.index(value) for value in chosen])
    assert gaps.max() - gaps.min() <= 1
    assert spread_ratios([0.3, 0.1], 4) == [0.1, 0.3]
    assert spread_ratios([0.5], 1) == [0.5]
    assert spread_ratios([], 4) == []


def test_only_2d_toy_models_fit():
    def fake(name, size):
        return SimpleNamespace(settings=SimpleNamespace(network=SimpleNamespace(name=name, output_size=size, dataset="ToyGaussians")))

    assert two_d_family(fake("cnf_l3_h32_tanh_da", 2)) == "cnf"
    assert two_d_family(fake("ffjord_l4_h64_sigmoid_da", 2)) == "cnf"
    assert two_d_family(fake("node_l2_h64_tanh_da", 2)) == "node"
    assert two_d_family(fake("ffjord_l3_hm10_f5_tanh", 6)) is None
    assert two_d_family(fake("ffjord_multiscale_mnist", 784)) is None
    assert unmeasurable_reason(fake("node_l2_h64_tanh_da", 2)) is not None
    assert unmeasurable_reason(fake("cnf_l3_h32_tanh_da", 2)) is None


# ------------------------------------------------------------------------------ end to end

ONE_RATIO = ["experiments.numNets=1", "experiments.spacing=[{type: manual, values: [0.5]}]"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results root with a 2-D flow run (ToyGaussians) and a classifier run (ToyMoons), trained by
    the CLI (both at once): one net, dense + FT + WT at prune ratio 0.5."""
    folder = tmp_path_factory.mktemp("paper2d")
    root = folder / "results"
    common = [f"directories.results={root}", f"directories.training_data={folder / 'training_data'}"]
    jobs = [
        (PARAM / "quickstart.yaml", ["training.numEpochs=1", *ONE_RATIO]),
        (PARAM / "toy" / "node" / "moons" / "l2_h64_tanh_da.yaml", ["training.numEpochs=2", *ONE_RATIO]),
    ]
    processes = [subprocess.Popen(cli_command(config, *overrides, *common), env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for config, overrides in jobs]
    for process in processes:
        stdout, stderr = process.communicate(timeout=HANG_TIMEOUT)
        assert process.returncode == 0, describe(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    assert len(run_folders(root)) == 2
    return root


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def the_run(results: Path, dataset: str) -> Run:
    (folder,) = [folder for folder in run_folders(results) if folder.parts[-3] == dataset]
    return Run(folder)


def test_selection_of_the_tiny_runs(results):
    run = the_run(results, "ToyGaussians")
    selection = samples_2d.select_models(run)
    assert selection.dense["method"] == "dense" and selection.dense["net"] == 0
    assert selection.ratios == [0.5]
    assert selection.methods == [("cascade", "FilterThresNet"), ("cascade", "ThresNet")]
    assert all(cells[0]["step"] == 1 for cells in selection.cells.values())
    assert samples_2d.select_models(run, ratios=[0.9, 0.1]).ratios == [0.5]  # nearest of the run's list


def test_samples_figure_grid(results, one_thread):
    torch.set_num_threads(1)
    run = the_run(results, "ToyGaussians")
    figure, axes = samples_2d.flow_samples_figure(run, samples_2d.select_models(run), samples_2d.ModelCache(run), num_samples=500)
    assert axes.shape == (2, 3)  # rows FT, WT; columns data, dense, PR 0.5
    visible = [ax for ax in axes.flat if ax.axison]
    assert len(visible) == 2 * 2 + 1  # the data panel only once
    assert axes[0, 0].get_title() == "data (test)"
    assert "PR 49" in axes[0, 2].get_title() and "NLL" in axes[0, 2].get_title()
    assert "PR 50.0%" in axes[1, 2].get_title()


def test_trajectories_end_where_the_model_maps_the_points(results, one_thread):
    torch.set_num_threads(1)
    for dataset in ("ToyGaussians", "ToyMoons"):
        run = the_run(results, dataset)
        model = run.load_model(run.rows[0])
        x = run.load_data()["test"][0][:64]
        path = trajectories(model, x, num_times=11)
        assert path.shape == (11, 64, 2)
        assert torch.equal(path[0], x)
        with torch.no_grad():
            end = model.transform(x)[0] if dataset == "ToyGaussians" else model(x)
        assert torch.allclose(path[-1], end, atol=1e-3)


def test_trajectories_show_a_moderate_and_the_largest_ratio():
    def columns(ratios):
        return samples_2d.trajectory_ratio_indices(samples_2d.Selection(dense=None, ratios=ratios))
    assert columns([0.2, 0.484, 0.69, 0.84, 0.98]) == [1, 4]
    assert columns([0.5]) == [0] and columns([]) == []


def tick_labels_shown(ax) -> tuple[bool, bool]:
    """(y tick labels shown, x tick labels shown) of a panel."""
    return ax.yaxis.get_tick_params()["labelleft"], ax.xaxis.get_tick_params()["labelbottom"]


def test_field_and_trajectories_have_axes_a_class_legend_and_name_the_net(results, one_thread):
    torch.set_num_threads(1)
    run = the_run(results, "ToyMoons")
    selection = samples_2d.select_models(run)
    models = samples_2d.ModelCache(run)
    figure, axes = samples_2d.field_figure(run, selection, models, resolution=10)
    assert axes.shape == (2, 2)  # rows FT, WT; columns dense, PR 0.5 (the dense net only in the first row)
    # one window: coordinates and tick labels on the first drawn panel of each row and the lowest of each column
    assert (axes[0, 0].get_ylabel(), axes[0, 0].get_xlabel(), tick_labels_shown(axes[0, 0])) == ("z₂", "z₁", (True, True))
    assert (axes[0, 1].get_ylabel(), axes[0, 1].get_xlabel(), tick_labels_shown(axes[0, 1])) == ("", "", (False, False))
    assert (axes[1, 1].get_ylabel(), axes[1, 1].get_xlabel(), tick_labels_shown(axes[1, 1])) == ("z₂", "z₁", (True, True))
    assert [text.get_text() for ax in axes[:, 0] for text in ax.texts] == ["FT", "WT"]  # the row labels
    (bar,) = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert bar.get_ylabel() == "speed |f(z)|"
    assert figure.get_suptitle().endswith("; net 0")

    figure, axes = samples_2d.trajectories_figure(run, selection, models, num_points=20, num_times=5)
    assert axes.shape == (1, 3)  # one ratio, so one row: dense, FT and WT at PR 0.5
    assert axes[0, 0].get_title().startswith("dense, PR 0.0%") and axes[0, 2].get_title().startswith("WT, PR 50")
    assert all(tick_labels_shown(ax) == (True, True) for ax in axes.flat)  # each panel at its own scale
    assert [ax.get_ylabel() for ax in axes.flat] == ["z₂", "", ""] and {ax.get_xlabel() for ax in axes.flat} == {"z₁"}
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["class 0", "class 1", "start, z(0) = x", "end, z(T)"]
    try:
        use_style("paper")  # no titles in a paper, but the net is still named
        other = samples_2d.Selection(dense=selection.dense, ratios=selection.ratios, net=2, repetition=1, cells=selection.cells)
        figure, _ = samples_2d.decision_figure(run, other, models, resolution=10)
        assert figure.get_suptitle() == "net 2, repetition 1"
    finally:
        use_style("screen")


def test_samples_2d_script_writes_every_figure(results, tmp_path, one_thread, capsys):
    out = tmp_path / "figures"
    assert samples_2d.main([str(results), "--out", str(out), "--num-samples", "2000", "--num-trajectories", "60",
                            "--resolution", "100"]) == 0
    flow = the_run(results, "ToyGaussians")
    node = the_run(results, "ToyMoons")
    expected = [f"{kind}_{samples_2d.run_label(flow)}" for kind in ("samples", "field", "trajectories")]
    expected += [f"{kind}_{samples_2d.run_label(node)}" for kind in ("decision", "field", "trajectories")]
    for name in expected:
        for suffix in ("png", "pdf"):
            assert (out / f"{name}.{suffix}").stat().st_size > 0
    assert not (out / f"samples_{samples_2d.run_label(node)}.png").exists()


def png_width_pixels(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width field


def test_paper_style_column_widths_and_truetype_fonts(results, tmp_path, one_thread):
    """--style paper: a one-panel figure is single-column wide, a grid double-column wide, and the
    PDFs embed TrueType (Type 42) fonts, no Type 3 ones."""
    run = the_run(results, "ToyMoons")
    out = tmp_path / "paper"
    try:
        assert prune_curves.main([str(run.path), "--out", str(out), "--style", "paper"]) == 0
        assert samples_2d.main([str(run.path), "--out", str(out), "--style", "paper", "--resolution", "50",
                                "--num-trajectories", "20"]) == 0
    finally:
        use_style("screen")  # matplotlib's settings are global: the default for the other tests
    paper = STYLES["paper"]
    label = samples_2d.run_label(run)
    for name, width in ((f"prune_curve_{label}", paper.single_width), (f"decision_{label}", paper.double_width),
                        (f"field_{label}", paper.double_width)):
        assert abs(png_width_pixels(out / f"{name}.png") - min(width * paper.dpi, PNG_MAX_WIDTH)) <= 1, name
        assert f"/MediaBox [ 0 0 {width * 72:g} ".encode() in (out / f"{name}.pdf").read_bytes(), name  # points
        pdf = (out / f"{name}.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf, name  # an embedded TrueType font program


def test_mode_collapse_script(results, tmp_path, one_thread, capsys):
    out = tmp_path / "modes"
    assert mode_collapse.main([str(results), "--out", str(out), "--num-samples", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "ToyMoons" in printed and "skipped" in printed
    run = the_run(results, "ToyGaussians")
    label = samples_2d.run_label(run)
    assert printed.count("models pass") == 3  # a verdict line per method and ratio: dense, FT, WT
    with open(out / f"mode_collapse_{label}.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {"run", "method", "mode", "step", "step_prune_ratio", "prune_ratio", "k", "share_within_k",
            "reference_share_within_k", "tv_distance", "modes_hit", "passes"} <= set(rows[0])
    assert len(rows) == len(run.rows) * len(KS)  # one row per (model, k)
    models = {}
    for row in rows:
        models.setdefault((row["method"], row["net"], row["step"]), []).append(row)
    assert len(models) == len(run.rows) == 3
    references = {row["k"]: row["reference_share_within_k"] for row in rows}
    assert len({(row["k"], row["reference_share_within_k"]) for row in rows}) == len(references)  # one per k
    assert float(references[str(HIT_K)]) == pytest.approx(1 - math.exp(-HIT_K ** 2 / 2), abs=0.005)
    for model_rows in models.values():
        assert [float(row["k"]) for row in model_rows] == list(KS)
        shares = [float(row["share_within_k"]) for row in model_rows]
        assert all(0.0 <= share <= 1.0 for share in shares) and shares == sorted(shares)
        assert all(0.0 <= float(row["tv_distance"]) <= 1.0 for row in model_rows)
        assert all(0 <= int(row["modes_hit"]) <= 6 for row in model_rows)
        assert len({row["passes"] for row in model_rows}) == 1  # one verdict per model
    table = (out / f"mode_collapse_{label}.md").read_text()
    assert table.count("\n| ") == 2 * (1 + 3) + 1  # two tables: header + 3 models; the true mixture's row
    for suffix in ("png", "pdf"):
        assert (out / f"mode_collapse_{label}.{suffix}").stat().st_size > 0
    assert not list(out.glob("mode_collapse_ToyMoons*"))

    # a second call reuses the cached per-model shares and writes the same table; other thresholds
    # need no new samples
    before = (out / f"mode_collapse_{label}.csv").read_text()
    assert mode_collapse.main([str(results), "--out", str(out), "--num-samples", "2000"]) == 0
    assert "sampling" not in capsys.readouterr().out
    assert (out / f"mode_collapse_{label}.csv").read_text() == before
    assert mode_collapse.main([str(results), "--out", str(out), "--num-samples", "2000", "--hit-fraction", "0"]) == 0
    assert "sampling" not in capsys.readouterr().out
    with open(out / f"mode_collapse_{label}.csv", newline="") as file:
        assert {row["modes_hit"] for row in csv.DictReader(file)} == {"6"}  # every mode gets ≥ 0 of its share


def test_mode_collapse_of_a_copied_run_uses_the_cache_for_checkpoints_that_are_gone(results, tmp_path, one_thread, capsys):
    """The cache is keyed by checkpoint contents, so it serves a copy of the run on another machine,
    and there a model whose checkpoint was not copied (a folder trimmed to what resuming needs) is
    measured from its cache entry; without one it is left out with a note."""
    out = tmp_path / "modes"
    assert mode_collapse.main([str(results), "--out", str(out), "--num-samples", "2000"]) == 0
    label = samples_2d.run_label(the_run(results, "ToyGaussians"))
    table = (out / f"mode_collapse_{label}.csv").read_text()
    original = the_run(results, "ToyGaussians").path
    copy = Path(shutil.copytree(original, tmp_path / "copy" / original.name))  # its run id, hence its label, stays
    step = next((copy / "checkpoints").glob("*_step1.pt"))
    step.unlink()
    capsys.readouterr()
    assert mode_collapse.main([str(copy), "--out", str(out), "--num-samples", "2000"]) == 0
    assert "sampling" not in capsys.readouterr().out
    assert (out / f"mode_collapse_{label}.csv").read_text() == table

    (out / f"mode_collapse_{label}.cache.json").unlink()
    assert mode_collapse.main([str(copy), "--out", str(out), "--num-samples", "2000"]) == 0
    assert f"{step.stem} has no checkpoint and no cached shares; left out" in capsys.readouterr().out
    with open(out / f"mode_collapse_{label}.csv", newline="") as file:
        assert len({(row["method"], row["step"]) for row in csv.DictReader(file)}) == 2


def test_mode_collapse_cache_keeps_each_model_measured_before_a_kill(results, one_thread, capsys):
    """Each model's shares are saved as soon as they are measured: after a kill during the second
    model, a rerun samples only the models not yet cached and gives the uninterrupted rows."""
    run = the_run(results, "ToyGaussians")
    label = samples_2d.run_label(run)
    uninterrupted = run_measures(run, label, 2000, 0)

    class Killed(Exception):
        pass

    cache, saved = {}, []

    def save_then_die():
        saved.append(json.dumps(cache))
        raise Killed  # the process dies right after writing the first model's entry

    with pytest.raises(Killed):
        run_measures(run, label, 2000, 0, cache=cache, saved=save_then_die)
    cache = json.loads(saved[-1])
    assert len(cache) == 1
    capsys.readouterr()
    assert run_measures(run, label, 2000, 0, cache=cache) == uninterrupted
    assert capsys.readouterr().out.count("sampling") == len(run.rows) - 1
