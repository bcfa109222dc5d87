"""Tests of the flatness analysis (experiment/analysis/flatness.py) and of paper/flatness.py: which
models are measured, λ_max on further data subsets, the cache, and the CLI end to end on a tiny real
results tree (with a NoPrune control model added). The Hessian machinery itself: test_hessian.py."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import describe, load_weights, run_cli, the_run_folder
from experiment.analysis.flatness import (CONTROL_COLUMNS, DATA_SUBSET_COLUMNS, SAME_SUPPORT_COLUMNS, FlatnessSettings,
                                          analyse_run, data_subset_seed, data_subsets, placed_ratio, random_subsets,
                                          restricted_loss, select_rows)
from experiment.files import atomic_torch_save, load_checkpoint, read_csv, rows_to_csv
from experiment.models import build_model
from experiment.results import Run
from paper import flatness
from test_hessian import NODE, eigen_quantities, reference_hessian

pytestmark = pytest.mark.slow  # makes a real run and measures its Hessians


# ------------------------------------------------------------------------------ row selection


def test_select_rows_picks_closest_steps_per_method():
    rows = [dict(mode="train", method="dense", net=0, repetition=0, step=0, prune_ratio=0.0),
            dict(mode="train", method="dense", net=1, repetition=0, step=0, prune_ratio=0.0)]
    achieved = {"FilterThresNet": [0.2, 0.36, 0.45, 0.52, 0.67, 0.8, 0.9], "ThresNet": [0.2, 0.36, 0.49, 0.59, 0.67, 0.8, 0.9]}
    for method, ratios in achieved.items():
        for net in (0, 1):
            rows += [dict(mode="cascade", method=method, net=net, repetition=0, step=step, prune_ratio=ratio)
                     for step, ratio in enumerate(ratios, start=1)]
    chosen = select_rows(rows, net=0, ratios=(0.5, 0.9, 0.95))
    assert [(row["method"], row["step"]) for row in chosen] == [
        ("dense", 0), ("FilterThresNet", 4), ("FilterThresNet", 7), ("ThresNet", 3), ("ThresNet", 7)]
    assert all(row["net"] == 0 for row in chosen)
    assert len(select_rows(rows, net=0, all_steps=True)) == 1 + 2 * 7
    # NoPrune prunes nothing (achieved ratio 0): it is measured at every step chosen for a pruning method,
    # here 3 (ThresNet) and 4 (FilterThresNet), although its scheduled ratio at step 3, 0.49, is the closest to 0.5
    noprune = [dict(mode="cascade", method="NoPrune", net=0, repetition=0, step=step, target_prune_ratio=0.0, prune_ratio=0.0,
                    step_prune_ratio=ratio) for step, ratio in enumerate(achieved["ThresNet"], start=1)]
    chosen = select_rows(noprune + rows, net=0, ratios=(0.5, 0.9, 0.95))
    assert [row["step"] for row in chosen if row["method"] == "NoPrune"] == [3, 4, 7]
    assert [row["method"] for row in chosen][-3:] == ["NoPrune"] * 3
    # without pruning methods beside it, its steps are those whose scheduled ratio is closest
    chosen = select_rows(noprune, net=0, ratios=(0.5, 0.9, 0.95))
    assert [(row["step"], placed_ratio(row)) for row in chosen] == [(3, 0.49), (7, 0.9)]


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def results_tree(tmp_path_factory):
    """A real run: node_l2_h8_tanh_da on ToyMoons, 2 epochs, two nets, FT and WT pruned once to PR 0.5."""
    folder = tmp_path_factory.mktemp("flatness")
    results = folder / "results"
    process = run_cli(Path("param/toy/node/moons/l2_h64_tanh_da.yaml"), f"network.name={NODE}", "training.numEpochs=2",
                      "experiments.numNets=2", "experiments.spacing=[{type: manual, values: [0.5]}]",
                      f"directories.results={results}", f"directories.training_data={folder / 'training_data'}")
    assert process.returncode == 0, describe(process)
    return results, folder


def test_data_subsets_are_independent_seeded_draws(results_tree):
    """Subset 0 is drawn with the seed itself (the subset of the full measurement, as before the
    further subsets existed); the others with seeds derived from (seed, index): as large, other rows,
    the same for the same seed, and a prefix of a longer list."""
    results, _ = results_tree
    run = Run(the_run_folder(results))
    subsets = data_subsets(run, "run", 0.1, 0, 3)
    x_train = run.load_data()["train"][0]
    assert [subset.index for subset in subsets] == [0, 1, 2]
    assert [subset.seed for subset in subsets] == [0, data_subset_seed(0, 1), data_subset_seed(0, 2)]
    assert len({subset.seed for subset in subsets}) == 3 and data_subset_seed(5, 1) != data_subset_seed(0, 1)
    assert all(len(subset.x) == len(subset.y) == round(0.1 * len(x_train)) for subset in subsets)
    for first, second in ((0, 1), (0, 2), (1, 2)):
        assert not torch.equal(subsets[first].x, subsets[second].x)
    again = data_subsets(run, "run", 0.1, 0, 2)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(again, subsets))
    assert not torch.equal(data_subsets(run, "run", 0.1, 1, 1)[0].x, subsets[0].x)
    assert len(data_subsets(run, "run", 0.1, 0, 0)) == 1  # at least the subset of the full measurement


def test_cli_end_to_end(results_tree, capsys):
    results, folder = results_tree
    out = folder / "out"
    assert flatness.main([str(results), "--out", str(out), "--subset", "0.1"]) == 0
    run_folder = the_run_folder(results)
    label = f"ToyMoons_{NODE}_{run_folder.name}"
    for name in (f"flatness_{label}", f"spectrum_{label}"):
        for suffix in ("png", "pdf"):
            assert (out / f"{name}.{suffix}").stat().st_size > 0
    assert (out / f"flatness_{label}.md").read_text().startswith("| run | mode | method |")
    with open(out / f"flatness_{label}.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0])[:27] == ["run", "mode", "method", "net", "step", "prune_ratio", "step_prune_ratio",
                                  "num_surviving_params", "lambda_max", "trace", "trace_stderr", "condition_number",
                                  *CONTROL_COLUMNS, *DATA_SUBSET_COLUMNS, *SAME_SUPPORT_COLUMNS]
    assert sorted(row["method"] for row in rows) == ["FilterThresNet", "ThresNet", "dense"]  # one per evaluated model
    metrics = {row["method"]: row for row in csv.DictReader(open(run_folder / "metrics.csv", newline="")) if row["net"] == "0"}
    parameter_names = [name for name, _ in build_model(NODE, 2).named_parameters()]
    survivors = {}  # method → positions of its non-zero entries in the flattened parameters
    for row in rows:
        stem = "dense_net0" if row["method"] == "dense" else f"cascade_{row['method']}_net0_rep0_step1"
        checkpoint = load_weights(run_folder / "checkpoints" / f"{stem}.pt")
        weights = {name: checkpoint["model"][name] * checkpoint["masks"].get(name, 1.0) for name in parameter_names}
        survivors[row["method"]] = np.flatnonzero(torch.cat([weights[name].flatten() for name in parameter_names]).numpy())
        assert int(row["num_surviving_params"]) == len(survivors[row["method"]]) == int(metrics[row["method"]]["nonzero_params"])
        assert math.isfinite(float(row["lambda_max"])) and float(row["lambda_max"]) > 0
        assert math.isfinite(float(row["trace"]))
        assert float(row["prune_ratio"]) == pytest.approx(float(metrics[row["method"]]["prune_ratio"]))
        assert int(row["subset_size"]) > 0
    pruned = [row for row in rows if row["method"] != "dense"]
    dense = [row for row in rows if row["method"] == "dense"][0]
    assert all(int(row["num_surviving_params"]) < int(dense["num_surviving_params"]) for row in pruned)
    spectrum = list(csv.DictReader(open(out / f"spectrum_{label}.csv", newline="")))
    for row in rows:  # exact path: one node per eigenvalue, weights summing to one
        nodes = [entry for entry in spectrum if entry["method"] == row["method"]]
        assert len(nodes) == int(row["num_surviving_params"])
        assert sum(float(entry["weight"]) for entry in nodes) == pytest.approx(1.0)
        assert max(float(entry["node"]) for entry in nodes) == pytest.approx(float(row["lambda_max"]))

    # the control beside each model: the dense net's Hessian (from autograd) on 3 random subsets of the
    # model's size (the default --control-subsets), mean and std over them
    run = Run(run_folder)
    subsets = data_subsets(run, "run", 0.1, 0, 3)  # the default --data-subsets
    hessians = {method: [reference_hessian(restricted_loss(run, run.load_model(stem), subset.x, subset.y, seed=subset.seed))
                         for subset in subsets]
                for method, stem in (("dense", "dense_net0"), ("FilterThresNet", "cascade_FilterThresNet_net0_rep0_step1"),
                                     ("ThresNet", "cascade_ThresNet_net0_rep0_step1"))}
    dense_hessian_matrix = hessians["dense"][0]
    for row in rows:
        size = int(row["num_surviving_params"])
        subsets = random_subsets(len(dense_hessian_matrix), size, 3, seed=0, net=0)
        expected = [eigen_quantities(dense_hessian_matrix[np.ix_(subset, subset)]) for subset in subsets]
        assert int(row["control_subsets"]) == (1 if row["method"] == "dense" else 3)
        for stem, quantity in (("lambda_max", "lambda_max"), ("trace", "trace"), ("condition", "condition_number")):
            values = [truth[quantity] for truth in expected]
            assert float(row[f"control_{stem}_mean"]) == pytest.approx(np.mean(values), rel=1e-4)
            assert float(row[f"control_{stem}_std"]) == pytest.approx(np.std(values), rel=1e-3, abs=1e-9)
        assert float(row["control_lambda_max_mean"]) <= float(dense["lambda_max"]) * (1 + 1e-9)  # interlacing
    assert all(float(row["control_lambda_max_std"]) > 0 for row in pruned)
    for column in ("lambda_max", "trace", "condition_number"):  # the dense net's control is the dense net
        assert float(dense[column]) == pytest.approx(float(dense["control_" + column.replace("_number", "") + "_mean"]), rel=1e-12)
    assert "control_lambda_max_mean" in (out / f"flatness_{label}.md").read_text().splitlines()[0]

    # λ_max on the 3 data subsets (subset 0 is the full measurement's), mean and population std; the
    # same-support control: the dense Hessian on exactly the model's survivors, on every data subset
    top = lambda matrix: np.linalg.eigvalsh(0.5 * (matrix + matrix.T))[-1]
    for row in rows:
        own = [top(matrix) for matrix in hessians[row["method"]]]
        assert own[0] == pytest.approx(float(row["lambda_max"]), rel=1e-6)
        assert int(row["data_subsets"]) == 3 and len(set(np.round(own, 12))) == 3
        assert float(row["lambda_max_subsets_mean"]) == pytest.approx(np.mean(own), rel=1e-6)
        assert float(row["lambda_max_subsets_std"]) == pytest.approx(np.std(own), rel=1e-4)
        support = survivors[row["method"]]  # the dense net keeps every entry: its θ is the flattened parameters
        same = [top(matrix[np.ix_(support, support)]) for matrix in hessians["dense"]]
        truth = eigen_quantities(dense_hessian_matrix[np.ix_(support, support)])
        assert float(row["same_support_lambda_max"]) == pytest.approx(truth["lambda_max"], rel=1e-6)
        assert float(row["same_support_trace"]) == pytest.approx(truth["trace"], rel=1e-6)
        assert int(row["same_support_data_subsets"]) == 3
        assert float(row["same_support_lambda_max_subsets_mean"]) == pytest.approx(np.mean(same), rel=1e-6)
        assert float(row["same_support_lambda_max_subsets_std"]) == pytest.approx(np.std(same), rel=1e-4)
    assert len(survivors["dense"]) == sum(p.numel() for p in build_model(NODE, 2).parameters())
    for own, same in (("lambda_max", "same_support_lambda_max"), ("trace", "same_support_trace"),
                      ("lambda_max_subsets_mean", "same_support_lambda_max_subsets_mean"),
                      ("lambda_max_subsets_std", "same_support_lambda_max_subsets_std")):
        assert dense[same] == dense[own]  # S = every parameter: the dense net itself
    assert all(float(row["same_support_lambda_max"]) != pytest.approx(float(row["lambda_max"]), rel=1e-3) for row in pruned)


def test_cli_is_deterministic_and_iterative_path_agrees(results_tree):
    results, folder = results_tree
    first, second = folder / "exact", folder / "iterative"
    flatness.main([str(results), "--out", str(first)])
    flatness.main([str(results), "--out", str(second), "--exact-max", "0", "--probes", "64", "--slq-steps", "10", "--ratios", "0.5"])
    read = lambda path: {row["method"]: row for row in csv.DictReader(open(next(path.glob("flatness_*.csv")), newline=""))}
    exact, iterative = read(first), read(second)
    assert set(exact) == set(iterative)
    for method in exact:
        assert iterative[method]["hessian"] == "iterative" and exact[method]["hessian"] == "exact"
        assert float(iterative[method]["lambda_max"]) == pytest.approx(float(exact[method]["lambda_max"]), rel=1e-2)
        assert abs(float(iterative[method]["trace"]) - float(exact[method]["trace"])) < 4 * float(iterative[method]["trace_stderr"])
        # the same subsets, measured by Lanczos on padded HVPs of the dense loss
        assert float(iterative[method]["control_lambda_max_mean"]) == pytest.approx(float(exact[method]["control_lambda_max_mean"]), rel=1e-2)
        for column in ("lambda_max_subsets_mean", "same_support_lambda_max", "same_support_lambda_max_subsets_mean"):
            assert float(iterative[method][column]) == pytest.approx(float(exact[method][column]), rel=1e-2)
    again = folder / "again"
    flatness.main([str(results), "--out", str(again)])
    strip = lambda rows: {m: {k: v for k, v in r.items() if k != "seconds"} for m, r in rows.items()}
    assert strip(read(again)) == strip(exact)  # control columns included: the subsets are seeded
    assert all(float(row["control_trace_mean"]) > 0 for row in exact.values())


def test_cli_noprune_control_is_the_dense_hessian(results_tree):
    """A NoPrune model (nothing pruned, step_prune_ratio = the ratio the pruning methods reach at that
    step) keeps every parameter, so its control is the dense net's full Hessian; it is placed at its
    scheduled ratio. Built here by adding a NoPrune row and a perturbed dense checkpoint to a copy of the run."""
    results, folder = results_tree
    copy = folder / "with_noprune"
    shutil.copytree(the_run_folder(results), copy)
    rows = read_csv(copy / "metrics.csv")
    noprune = {**next(row for row in rows if row["method"] == "ThresNet" and int(row["net"]) == 0), "method": "NoPrune", "target_prune_ratio": 0.0,
               "prune_ratio": 0.0, "nonzero_params": rows[0]["num_params"], "step_prune_ratio": 0.5}
    (copy / "metrics.csv").write_text(rows_to_csv(rows + [noprune]))
    checkpoint = load_checkpoint(copy / "checkpoints" / "dense_net0.pt")
    checkpoint["model"] = {name: 1.05 * value if value.is_floating_point() else value for name, value in checkpoint["model"].items()}
    atomic_torch_save(copy / "checkpoints" / "cascade_NoPrune_net0_rep0_step1.pt", checkpoint)

    out = folder / "noprune_out"
    assert flatness.main([str(copy), "--out", str(out), "--control-subsets", "2"]) == 0
    table = {row["method"]: row for row in csv.DictReader(open(next(out.glob("flatness_*.csv")), newline=""))}
    assert set(table) == {"dense", "FilterThresNet", "ThresNet", "NoPrune"}
    dense, model = table["dense"], table["NoPrune"]
    assert model["num_surviving_params"] == dense["num_surviving_params"]
    assert float(model["prune_ratio"]) == 0 and float(model["step_prune_ratio"]) == 0.5
    assert float(model["lambda_max"]) != pytest.approx(float(dense["lambda_max"]), rel=1e-3)  # its own Hessian differs ...
    for column, control in (("lambda_max", "lambda_max"), ("trace", "trace"), ("condition_number", "condition")):
        assert float(model[f"control_{control}_mean"]) == float(dense[column])  # ... its control is the dense one
        assert float(model[f"control_{control}_std"]) == 0
    assert int(model["control_subsets"]) == 1 and int(table["ThresNet"]["control_subsets"]) == 2
    for column in ("lambda_max", "trace"):  # S = every parameter: the same-support control is the dense net
        assert float(model[f"same_support_{column}"]) == float(dense[f"same_support_{column}"]) == float(dense[column])
    assert model["same_support_lambda_max_subsets_mean"] == dense["lambda_max_subsets_mean"]
    assert int(model["data_subsets"]) == 3  # its own λ_max on every data subset, its own spread
    assert float(model["lambda_max_subsets_mean"]) != pytest.approx(float(dense["lambda_max_subsets_mean"]), rel=1e-3)


def test_flatness_cache_resumes_a_killed_analysis_and_serves_a_trimmed_copy(results_tree, tmp_path, capsys):
    """Every measurement is cached as it finishes, keyed by checkpoint contents and the options that
    change the numbers: an analysis killed after its first entries measures only the rest when run
    again and ends with the uninterrupted table; a copy of the run without a pruned checkpoint takes
    that model from the cache (left out with a note without one); a copy without any checkpoint or
    data split, whose cache predates the data subsets and the same-support control, gives NaN there
    (with a note) and everything else from the cache; a changed checkpoint or a changed option is
    measured anew (λ_max alone on further data subsets does not depend on the trace and SLQ options)."""
    results, _ = results_tree
    run = Run(the_run_folder(results))
    label = f"ToyMoons_{NODE}_{run.path.name}"
    settings = FlatnessSettings(subset=0.1)
    uninterrupted, spectra = analyse_run(run, label, settings)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    class Killed(Exception):
        pass

    cache, writes = {}, []

    def save_then_die():
        writes.append(json.dumps(cache))
        if len(writes) == 2:  # the dense net and its first control size are in; then the "kill"
            raise Killed

    with pytest.raises(Killed):
        analyse_run(run, label, settings, cache, saved=save_then_die)
    cache = json.loads(writes[-1])  # what the file holds after the kill
    capsys.readouterr()
    counted = []
    resumed, resumed_spectra = analyse_run(run, label, settings, cache, saved=lambda: counted.append(1))
    assert strip(resumed) == strip(uninterrupted) and resumed_spectra == spectra
    # 3 models + a control for each of the 3 sizes (the dense one is the dense net itself) + 2 same-support
    # controls, and λ_max alone on 2 further data subsets of the 3 models and of the 2 same-support controls
    entries = len(cache)
    assert entries == 3 + 3 + 2 + 2 * (3 + 2) and len(counted) == entries - 2
    dense_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{label} dense_net0: "))
    assert dense_line.endswith(", cached)")  # measured before the kill

    # a copy of the run (another machine) without the WT model's checkpoint
    copy = tmp_path / "copy" / run.path.relative_to(results)
    shutil.copytree(run.path, copy)
    step = copy / "checkpoints" / "cascade_ThresNet_net0_rep0_step1.pt"
    step.unlink()
    served, _ = analyse_run(Run(copy), label, settings, dict(cache), saved=lambda: pytest.fail("nothing to measure"))
    assert strip(served) == strip(uninterrupted)
    without_cache, _ = analyse_run(Run(copy), label, settings)
    assert [row["method"] for row in without_cache] == ["dense", "FilterThresNet"]
    assert f"{label}: {step.stem} has no checkpoint and no cached measurement; left out" in capsys.readouterr().out

    # a results-only copy (no checkpoints, no data split) with a cache from before the new quantities
    bare = tmp_path / "bare" / run.path.relative_to(results)
    shutil.copytree(run.path, bare, ignore=shutil.ignore_patterns("checkpoints", "data_split.npz"))
    older = {key: entry for key, entry in cache.items() if "data subset" not in key and "same support" not in key}
    trimmed, trimmed_spectra = analyse_run(Run(bare), label, settings, older, saved=lambda: pytest.fail("nothing to measure"))
    assert trimmed_spectra == spectra
    notes = capsys.readouterr().out
    assert "no data_split.npz; the training split is drawn again from the run's seed" in notes
    assert "no checkpoint and no cache entry: the same-support control of 2 models is not measured" in notes
    assert "no checkpoint and no cache entry: λ_max on further data subsets of 3 models is not measured" in notes
    new = {"seconds", *DATA_SUBSET_COLUMNS, *SAME_SUPPORT_COLUMNS}
    for row, full in zip(trimmed, uninterrupted):
        assert {k: v for k, v in row.items() if k not in new} == {k: v for k, v in full.items() if k not in new}
        assert row["data_subsets"] == 1 and row["lambda_max_subsets_mean"] == row["lambda_max"]
        assert math.isnan(row["lambda_max_subsets_std"]) and math.isnan(row["same_support_lambda_max_subsets_std"])
        if row["method"] == "dense":
            assert row["same_support_lambda_max"] == row["lambda_max"] and row["same_support_data_subsets"] == 1
        else:
            assert math.isnan(row["same_support_lambda_max"]) and math.isnan(row["same_support_trace"])
            assert row["same_support_data_subsets"] == 0

    # a changed checkpoint and a changed option are measured again
    checkpoint = load_checkpoint(run.path / "checkpoints" / "cascade_FilterThresNet_net0_rep0_step1.pt")
    checkpoint["model"] = {name: 1.1 * value if value.is_floating_point() else value for name, value in checkpoint["model"].items()}
    atomic_torch_save(copy / "checkpoints" / "cascade_FilterThresNet_net0_rep0_step1.pt", checkpoint)
    added = []
    changed, _ = analyse_run(Run(copy), label, settings, dict(cache), saved=lambda: added.append(1))
    assert len(added) == 1 + 2 + 3  # the FT model on all data subsets and its same-support control (its size, hence its control, is unchanged)
    by_method = lambda rows: {row["method"]: row for row in rows}
    assert by_method(changed)["FilterThresNet"]["lambda_max"] != by_method(uninterrupted)["FilterThresNet"]["lambda_max"]
    assert strip([by_method(changed)["ThresNet"]]) == strip([by_method(uninterrupted)["ThresNet"]])
    other = []
    analyse_run(run, label, FlatnessSettings(subset=0.1, probes=7), dict(cache), saved=lambda: other.append(1))
    assert len(other) == 3 + 3 + 2  # the full measurements on data subset 0; λ_max alone on the others is reused


def test_cli_measures_several_nets_each_against_its_own_dense_net(results_tree):
    """--nets 0 1: each net's rows are those of a call for that net alone (its own dense Hessian and
    control subsets); the spectrum rows carry the net, and both figures are drawn."""
    results, folder = results_tree
    read = lambda path: list(csv.DictReader(open(next(path.glob("flatness_*.csv")), newline="")))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    for nets in (["0"], ["1"], ["0", "1"]):
        assert flatness.main([str(results), "--out", str(folder / f"nets_{'_'.join(nets)}"), "--nets", *nets]) == 0
    both = read(folder / "nets_0_1")
    assert [(row["net"], row["method"]) for row in both] == [(net, method) for net in "01" for method in ("dense", "FilterThresNet", "ThresNet")]
    for net in "01":
        assert strip([row for row in both if row["net"] == net]) == strip(read(folder / f"nets_{net}"))
    dense = {row["net"]: float(row["lambda_max"]) for row in both if row["method"] == "dense"}
    assert dense["0"] != pytest.approx(dense["1"], rel=1e-6)  # two trained nets, two Hessians
    spectrum = list(csv.DictReader(open(next((folder / "nets_0_1").glob("spectrum_*.csv")), newline="")))
    assert {row["net"] for row in spectrum} == {"0", "1"}
    for name in ("flatness", "spectrum"):
        assert len(list((folder / "nets_0_1").glob(f"{name}_*.png"))) == 1


def test_flatness_figure_takes_a_log_axis_where_the_values_span_decades():
    """λ_max of a sharp sparse classifier (4) beside flat moderate ratios (0.01) is drawn on a log
    axis; a trace within one decade stays linear; κ is always logarithmic."""
    def row(method, step, ratio, lambda_max, trace):
        return dict(mode="cascade" if step else "train", method=method, net=0, step=step, prune_ratio=ratio,
                    step_prune_ratio=ratio, lambda_max=lambda_max, trace=trace, trace_stderr=0.0, condition_number=1e4,
                    lambda_min=1e-4, control_lambda_max_mean=0.05, control_lambda_max_std=0.01, control_trace_mean=0.5,
                    control_trace_std=0.1, control_condition_mean=1e5, control_condition_std=1e4,
                    lambda_max_subsets_mean=lambda_max, lambda_max_subsets_std=0.1 * lambda_max, data_subsets=3,
                    same_support_lambda_max=0.05, same_support_trace=0.6,
                    same_support_lambda_max_subsets_mean=0.05, same_support_lambda_max_subsets_std=math.nan,
                    same_support_data_subsets=1)
    rows = [row("dense", 0, 0.0, 0.1, 1.0), row("ThresNet", 1, 0.5, 0.01, 0.5), row("ThresNet", 2, 0.9, 4.0, 2.0)]
    figure = flatness.plot_flatness(rows, "synthetic")
    assert [axis.get_yscale() for axis in figure.axes[:3]] == ["log", "linear", "log"]
    assert not flatness.spans_decades([0.0, 5.0]) and not flatness.spans_decades([float("nan")])
    # λ_max is the mean over the data subsets; the same-support control is dotted in the method's colour
    solid, dashed, dotted = ([line for line in figure.axes[0].get_lines() if line.get_linestyle() == style] for style in ("-", "--", ":"))
    assert len(solid) == len(dashed) == len(dotted) == 1
    np.testing.assert_allclose(np.asarray(solid[0].get_ydata(), dtype=float), [0.1, 0.01, 4.0])
    np.testing.assert_allclose(np.asarray(dotted[0].get_ydata(), dtype=float), [0.05, 0.05, 0.05])
    assert dotted[0].get_color() == solid[0].get_color()
    assert figure.axes[0].get_ylabel() == "λ_max, mean ± std\nover data subsets"
    # the legend: a column per method, then the two controls one below the other
    assert [text.get_text() for text in figure.legends[0].get_texts()] == [
        "WT", "", f"dashed: {flatness.CONTROL_LABEL}", f"dotted: {flatness.SAME_SUPPORT_LABEL}"]
    assert [sum(line.get_linestyle() == ":" for line in axis.get_lines()) for axis in figure.axes[:3]] == [1, 1, 0]  # no κ
