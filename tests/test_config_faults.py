"""Faults at the edge of a run's configuration, found by `python -m experiment.main` before anything is
written: bad optimizer values, `--threads` below 1, options after the overrides, and a
results folder that cannot be written. The YAML-level faults (repeated keys, alias bombs) are in
tests/test_config.py with the other malformed configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, tiny_config
from experiment.main import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A tiny valid config whose results go to tmp_path/results."""
    return tiny_config(tmp_path / "main.yaml", tmp_path / "results", epochs=1, nets=1)


@pytest.mark.parametrize("override, key, message", [
    ("training.optimizerKwargs.lr=-1", "training.optimizerKwargs.lr", "must be >= 0, got -1"),
    ("training.optimizerKwargs.lr=.nan", "training.optimizerKwargs.lr", "must be a finite number, got nan"),
    ("retraining.optimizerKwargs={lr: .inf}", "retraining.optimizerKwargs.lr", "must be a finite number, got inf"),
    ("training.optimizerKwargs.weight_decay=-0.1", "training.optimizerKwargs.weight_decay", "must be >= 0"),
])
def test_bad_optimizer_value_is_a_config_error_before_any_write(config, override, key, message, capsys):
    """These used to pass validation and fail in torch, after config.yaml, data_split.npz and log.txt
    were written."""
    assert main([str(config), override]) == 2
    assert f"config error: command line: {key}: {message}" in capsys.readouterr().err
    assert not (config.parent / "results").exists()


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_threads_below_one_is_a_usage_error(config, threads, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(config), "--threads", threads])
    assert exit_info.value.code == 2
    assert f"argument --threads: must be at least 1, got {threads}" in capsys.readouterr().err
    assert not (config.parent / "results").exists()


@pytest.mark.parametrize("order", [
    ["CONFIG", "--dry-run", "seed=3", "--show-config", "device=cpu"],
    ["CONFIG", "seed=3", "--show-config", "--dry-run", "device=cpu"],
    ["--show-config", "--dry-run", "CONFIG", "seed=3", "--threads", "2", "device=cpu"],
])
def test_options_and_overrides_in_any_order(config, order, capsys):
    assert main([str(config) if argument == "CONFIG" else argument for argument in order]) == 0
    printed = capsys.readouterr().out
    resolved = yaml.safe_load(printed.split("# experiment 1 of 1")[1].split("# plan")[0])
    assert (resolved["seed"], resolved["device"]) == (3, "cpu")
    assert not (config.parent / "results").exists()


@pytest.mark.slow
def test_results_folder_under_a_file(config, tmp_path):
    """Run for real (a subprocess): one line naming the folder, exit code 2, no traceback, nothing made."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    results = blocker / "results"
    finished = run_cli(config, f"directories.results={results}")
    assert finished.returncode == 2
    assert finished.stderr == f"error: results folder {results}: {blocker} is a file, not a folder\n"
    assert blocker.is_file() and blocker.read_text() == ""


def test_results_folder_is_a_file(config, tmp_path, capsys):
    results = tmp_path / "results.txt"
    results.write_text("")
    assert main([str(config), f"directories.results={results}"]) == 2
    assert capsys.readouterr().err == f"error: results folder {results}: {results} is a file, not a folder\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
@pytest.mark.parametrize("existing", [True, False])
def test_results_folder_not_writable(config, tmp_path, existing, capsys):
    """A read-only results folder, or a read-only folder to create it in."""
    locked = tmp_path / "locked"
    results = locked / "results" if existing else locked / "new" / "results"
    (results if existing else locked).mkdir(parents=True)
    locked.chmod(0o555)
    if existing:
        results.chmod(0o555)
    try:
        assert main([str(config), f"directories.results={results}"]) == 2
    finally:
        locked.chmod(0o755)
    action = "write in" if existing else f"create it in {locked}"
    assert capsys.readouterr().err == f"error: results folder {results}: no permission to {action}\n"
    assert sorted(path.name for path in locked.iterdir()) == (["results"] if existing else [])


def test_dry_run_does_not_look_at_the_results_folder(config, tmp_path):
    """--dry-run writes nothing, so a results folder it could not write is no reason to refuse it."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    assert main([str(config), "--dry-run", f"directories.results={blocker / 'results'}"]) == 0
