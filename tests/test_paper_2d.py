"""Tests of the 2-D analyses (SPEC §8): the mode-coverage computation on hand-made data, and
`paper.samples_2d` / `paper.mode_collapse` end to end on a tiny real results tree (a 2-D flow on
ToyGaussians and a neural-ODE classifier on ToyMoons, each with one pruned ratio per method)."""

from __future__ import annotations

import csv
import math
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import PARAM, cli_command, cli_env, describe, run_folders
from experiment.results import Run
from paper import mode_collapse, samples_2d
from paper.mode_collapse import KS, coverage, default_min_hits, mahalanobis_distances, mode_statistics, nearest_modes

# ------------------------------------------------------------------------------ coverage on hand-made data

CENTRES = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
IDENTITY = np.stack([np.eye(2)] * 3)


def at_distance(centre, distance, angle):
    return np.asarray(centre) + distance * np.array([math.cos(angle), math.sin(angle)])


def hand_made_samples() -> np.ndarray:
    """Mode 0: samples at 0.2, 0.8, 1.5 and 4 std; mode 1: at 0.8 and 4; mode 2: at 4 (7 samples)."""
    placed = [(0, 0.2), (0, 0.8), (0, 1.5), (0, 4.0), (1, 0.8), (1, 4.0), (2, 4.0)]
    return np.stack([at_distance(CENTRES[mode], distance, angle=0.7 * index) for index, (mode, distance) in enumerate(placed)])


def test_coverage_counts_shares_and_modes_hit_exactly():
    samples = hand_made_samples()
    result = coverage(samples, CENTRES, IDENTITY, ks=(0.25, 0.5, 1, 2, 5), min_hits=1)
    assert list(result) == [0.25, 0.5, 1.0, 2.0, 5.0]
    shares = {k: share for k, (share, _) in result.items()}
    hits = {k: hit for k, (_, hit) in result.items()}
    assert shares == pytest.approx({0.25: 1 / 7, 0.5: 1 / 7, 1.0: 3 / 7, 2.0: 4 / 7, 5.0: 1.0})
    assert hits == {0.25: 1, 0.5: 1, 1.0: 2, 2.0: 2, 5.0: 3}


def test_modes_hit_respects_the_threshold():
    samples = hand_made_samples()
    # samples within k per mode: k=1 → (2, 1, 0), k=2 → (3, 1, 0), k=5 → (4, 2, 1)
    two = coverage(samples, CENTRES, IDENTITY, ks=(1, 2, 5), min_hits=2)
    assert {k: hit for k, (_, hit) in two.items()} == {1.0: 1, 2.0: 1, 5.0: 2}
    four = coverage(samples, CENTRES, IDENTITY, ks=(1, 5), min_hits=4)
    assert {k: hit for k, (_, hit) in four.items()} == {1.0: 0, 5.0: 1}
    # the threshold does not change the shares
    assert [share for share, _ in two.values()] == pytest.approx([3 / 7, 4 / 7, 1.0])


def test_default_threshold_is_one_percent_of_the_samples_expected_per_mode():
    assert default_min_hits(20_000, 6) == 34  # 0.01 · 20000 / 6 = 33.3
    assert default_min_hits(20_000, 10) == 20
    assert default_min_hits(50, 10) == 1  # never below one sample


def test_mahalanobis_distance_uses_the_covariance():
    # one mode stretched along x (std 2) and squeezed along y (std 0.5)
    means = np.array([[0.0, 0.0]])
    covariances = np.array([[[4.0, 0.0], [0.0, 0.25]]])
    long_axis = np.array([[1.8, 0.0]])  # 0.9 std: within k = 1 although 1.8 away
    short_axis = np.array([[0.0, 0.8]])  # 1.6 std: outside k = 1 although only 0.8 away
    assert coverage(long_axis, means, covariances, ks=(1,), min_hits=1)[1.0] == (1.0, 1)
    assert coverage(short_axis, means, covariances, ks=(1,), min_hits=1)[1.0] == (0.0, 0)
    assert mahalanobis_distances(np.array([[2.0, 0.0], [0.0, 1.0]]), means, covariances)[:, 0] == pytest.approx([1.0, 2.0])

    # a rotated covariance against the textbook formula
    rng = np.random.default_rng(0)
    rotation = np.array([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]])
    rotated = rotation @ np.diag([3.0, 0.2]) @ rotation.T
    points = rng.normal(size=(20, 2))
    expected = [math.sqrt(p @ np.linalg.inv(rotated) @ p) for p in points - 1.0]
    assert mahalanobis_distances(points, np.array([[1.0, 1.0]]), rotated[None])[:, 0] == pytest.approx(expected)


def test_nearest_mode_is_chosen_by_mahalanobis_distance():
    # a wide mode at x=0 (std 3) and a narrow one at x=4 (std 0.2): the point at x=2.5 is nearer the
    # narrow mode in Euclidean distance but only 0.83 std from the wide one
    means = np.array([[0.0, 0.0], [4.0, 0.0]])
    covariances = np.array([np.eye(2) * 9.0, np.eye(2) * 0.04])
    nearest, distance = nearest_modes(np.array([[2.5, 0.0]]), means, covariances)
    assert nearest.tolist() == [0] and distance == pytest.approx([2.5 / 3])


def test_non_finite_samples_count_as_outside():
    samples = np.array([[0.1, 0.0], [np.nan, 0.0], [np.inf, np.inf], [100.0, 0.5]])
    result = coverage(samples, CENTRES, IDENTITY, ks=(1, 20), min_hits=1)
    assert result[1.0] == (0.5, 2) and result[20.0] == (0.5, 2)


def test_gaussian_samples_of_the_modes_have_the_chi2_coverage():
    """Samples of the modes themselves: share within k ≈ P(χ²₂ ≤ k²) = 1 − exp(−k²/2), all modes hit."""
    rng = np.random.default_rng(1)
    means = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
    roots = [np.array([[1.0, 0.0], [0.0, 0.5]]), np.array([[0.4, 0.3], [0.0, 0.6]]), np.eye(2) * 0.7]
    covariances = np.stack([root @ root.T for root in roots])
    samples = np.concatenate([mean + rng.normal(size=(20_000, 2)) @ root.T for mean, root in zip(means, roots)])
    result = coverage(samples, means, covariances, ks=KS, min_hits=default_min_hits(len(samples), 3))
    for k, (share, hit) in result.items():
        assert share == pytest.approx(1 - math.exp(-k * k / 2), abs=0.01)
        assert hit == 3


def test_mode_statistics_recovers_means_and_covariances():
    rng = np.random.default_rng(2)
    true_means = {2: np.array([1.0, -2.0]), 0: np.array([-3.0, 0.5]), 1: np.array([0.0, 4.0])}
    true_covariances = {2: np.array([[1.0, 0.6], [0.6, 0.9]]), 0: np.diag([0.3, 2.0]), 1: np.eye(2) * 0.05}
    x, y = [], []
    for label in (2, 0, 1):
        x.append(rng.multivariate_normal(true_means[label], true_covariances[label], size=30_000))
        y.append(np.full(30_000, label))
    order = rng.permutation(90_000)
    x, y = np.concatenate(x)[order], np.concatenate(y)[order]
    means, covariances = mode_statistics(x.astype(np.float32), y)
    assert means.shape == (3, 2) and covariances.shape == (3, 2, 2)
    for label in range(3):  # in sorted label order
        assert means[label] == pytest.approx(true_means[label], abs=0.03)
        assert covariances[label] == pytest.approx(true_covariances[label], abs=0.03)


# ------------------------------------------------------------------------------ model selection


def test_spread_ratios_end_with_the_largest():
    ratios = [round(0.02 * index, 2) for index in range(1, 30)]
    chosen = samples_2d.spread_ratios(ratios, 4)
    assert len(chosen) == 4 and chosen[-1] == max(ratios) and chosen == sorted(chosen)
    gaps = np.diff([ratios.index(value) for value in chosen])
    assert gaps.max() - gaps.min() <= 1
    assert samples_2d.spread_ratios([0.3, 0.1], 4) == [0.1, 0.3]
    assert samples_2d.spread_ratios([0.5], 1) == [0.5]
    assert samples_2d.spread_ratios([], 4) == []


def test_only_2d_toy_models_fit():
    def fake(name, size):
        return SimpleNamespace(config={"network": {"name": name, "outputSize": size, "dataset": "ToyGaussians"}})

    assert samples_2d.is_2d_run(fake("cnf_l3_h32_tanh_da", 2)) == "cnf"
    assert samples_2d.is_2d_run(fake("ffjord_l4_h64_sigmoid_da", 2)) == "cnf"
    assert samples_2d.is_2d_run(fake("node_l2_h64_tanh_da", 2)) == "node"
    assert samples_2d.is_2d_run(fake("ffjord_l3_hm10_f5_tanh", 6)) is None
    assert samples_2d.is_2d_run(fake("ffjord_multiscale_mnist", 784)) is None
    assert mode_collapse.fits(fake("node_l2_h64_tanh_da", 2)) is not None
    assert mode_collapse.fits(fake("cnf_l3_h32_tanh_da", 2)) is None


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
        stdout, stderr = process.communicate(timeout=300)
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
    figure, axes = samples_2d.flow_samples_figure(run, samples_2d.select_models(run), num_samples=500)
    assert axes.shape == (2, 3)  # rows FT, WT; columns data, dense, PR 0.5
    visible = [ax for ax in axes.flat if ax.axison]
    assert len(visible) == 2 * 2 + 1  # the data panel only once
    assert axes[0, 0].get_title() == "data (test)"
    assert "PR 49" in axes[0, 2].get_title() and "NLL" in axes[0, 2].get_title()
    assert "PR 50.0%" in axes[1, 2].get_title()
    samples_2d.plt.close(figure)


def test_trajectories_end_where_the_model_maps_the_points(results, one_thread):
    torch.set_num_threads(1)
    for dataset in ("ToyGaussians", "ToyMoons"):
        run = the_run(results, dataset)
        model = run.load_model(run.rows[0])
        x = run.load_data()["test"][0][:64]
        path = samples_2d.trajectories(model, x, num_times=11)
        assert path.shape == (11, 64, 2)
        assert torch.equal(path[0], x)
        with torch.no_grad():
            end = model.transform(x)[0] if dataset == "ToyGaussians" else model(x)
        assert torch.allclose(path[-1], end, atol=1e-3)


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


def test_mode_collapse_script(results, tmp_path, one_thread, capsys):
    out = tmp_path / "modes"
    assert mode_collapse.main([str(results), "--out", str(out), "--num-samples", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "ToyMoons" in printed and "skipped" in printed
    run = the_run(results, "ToyGaussians")
    label = samples_2d.run_label(run)
    with open(out / f"mode_collapse_{label}.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {"run", "method", "mode", "step", "prune_ratio", "k", "share_within_k", "modes_hit"} <= set(rows[0])
    assert len(rows) == len(run.rows) * len(KS)  # one row per (model, k)
    models = {}
    for row in rows:
        models.setdefault((row["method"], row["net"], row["step"]), []).append(row)
    assert len(models) == len(run.rows) == 3
    for model_rows in models.values():
        assert [float(row["k"]) for row in model_rows] == list(KS)
        shares = [float(row["share_within_k"]) for row in model_rows]
        hits = [int(row["modes_hit"]) for row in model_rows]
        assert all(0.0 <= share <= 1.0 for share in shares)
        assert shares == sorted(shares) and hits == sorted(hits)
        assert all(0 <= hit <= 6 for hit in hits)
        assert {row["min_hits"] for row in model_rows} == {str(default_min_hits(2000, 6))}
    assert (out / f"mode_collapse_{label}.md").read_text().count("\n| ") == 1 + 3  # header + 3 models
    for suffix in ("png", "pdf"):
        assert (out / f"mode_collapse_{label}.{suffix}").stat().st_size > 0
    assert not list(out.glob("mode_collapse_ToyMoons*"))

    # a second call reuses the cached per-model results and writes the same table
    before = (out / f"mode_collapse_{label}.csv").read_text()
    assert mode_collapse.main([str(results), "--out", str(out), "--num-samples", "2000"]) == 0
    assert "sampling" not in capsys.readouterr().out
    assert (out / f"mode_collapse_{label}.csv").read_text() == before


def test_mode_collapse_figure_lines():
    rows = [
        {"run": "r", "method": method, "mode": mode, "net": net, "repetition": 0, "step": step,
         "target_prune_ratio": 0.5 * step, "prune_ratio": 0.5 * step, "k": 1.0, "share_within_k": 0.1 * net + 0.2 * step,
         "modes_hit": 6 - step, "num_modes": 6, "min_hits": 34}
        for net in (0, 1)
        for method, mode, steps in (("dense", "train", (0,)), ("FilterThresNet", "cascade", (1, 2)), ("ThresNet", "cascade", (1,)))
        for step in steps
    ]
    summary = mode_collapse.summarize(rows, 1.0)
    assert [len(points) for points in summary.values()] == [3, 2]  # dense + steps per method
    pr, share, share_std, hits, hits_std = summary[("cascade", "FilterThresNet")][2]
    assert (pr, share, share_std, hits, hits_std) == pytest.approx((1.0, 0.45, 0.05, 4.0, 0.0))
    figure, axes = mode_collapse.coverage_figure(rows, 1.0)
    assert len(axes[0].get_lines()) == 2 and len(axes[1].get_lines()) == 3  # + the line at 6 modes
    mode_collapse.plt.close(figure)
