"""End-to-end tests of `python -m experiment.main` (docs/RUNNING.md, docs/CONFIG.md, docs/RESULTS.md): real runs of tiny configs in
subprocesses, checked through the results tree they leave behind.

* a dense-only run writes the documented run folder, with loadable checkpoints;
* re-running trains nothing, adding nets trains only the new ones, and the run id ignores which/how
  many models are computed and where results go;
* a run killed with SIGKILL mid-training resumes and ends bit-identical to an uninterrupted one;
* with output redirected, each epoch is one plain log line (no tqdm frames), and the curve file grows
  epoch by epoch, a resumed run's without duplicate epochs;
* every config under param/ passes --dry-run from any working directory and writes nothing;
* bad configs fail with a `config error` naming the file and key path, before anything is written.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import (
    HANG_TIMEOUT, PARAM, REPO, TINY_NETWORK, cli_command, cli_env, describe, file_states, hang_message, load_weights, run_cli,
    the_run_folder, tiny_config, write_yaml,
)
from experiment.config import load_configs, settings_of
from experiment.data import load_dataset
from experiment.main import main
from experiment.models import build_model
from experiment.results import run_id
from experiment.files import rows_to_csv
from experiment.seeds import derive_seed
from experiment.training import loop
from experiment.training.evaluate import evaluate
from experiment.training.loop import TrainData, train
from experiment.training.losses import build_loss

EPOCHS = 3
METRIC_COLUMNS = ("method", "net", "repetition", "step", "prune_ratio", "num_params", "test_loss", "top1_acc", "mcorr",
                  "nfe_forward", "flops", "train_seconds")


# what a dense-only run folder holds at least (docs/RESULTS.md; reports such as plots may come on top)
RUN_FILES = {"config.yaml", "data_split.npz", "metrics.csv", "log.txt", "curves/dense_net0.csv",
             "curves/dense_net1.csv", "checkpoints/dense_net0.pt", "checkpoints/dense_net1.pt"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def without(rows: list[dict[str, str]], *columns: str) -> list[dict[str, str]]:
    return [{key: value for key, value in row.items() if key not in columns} for row in rows]


def training_log(process: subprocess.CompletedProcess) -> str:
    return process.stdout + process.stderr


# ------------------------------------------------------------------------------ a two-net dense run


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """One CLI run of a tiny dense-only config with two nets; shared by the tests that only read it
    or copy it (nothing here writes into it unless the runner misbehaves)."""
    folder = tmp_path_factory.mktemp("dense_run")
    results = folder / "results"
    config = tiny_config(folder / "tiny.yaml", results, epochs=EPOCHS, nets=2)
    process = run_cli(config, cwd=folder)
    assert process.returncode == 0, describe(process)
    return config, results, process


@pytest.mark.slow
def test_dense_run_writes_the_documented_run_folder(dense_run):
    config_path, results, process = dense_run
    config = load_configs(config_path)[0]
    run = the_run_folder(results)
    assert run == results / "ToyMoons" / TINY_NETWORK / run_id(config)

    # the resolved config, exactly
    assert yaml.safe_load((run / "config.yaml").read_text()) == config

    # the persisted validation split: 10% of the 1,024 training points, disjoint from the rest
    with np.load(run / "data_split.npz") as split:
        train, valid = split["train"], split["valid"]
    assert len(valid) == pytest.approx(102.4, abs=1)
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(1024))

    # one metrics row per dense net
    rows = read_rows(run / "metrics.csv")
    assert [(row["method"], row["net"], row["repetition"], row["step"]) for row in rows] == [
        ("dense", "0", "0", "0"), ("dense", "1", "0", "0")]
    assert set(METRIC_COLUMNS) <= set(rows[0])
    num_params = sum(parameter.numel() for parameter in build_model(TINY_NETWORK, 2).parameters())
    for row in rows:
        assert float(row["prune_ratio"]) == 0.0
        assert int(row["num_params"]) == num_params
        assert math.isfinite(float(row["test_loss"])) and float(row["test_loss"]) > 0
        assert 0.0 <= float(row["top1_acc"]) <= 1.0
        assert -1.0 <= float(row["mcorr"]) <= 1.0
        assert float(row["nfe_forward"]) > 0
        assert float(row["train_seconds"]) > 0

    # curves: one row per epoch
    for net in (0, 1):
        curve = read_rows(run / "curves" / f"dense_net{net}.csv")
        assert [int(row["epoch"]) for row in curve] == list(range(EPOCHS))
        assert all(math.isfinite(float(row["train_loss"])) for row in curve)

    # checkpoints load with weights_only into a freshly built model, and are the evaluated models
    splits = load_dataset("ToyMoons", config["directories"]["training_data"], derive_seed(config["seed"], "data"))
    x_test, y_test = splits.test.tensors
    loss = build_loss("CrossEntropyLoss", config["training"]["lossKwargs"], 2)
    states = []
    for row in rows:
        checkpoint = load_weights(run / "checkpoints" / f"dense_net{row['net']}.pt")
        model = build_model(TINY_NETWORK, 2)
        model.load_state_dict(checkpoint["model"])
        states.append(checkpoint["model"])
        result = evaluate(model, x_test, y_test, config["training"]["testBatchSize"], loss, [], 2)
        assert result.loss == pytest.approx(float(row["test_loss"]), rel=1e-5)
        nonzero_weights = sum(int(torch.count_nonzero(value)) for key, value in checkpoint["model"].items()
                              if key.endswith("weight"))
        assert float(row["flops"]) == pytest.approx(nonzero_weights * float(row["nfe_forward"]))
        assert checkpoint["epochs"] == EPOCHS
    assert any(not torch.equal(states[0][key], states[1][key]) for key in states[0]), "both nets are identical"

    # the log, and nothing left over from training or from atomic writes
    assert run_id(config) in (run / "log.txt").read_text()
    assert not list(run.glob("progress/*")), "a finished run left progress files"
    leftovers = [path for path in run.rglob("*") if path.name.endswith(".tmp") or path.name.startswith(".")]
    assert not leftovers
    files = {path.relative_to(run).as_posix() for path in run.rglob("*") if path.is_file()}
    assert RUN_FILES <= files
    assert not [name for name in files if name.startswith("progress/")]
    assert {name for name in files if name.startswith(("checkpoints/", "curves/"))} == {
        "curves/dense_net0.csv", "curves/dense_net1.csv", "checkpoints/dense_net0.pt", "checkpoints/dense_net1.pt"}
    assert "training dense_net0" in training_log(process) and "training dense_net1" in training_log(process)


@pytest.mark.slow
def test_rerunning_a_finished_run_trains_nothing(dense_run):
    config, results, _ = dense_run
    run = the_run_folder(results)
    before = file_states(run)
    log_before = (run / "log.txt").read_text()

    process = run_cli(config, cwd=config.parent)
    assert process.returncode == 0, describe(process)
    assert "training dense_net" not in training_log(process)
    assert "mean ± std over nets" in process.stdout
    # a finished run is only read: every file byte-identical with its mtime, the log and requests.yaml too
    assert file_states(run) == before
    assert (run / "log.txt").read_text() == log_before


@pytest.mark.slow
def test_more_nets_reuse_the_trained_ones(dense_run, tmp_path):
    config, results, _ = dense_run
    # a copy of the finished tree (mtimes kept) in a new results directory, run with one more net, a
    # different method list and a different data directory: all of them keep the run id
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    run = the_run_folder(copy)
    before = file_states(run)
    metrics_before = read_rows(run / "metrics.csv")

    process = run_cli(config, "experiments.numNets=3", "experiments.methods=[ThresNet]", f"directories.results={copy}",
                      f"directories.training_data={tmp_path / 'elsewhere'}", cwd=tmp_path)
    assert process.returncode == 0, describe(process)
    assert the_run_folder(copy) == run
    output = training_log(process)
    assert "training dense_net2" in output
    assert "training dense_net0" not in output and "training dense_net1" not in output
    after = file_states(run)
    for name in ("checkpoints/dense_net0.pt", "checkpoints/dense_net1.pt", "curves/dense_net0.csv",
                 "curves/dense_net1.csv", "data_split.npz"):
        assert after[name] == before[name], f"{name} changed although net 0 and 1 were already trained"
    metrics = read_rows(run / "metrics.csv")
    assert [row["net"] for row in metrics] == ["0", "1", "2"]
    assert metrics[:2] == metrics_before
    assert (run / "checkpoints" / "dense_net2.pt").exists() and (run / "curves" / "dense_net2.csv").exists()


def test_run_id_ignores_what_and_where_but_not_how(dense_run):
    config, _, _ = dense_run

    def identity(*overrides: str) -> str:
        return run_id(load_configs(config, overrides)[0])

    base = identity()
    same = [
        ("experiments.methods=[ThresNet]",),
        ("experiments.methods=[FilterThresNet, ThresNet]", "experiments.mode=cascade"),
        ("experiments.numNets=5",),
        ("directories.results=/somewhere/else", "directories.training_data=/data", "directories.local_data=/local"),
    ]
    for overrides in same:
        assert identity(*overrides) == base, overrides
    different = [("training.numEpochs=4",), ("seed=1",), ("training.optimizerKwargs.lr=0.02",),
                 (f"network.name={TINY_NETWORK.replace('h4', 'h5')}",)]
    for overrides in different:
        assert identity(*overrides) != base, overrides


# ------------------------------------------------------------------------ plain logs, growing curves

EPOCH_LINE = re.compile(r"^(?:.* )?(dense_net\d) epoch (\d+)/(\d+): train [-\d.]+ valid [-\d.]+ nfe \d+/\d+ "
                        r"[\d.]+ s lr [\d.e+-]+$")


def epoch_lines(text: str) -> list[tuple[str, int, int]]:
    """(model, epoch, of) of each plain epoch line in `text` (stdout, or log.txt with its prefixes)."""
    return [(match[1], int(match[2]), int(match[3])) for match in map(EPOCH_LINE.match, text.splitlines()) if match]


def test_redirected_output_logs_one_plain_line_per_epoch(dense_run):
    _, results, process = dense_run
    expected = [(f"dense_net{net}", epoch, EPOCHS) for net in (0, 1) for epoch in range(1, EPOCHS + 1)]
    assert epoch_lines(process.stdout) == expected, describe(process)
    assert epoch_lines((the_run_folder(results) / "log.txt").read_text()) == expected
    for output in (process.stdout, process.stderr):
        assert "\r" not in output and "\x1b" not in output, "tqdm frames in redirected output"


def test_the_curve_file_grows_every_epoch_and_a_resume_rewrites_it(tmp_path, monkeypatch):
    (config,) = load_configs(tiny_config(tmp_path / "tiny.yaml", tmp_path / "results"))
    torch.manual_seed(0)
    x = torch.randn(320, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    data = TrainData(x[:256], y[:256], x[256:], y[256:], 2)
    loss = build_loss(config["training"]["loss"], config["training"]["lossKwargs"], 2)
    schedule = replace(settings_of(config).training, num_epochs=4)
    curve_file = tmp_path / "curves" / "net.csv"
    seen = []  # the curve file's epochs whenever a progress file is saved

    def save_and_look(path, state):
        seen.append([int(row["epoch"]) for row in read_rows(curve_file)])
        save(path, state)

    save = loop.atomic_torch_save
    monkeypatch.setattr(loop, "atomic_torch_save", save_and_look)

    def run(name: str, num_epochs: int) -> list[dict]:
        torch.manual_seed(1)
        model = build_model(TINY_NETWORK, 2)
        return train(model, replace(schedule, num_epochs=num_epochs), data, loss, seed=3, progress_file=tmp_path / name,
                     progress_bars=False, curve_file=curve_file).curve

    curve_file.parent.mkdir()
    curve_file.write_text("stale\n")  # e.g. of an earlier ratio history: training afresh removes it
    run("interrupted.pt", 2)
    assert seen == [[0], [0, 1]]
    # as if killed after epoch 2's curve row but before its progress file: the resume drops that row
    curve_file.write_text(curve_file.read_text() + curve_file.read_text().splitlines()[-1].replace("1,", "2,", 1) + "\n")
    seen.clear()
    resumed = run("interrupted.pt", 4)
    assert seen == [[0, 1, 2], [0, 1, 2, 3]]
    resumed_text = curve_file.read_text()

    uninterrupted = run("whole.pt", 4)
    assert without(read_rows(curve_file), "seconds") == without(rows_of(resumed_text), "seconds")
    assert [row["epoch"] for row in resumed] == [row["epoch"] for row in uninterrupted] == [0, 1, 2, 3]
    assert resumed_text == rows_to_csv(resumed)  # what the runner's final write would write too


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


# ------------------------------------------------------------------------------------ SIGKILL resume

RESUME_EPOCHS = 8


def wait_for_epoch(process: subprocess.Popen, progress: Path, minimum: int) -> int:
    """Polls `progress` until its stored epoch is in [minimum, RESUME_EPOCHS); returns that epoch."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before it could be killed between epochs "
                        f"{minimum} and {RESUME_EPOCHS}; make its epochs slower or raise RESUME_EPOCHS")
        try:
            epoch = load_weights(progress)["epoch"]
        except (FileNotFoundError, EOFError):
            epoch = -1  # not written yet, or gone because the run just finished
        if minimum <= epoch < RESUME_EPOCHS:
            return epoch
        time.sleep(0.01)
    pytest.fail(hang_message(f"the run (no progress file with epoch >= {minimum} in {progress})"))


@pytest.mark.slow
def test_a_killed_run_resumes_bit_identically(tmp_path):
    settings = dict(epochs=RESUME_EPOCHS, nets=1, name="node_l2_h16_tanh_da", dataset="ToySpirals",
                    training={"testBatchSize": 64})
    reference_config = tiny_config(tmp_path / "a.yaml", tmp_path / "A", **settings)
    killed_config = tiny_config(tmp_path / "b.yaml", tmp_path / "B", **settings)
    assert run_id(load_configs(reference_config)[0]) == run_id(load_configs(killed_config)[0])

    reference = run_cli(reference_config, cwd=tmp_path)
    assert reference.returncode == 0, describe(reference)
    run_a = the_run_folder(tmp_path / "A")

    # start the same experiment elsewhere and SIGKILL it in the middle of training
    run_b = tmp_path / "B" / run_a.relative_to(tmp_path / "A")
    progress = run_b / "progress" / "dense_net0.pt"
    with open(tmp_path / "killed.out", "w") as out, open(tmp_path / "killed.err", "w") as err:
        process = subprocess.Popen(cli_command(killed_config), cwd=tmp_path, env=cli_env(), stdout=out, stderr=err)
        try:
            wait_for_epoch(process, progress, minimum=2)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=HANG_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode == 0:
        pytest.fail("the run finished before SIGKILL reached it; make its epochs slower or raise RESUME_EPOCHS")
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.err").read_text()[-3000:]
    assert not (run_b / "checkpoints" / "dense_net0.pt").exists()

    saved = load_weights(progress)  # the crash left a complete, loadable progress file
    assert 2 <= saved["epoch"] < RESUME_EPOCHS
    assert [row["epoch"] for row in saved["curve"]] == list(range(saved["epoch"]))
    # the curve file kept up: the progress file's epochs, or one more (its row is written just before)
    assert [int(row["epoch"]) for row in read_rows(run_b / "curves" / "dense_net0.csv")] in (
        list(range(saved["epoch"])), list(range(saved["epoch"] + 1)))
    model = build_model("node_l2_h16_tanh_da", 2)
    model.load_state_dict(saved["model"])

    resumed = run_cli(killed_config, cwd=tmp_path)
    assert resumed.returncode == 0, describe(resumed)
    assert "training dense_net0" in training_log(resumed)
    assert not progress.exists()

    # same numbers as the uninterrupted run; only wall times differ
    assert without(read_rows(run_b / "metrics.csv"), "train_seconds") == without(read_rows(run_a / "metrics.csv"),
                                                                                  "train_seconds")
    curve_b = read_rows(run_b / "curves" / "dense_net0.csv")
    assert without(curve_b, "seconds") == without(read_rows(run_a / "curves" / "dense_net0.csv"), "seconds")
    # the epochs before the kill were resumed from the progress file, not recomputed
    assert [float(row["seconds"]) for row in curve_b[:saved["epoch"]]] == [row["seconds"] for row in saved["curve"]]

    checkpoint_a = load_weights(run_a / "checkpoints" / "dense_net0.pt")
    checkpoint_b = load_weights(run_b / "checkpoints" / "dense_net0.pt")
    assert checkpoint_a["model"].keys() == checkpoint_b["model"].keys()
    for key, tensor in checkpoint_a["model"].items():
        assert torch.equal(tensor, checkpoint_b["model"][key]), key
    assert (checkpoint_a["epochs"], checkpoint_a["kept_epoch"]) == (checkpoint_b["epochs"], checkpoint_b["kept_epoch"])
    with np.load(run_a / "data_split.npz") as split_a, np.load(run_b / "data_split.npz") as split_b:
        assert np.array_equal(split_a["valid"], split_b["valid"])


# --------------------------------------------------------------------------- --dry-run of param/

CONFIG_FILES = sorted(PARAM.rglob("*.yaml"))


def entries(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")} if folder.exists() else set()


def check_dry_run_output(output: str, config: Path) -> None:
    expected = len(load_configs(config))
    assert output.count("run folder:") == expected
    assert output.count("# experiment ") == expected
    assert "trainings: " in output.split("# experiment ")[0]  # the cost comes first


def test_param_holds_the_paper_configs():
    assert len(CONFIG_FILES) >= 50
    assert PARAM / "quickstart.yaml" in CONFIG_FILES


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
@pytest.mark.parametrize("config", CONFIG_FILES, ids=[str(path.relative_to(PARAM)) for path in CONFIG_FILES])
def test_every_param_config_passes_dry_run(config, where, tmp_path, monkeypatch, capsys):
    """From the repository root (relative includes, as the README shows them) and from elsewhere;
    the results go to a folder of the test's own, so that runs in the checkout's data/ do not count."""
    results = tmp_path / "results"
    if where == "repo_root":
        cwd, argument = REPO, str(config.relative_to(REPO))
    else:
        cwd, argument = tmp_path / "cwd", str(config)
        cwd.mkdir()
    monkeypatch.chdir(cwd)

    assert main([argument, "--dry-run", "--no-calibration", f"directories.results={results}"]) == 0
    captured = capsys.readouterr()
    check_dry_run_output(captured.out, config)
    assert "config error" not in captured.err
    assert not results.exists(), "--dry-run wrote into the results folder"
    if where == "elsewhere":
        assert not list(cwd.iterdir()), "--dry-run wrote into the working directory"


@pytest.mark.slow
@pytest.mark.parametrize("config", ["quickstart.yaml", "toy/node/moons/sweep_solver.yaml",
                                    "toy/ffjord/spirals/cnf_l4_h64_sigmoid_da_high_tol.yaml"])
def test_dry_run_cli_from_another_folder(config, tmp_path):
    path = PARAM / config
    process = run_cli(path, "--dry-run", "--no-calibration", cwd=tmp_path)
    assert process.returncode == 0, describe(process)
    check_dry_run_output(process.stdout, path)
    assert not list(tmp_path.iterdir()), "--dry-run wrote into the working directory"


# ------------------------------------------------------------------------------------- bad configs

BAD_CONFIGS = {
    "unknown_key": ({"training": {"numEpoch": 3}}, "training.numEpoch"),
    "output_size": ({"network": {"outputSize": 3}}, "network.outputSize"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Each bad config run once through the CLI: name → (config path, results dir, process)."""
    runs = {}
    for name, (change, _) in BAD_CONFIGS.items():
        folder = tmp_path_factory.mktemp(name)
        config = tiny_config(folder / "bad.yaml", folder / "results", epochs=2, nets=1)
        content = yaml.safe_load(config.read_text())
        for section, values in change.items():
            content[section].update(values)
        write_yaml(config, content)
        runs[name] = (config, folder / "results", run_cli(config, cwd=folder))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_config_fails_before_writing(name, bad_runs):
    config, results, process = bad_runs[name]
    key = BAD_CONFIGS[name][1]
    assert process.returncode != 0, describe(process)
    assert "config error" in process.stderr, describe(process)
    assert key in process.stderr, describe(process)
    assert "Traceback" not in process.stderr, describe(process)
    assert not results.exists(), f"a failed config wrote {entries(results)}"
    assert not (config.parent / "training_data").exists()


@pytest.mark.parametrize("name", [
    "unknown_key",
    "output_size",
])
def test_bad_config_error_names_the_file(name, bad_runs):
    config, _, process = bad_runs[name]
    assert f"config error: {config}: {BAD_CONFIGS[name][1]}:" in process.stderr, describe(process)
