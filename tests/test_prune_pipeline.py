"""Pruning through the real CLI (docs/PRUNING.md, docs/RESULTS.md): tiny cascade/retrain runs of `python -m experiment.main`
in subprocesses, checked through the checkpoints and metrics they leave behind.

* a cascade run has one metrics row per dense net and per (method, net, step), with achieved prune
  ratios on target; its checkpoints load with weights_only=True, their masks hold, zeros only grow,
  and every WT/FT step keeps exactly what the rule says given the previous step's checkpoint;
* in `retrain` mode every step is pruned from the dense net instead, so the two modes differ;
* a run SIGKILLed in the middle of a retraining step resumes and ends identical to an uninterrupted one;
* adding ThresNet to a finished FilterThresNet-only run trains only the ThresNet chain;
* the end-of-run table is printed and the prune curve is plotted.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import HANG_TIMEOUT, NODE_BASE, cli_env, hang_message, run_process
from experiment.models import build_model
from experiment.pruning.layers import prunable_chains
from experiment.pruning.rules import weight_threshold

pytestmark = pytest.mark.slow  # runs prune chains end to end in subprocesses

NETWORK = "node_l2_h64_tanh_da"  # 322 parameters: one weight is 0.31%, one hidden neuron (5 parameters) 1.55%
NUM_PARAMS = 322
KEEPS = (0.7, 0.5, 0.3)
METHODS = ("FilterThresNet", "ThresNet")
RETRAIN_EPOCHS = 3
WT_TOLERANCE = 0.005  # docs/PRUNING.md
FT_TOLERANCE = 2.5 / NUM_PARAMS + 1e-9  # half a neuron: the best FT can do on this net


# ------------------------------------------------------------------------------------------ helpers


def write_config(folder: Path, *, methods=METHODS, retraining: dict | None = None) -> Path:
    """A tiny cascade config including the repository's node base by absolute path."""
    content = {
        "file": str(NODE_BASE),
        "network": {"name": NETWORK, "dataset": "ToyMoons"},
        "training": {"numEpochs": 2, "batchSize": 128},
        # batch 64 makes a retraining epoch last long enough (~0.5 s) to be interrupted reliably
        "retraining": retraining or {"numEpochs": RETRAIN_EPOCHS, "batchSize": 64},
        "experiments": {"mode": "cascade", "numNets": 1, "methods": list(methods),
                        "spacing": [{"type": "manual", "values": list(KEEPS)}]},
        "directories": {"training_data": str(folder / "training_data")},
    }
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def cli(config: Path, results: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "experiment.main", str(config), f"directories.results={results}", *overrides]


def run_cli(config: Path, results: Path, *overrides: str) -> str:
    process = run_process(cli(config, results, *overrides), cwd=config.parent)
    output = process.stdout + process.stderr
    assert process.returncode == 0, f"exit {process.returncode}\n{output[-4000:]}"
    return output


def run_folder(results: Path) -> Path:
    folders = sorted(config.parent for config in results.glob("*/*/*/config.yaml"))
    assert len(folders) == 1, folders
    return folders[0]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def row_key(row: dict[str, str]) -> tuple:
    return row["mode"], row["method"], int(row["net"]), int(row["repetition"]), int(row["step"])


def load(folder: Path, name: str) -> dict:
    return torch.load(folder / "checkpoints" / f"{name}.pt", map_location="cpu", weights_only=True)


def step_name(mode: str, method: str, step: int) -> str:
    return f"{mode}_{method}_net0_rep0_step{step}"


def chain():
    """The prunable layers of the network (names only matter)."""
    return prunable_chains(build_model(NETWORK, 2))[0]


def flat(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[name].flatten() for name in names])


def expected_wt_masks(weights: dict, masks: dict, target: float) -> dict[str, torch.Tensor]:
    """WT applied to the weights and masks of a checkpoint (the rule's own properties are tested in
    tests/test_pruning.py; here: the chain hands it the previous step's retrained weights)."""
    model = build_model(NETWORK, 2)
    model.load_state_dict(weights)
    return weight_threshold(model, target, masks)


def wt_survivors(checkpoint: dict) -> torch.Tensor:
    return flat(checkpoint["masks"], [layer.weight for layer in chain()]) > 0


def expected_ft_neurons(weights: dict, masks: dict, kept_count: int) -> torch.Tensor:
    """FT: the `kept_count` hidden neurons with the largest L1 row norm among those still alive."""
    hidden = chain()[0].weight
    rows = weights[hidden].flatten(1)
    alive = masks[hidden].flatten(1).any(dim=1) if masks else torch.ones(rows.shape[0], dtype=torch.bool)
    norms = torch.where(alive, rows.abs().sum(1), torch.full((rows.shape[0],), -1.0))
    expected = torch.zeros(rows.shape[0], dtype=torch.bool)
    expected[torch.topk(norms, kept_count).indices] = True
    return expected


def ft_neurons(checkpoint: dict) -> torch.Tensor:
    return checkpoint["masks"][chain()[0].weight].flatten(1).any(dim=1)


def progress_files(results: Path, name: str) -> list[Path]:
    """The in-progress training state(s) of model `name` (progress/{name}.pt, or {name}_{tag}.pt
    where the runner tags a pruned step's progress with its ratio history)."""
    return sorted(path for pattern in (f"{name}.pt", f"{name}_*.pt") for path in results.glob(f"*/*/*/progress/{pattern}"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the shared cascade run


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory):
    """One uninterrupted tiny cascade run with both methods and three ratios (read-only for tests)."""
    folder = tmp_path_factory.mktemp("cascade")
    config, results = write_config(folder), folder / "results"
    output = run_cli(config, results)
    return config, results, run_folder(results), output


def test_cascade_metrics_have_one_row_per_model_on_target(cascade_run):
    _, _, run, _ = cascade_run
    rows = read_rows(run / "metrics.csv")
    keys = [row_key(row) for row in rows]
    expected = [("train", "dense", 0, 0, 0)] + [("cascade", method, 0, 0, step) for method in METHODS for step in (1, 2, 3)]
    assert sorted(keys) == sorted(expected), "missing or duplicate metrics rows"
    for row in rows:
        step, method = int(row["step"]), row["method"]
        target = 0.0 if method == "dense" else 1.0 - KEEPS[step - 1]
        assert float(row["target_prune_ratio"]) == pytest.approx(target)
        assert int(row["num_params"]) == NUM_PARAMS
        achieved = float(row["prune_ratio"])
        assert achieved == pytest.approx(1 - int(row["nonzero_params"]) / NUM_PARAMS)
        tolerance = FT_TOLERANCE if method == "FilterThresNet" else WT_TOLERANCE
        assert abs(achieved - target) <= tolerance, f"{method} step {step}: PR {achieved:.4f} for target {target:.4f}"
        assert int(row["epochs"]) == (2 if method == "dense" else RETRAIN_EPOCHS)
        if method != "dense":
            # the row describes the checkpoint it was computed from
            checkpoint = load(run, step_name("cascade", method, step))
            nonzero = sum(int(value.count_nonzero()) for value in checkpoint["model"].values())
            assert nonzero == int(row["nonzero_params"])


@pytest.mark.parametrize("method", METHODS)
def test_cascade_checkpoints_hold_their_masks_and_only_add_zeros(cascade_run, method):
    _, _, run, _ = cascade_run
    previous = load(run, "dense_net0")
    assert previous["masks"] == {}
    for step, keep in enumerate(KEEPS, start=1):
        checkpoint = load(run, step_name("cascade", method, step))
        weights, masks = checkpoint["model"], checkpoint["masks"]
        assert checkpoint["keep_ratios"] == pytest.approx(list(KEEPS[:step]))
        assert checkpoint["method"] == method
        for name, mask in masks.items():
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            assert (weights[name][mask == 0] == 0).all(), f"step {step}: {name} is non-zero where masked"
        # zeros (and masked entries) only grow from one step to the next
        for name, value in previous["model"].items():
            assert not ((value == 0) & (weights[name] != 0)).any(), f"step {step}: {name} regrew a zero"
        for name, mask in previous["masks"].items():
            assert not ((mask == 0) & (masks[name] > 0)).any(), f"step {step}: {name} unmasked an entry"
        previous = checkpoint


def test_cascade_wt_prunes_the_previous_steps_retrained_weights(cascade_run):
    _, _, run, _ = cascade_run
    previous = load(run, "dense_net0")
    for step in (1, 2, 3):
        checkpoint = load(run, step_name("cascade", "ThresNet", step))
        expected = expected_wt_masks(previous["model"], previous["masks"], 1.0 - KEEPS[step - 1])
        assert set(checkpoint["masks"]) == set(expected)
        for name, mask in expected.items():
            assert torch.equal(checkpoint["masks"][name], mask), f"step {step}: {name} is not WT of step {step - 1}'s retrained weights"
        previous = checkpoint


def test_cascade_ft_keeps_the_largest_rows_of_the_previous_step(cascade_run):
    _, _, run, _ = cascade_run
    hidden, output = chain()
    previous = load(run, "dense_net0")
    for step in (1, 2, 3):
        checkpoint = load(run, step_name("cascade", "FilterThresNet", step))
        weights = checkpoint["model"]
        kept = ft_neurons(checkpoint)
        assert torch.equal(kept, expected_ft_neurons(previous["model"], previous["masks"], int(kept.sum())))
        # removed neurons: row, bias and output-layer column all zero; kept ones: whole rows; outputs intact
        assert torch.equal(weights[hidden.weight] != 0, kept[:, None].expand_as(weights[hidden.weight]))
        assert torch.equal(weights[hidden.bias] != 0, kept)
        assert torch.equal(weights[output.weight] != 0, kept[None, :].expand_as(weights[output.weight]))
        assert (weights[output.bias] != 0).all()
        previous = checkpoint


def test_end_of_run_table_and_prune_curve(cascade_run):
    _, _, run, output = cascade_run
    assert "mean ± std over nets" in output
    for method in METHODS:
        assert method in output
    plot = run / "prune_curve.png"
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ retrain vs cascade


@pytest.fixture(scope="module")
def retrain_run(cascade_run, tmp_path_factory):
    """The same config in `retrain` mode, started from a copy of the cascade run's folder (the run id
    ignores `experiments`, so it shares the dense net)."""
    config, results, _, _ = cascade_run
    copy = tmp_path_factory.mktemp("retrain") / "results"
    shutil.copytree(results, copy)
    output = run_cli(config, copy, "experiments.mode=retrain")
    return run_folder(copy), output


def test_retrain_mode_prunes_every_step_from_the_dense_net(cascade_run, retrain_run):
    _, _, cascade, _ = cascade_run
    retrain, output = retrain_run
    assert "training dense_net0" not in output, "the dense net was trained again"
    dense = load(retrain, "dense_net0")
    assert torch.equal(dense["model"][chain()[0].weight], load(cascade, "dense_net0")["model"][chain()[0].weight])

    rows = read_rows(retrain / "metrics.csv")
    retrain_keys = sorted(row_key(row) for row in rows if row["mode"] == "retrain")
    assert retrain_keys == sorted(("retrain", method, 0, 0, step) for method in METHODS for step in (1, 2, 3))
    for row in rows:
        if row["mode"] == "retrain":
            target = 1.0 - KEEPS[int(row["step"]) - 1]
            assert float(row["target_prune_ratio"]) == pytest.approx(target)
            tolerance = FT_TOLERANCE if row["method"] == "FilterThresNet" else WT_TOLERANCE
            assert abs(float(row["prune_ratio"]) - target) <= tolerance

    for step, keep in enumerate(KEEPS, start=1):
        wt = load(retrain, step_name("retrain", "ThresNet", step))
        ft = load(retrain, step_name("retrain", "FilterThresNet", step))
        assert wt["keep_ratios"] == pytest.approx([keep]) and ft["keep_ratios"] == pytest.approx([keep])
        # every step's masks come from the dense net's weights, with no earlier masks
        assert torch.equal(wt_survivors(wt), wt_survivors({"masks": expected_wt_masks(dense["model"], {}, 1.0 - keep)})), f"WT step {step}"
        kept = ft_neurons(ft)
        assert torch.equal(kept, expected_ft_neurons(dense["model"], {}, int(kept.sum()))), f"FT step {step}"
        for checkpoint in (wt, ft):
            for name, mask in checkpoint["masks"].items():
                assert (checkpoint["model"][name][mask == 0] == 0).all()


def test_cascade_and_retrain_modes_differ_from_step_two(cascade_run, retrain_run):
    _, _, cascade, _ = cascade_run
    retrain, _ = retrain_run
    dense = load(cascade, "dense_net0")
    # step 1 starts from the dense net in both modes: same masks
    for method in METHODS:
        first_cascade, first_retrain = (load(folder, step_name(mode, method, 1)) for folder, mode in
                                        ((cascade, "cascade"), (retrain, "retrain")))
        for name, mask in first_cascade["masks"].items():
            assert torch.equal(mask, first_retrain["masks"][name]), f"{method} step 1: {name}"
    # step 2: cascade derives from the retrained step 1, retrain from the dense net
    cascade_wt = load(cascade, step_name("cascade", "ThresNet", 2))
    retrain_wt = load(retrain, step_name("retrain", "ThresNet", 2))
    assert not torch.equal(wt_survivors(cascade_wt), wt_survivors(retrain_wt)), "cascade and retrain WT step 2 coincide"
    from_dense = expected_wt_masks(dense["model"], {}, 1.0 - KEEPS[1])
    assert not torch.equal(wt_survivors(cascade_wt), wt_survivors({"masks": from_dense})), "cascade step 2 looks pruned from the dense net"
    assert cascade_wt["keep_ratios"] == pytest.approx(list(KEEPS[:2]))
    assert retrain_wt["keep_ratios"] == pytest.approx([KEEPS[1]])
    assert any(not torch.equal(cascade_wt["model"][name], retrain_wt["model"][name]) for name in cascade_wt["model"])


# ---------------------------------------------------------------------- SIGKILL during retraining


def test_kill_during_retraining_resumes_identically(cascade_run, tmp_path):
    config, results_a, run_a, _ = cascade_run
    results_b = tmp_path / "results"
    victim = step_name("cascade", "ThresNet", 2)  # a pruned step after a finished pruned step of the same chain
    log_path = tmp_path / "killed_run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(cli(config, results_b), cwd=config.parent, env=cli_env(), stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            killed_at = None
            deadline = time.monotonic() + HANG_TIMEOUT
            while killed_at is None and time.monotonic() < deadline:
                if process.poll() is not None:
                    break
                for progress in progress_files(results_b, victim):
                    try:
                        epoch = torch.load(progress, map_location="cpu", weights_only=True)["epoch"]
                    except (FileNotFoundError, RuntimeError, EOFError):
                        continue
                    if 1 <= epoch < RETRAIN_EPOCHS:
                        os.kill(process.pid, signal.SIGKILL)
                        killed_at = epoch
                time.sleep(0.005)
        finally:
            if process.poll() is None and killed_at is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert killed_at is not None, (f"never saw {victim} mid-retraining (the run ended, or {hang_message('it')}):\n"
                                   f"{log_path.read_text()[-3000:]}")
    assert process.returncode == -signal.SIGKILL
    run_b = run_folder(results_b)
    assert run_b.relative_to(results_b) == run_a.relative_to(results_a)
    progress = progress_files(results_b, victim)
    assert len(progress) == 1, f"the kill did not land during retraining: {progress}"
    interrupted = torch.load(progress[0], map_location="cpu", weights_only=True)
    assert 1 <= interrupted["epoch"] < RETRAIN_EPOCHS
    assert not (run_b / "checkpoints" / f"{victim}.pt").exists()
    assert len(read_rows(run_b / "metrics.csv")) < len(read_rows(run_a / "metrics.csv"))

    output = run_cli(config, results_b)
    assert f"retraining {victim}" in output
    assert "training dense_net0" not in output
    assert "retraining cascade_FilterThresNet" not in output
    assert f"retraining {step_name('cascade', 'ThresNet', 1)}" not in output
    assert not list((run_b / "progress").glob("*.pt")), "progress files left behind"

    # metrics: same keys, no duplicates, identical values but for the wall time
    rows_a, rows_b = read_rows(run_a / "metrics.csv"), read_rows(run_b / "metrics.csv")
    keys_a, keys_b = sorted(map(row_key, rows_a)), sorted(map(row_key, rows_b))
    assert keys_b == keys_a and len(set(keys_b)) == len(keys_b)
    strip = lambda rows: sorted(({k: v for k, v in row.items() if k != "train_seconds"} for row in rows), key=row_key)
    assert strip(rows_b) == strip(rows_a)

    # checkpoints: same files, bit-identical tensors
    names_a = sorted(path.name for path in (run_a / "checkpoints").glob("*.pt"))
    assert sorted(path.name for path in (run_b / "checkpoints").glob("*.pt")) == names_a
    for name in names_a:
        a, b = (load(run, name[:-3]) for run in (run_a, run_b))
        assert a.keys() == b.keys()
        for part in ("model", "masks"):
            assert a[part].keys() == b[part].keys(), f"{name}: {part}"
            for key in a[part]:
                assert torch.equal(a[part][key], b[part][key]), f"{name}: {part}[{key}] differs"
        ignored = ("model", "masks", "train_seconds", "curve", "sha256")  # (the checksum covers the timings)
        assert {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}, name
        untimed = lambda curve: [{k: v for k, v in row.items() if k != "seconds"} for row in curve]
        assert untimed(a.get("curve", [])) == untimed(b.get("curve", [])), name
    # the victim resumed from its progress file: the epochs done before the kill are kept as they were
    # (their wall times included), not recomputed
    resumed_curve = read_rows(run_b / "curves" / f"{victim}.csv")
    assert len(resumed_curve) == RETRAIN_EPOCHS
    for saved, kept in zip(interrupted["curve"], resumed_curve):
        assert float(kept["seconds"]) == saved["seconds"] and int(kept["epoch"]) == saved["epoch"]
    # training curves (including the resumed one) agree but for the timings
    for curve in (run_a / "curves").glob("*.csv"):
        without_time = lambda path: [{k: v for k, v in row.items() if k != "seconds"} for row in read_rows(path)]
        assert without_time(run_b / "curves" / curve.name) == without_time(curve), curve.name


# ---------------------------------------------------------------------------- adding a method later


def test_adding_thresnet_to_a_finished_filterthresnet_run_trains_only_thresnet(tmp_path):
    config = write_config(tmp_path, methods=["FilterThresNet"], retraining={"numEpochs": 2, "batchSize": 128})
    results = tmp_path / "results"
    first = run_cli(config, results)
    assert "training dense_net0" in first and "retraining cascade_FilterThresNet_net0_rep0_step3" in first
    assert "ThresNet_net0" not in first.replace("FilterThresNet_net0", "")
    run = run_folder(results)
    before = {path.name: sha256(path) for path in (run / "checkpoints").glob("*.pt")}
    rows_before = read_rows(run / "metrics.csv")

    second = run_cli(config, results, "experiments.methods=[FilterThresNet, ThresNet]")
    assert run_folder(results) == run
    assert "training dense_net" not in second
    assert "retraining cascade_FilterThresNet" not in second
    for step in (1, 2, 3):
        assert f"retraining cascade_ThresNet_net0_rep0_step{step}" in second
    assert "mean ± std over nets" in second
    # the dense net and the FT chain are untouched, byte for byte; their rows too
    after = {path.name: sha256(path) for path in (run / "checkpoints").glob("*.pt")}
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) == {f"{step_name('cascade', 'ThresNet', step)}.pt" for step in (1, 2, 3)}
    rows_after = read_rows(run / "metrics.csv")
    assert [row for row in rows_after if row["method"] != "ThresNet"] == rows_before
    assert sorted(row_key(row) for row in rows_after if row["method"] == "ThresNet") == \
           [("cascade", "ThresNet", 0, 0, step) for step in (1, 2, 3)]
