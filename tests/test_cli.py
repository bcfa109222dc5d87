"""The command lines around a run: the paper scripts find a run made with `key.path=value`
overrides when given the same overrides; the installed `sparse-flows` command is experiment.main,
the install accepts any torch 2.x while requirements.txt keeps the tested pin, and --help shows
examples and where the config keys are documented."""

from __future__ import annotations

import importlib
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import setuptools

from conftest import REPO, describe, run_cli, run_process, tiny_config
from experiment import main as experiment_main
from paper import tables

pytestmark = pytest.mark.slow  # runs the command line in subprocesses

OVERRIDE = "training.numEpochs=1"


@pytest.fixture(scope="module")
def overridden_run(tmp_path_factory) -> Path:
    """A tiny config (1 net) run with OVERRIDE, which changes its run id."""
    folder = tmp_path_factory.mktemp("overridden")
    config = tiny_config(folder / "tiny.yaml", folder / "results", epochs=2, nets=1)
    process = run_cli(config, OVERRIDE, cwd=folder)
    assert process.returncode == 0, describe(process)
    return config


def paper_command(script: str, *arguments: str) -> subprocess.CompletedProcess:
    return run_process([sys.executable, "-m", f"paper.{script}", *arguments], cwd=REPO)


def test_paper_scripts_find_the_run_of_the_same_overrides(overridden_run, tmp_path):
    process = paper_command("prune_curves", str(overridden_run), OVERRIDE, "--out", str(tmp_path / "curves"))
    assert process.returncode == 0, describe(process)
    assert list((tmp_path / "curves").glob("prune_curve_*.csv"))
    # options before the overrides too, as experiment.main takes them
    assert tables.main([str(overridden_run), "--out", str(tmp_path / "tables"), OVERRIDE]) == 0
    assert (tmp_path / "tables" / "results_table.md").exists()


def test_paper_scripts_without_the_overrides_find_no_results(overridden_run):
    process = paper_command("prune_curves", str(overridden_run))
    assert process.returncode == 1 and "no results yet" in process.stderr, describe(process)
    with pytest.raises(SystemExit, match=f"no results yet.*{OVERRIDE.replace('1', '3')}"):
        tables.main([str(overridden_run), OVERRIDE.replace("1", "3")])


def test_paper_scripts_refuse_overrides_for_a_folder_and_bad_overrides(overridden_run):
    with pytest.raises(SystemExit, match="only to a config file"):
        tables.main([str(overridden_run.parent / "results"), OVERRIDE])
    with pytest.raises(SystemExit, match="config error: .*malformed override"):
        tables.main([str(overridden_run), "training.numEpochs"])


def setup_arguments(monkeypatch) -> dict:
    """The keyword arguments setup.py passes to setuptools.setup, read by running it with setup()
    replaced (the installed package is another checkout, so its metadata would not tell)."""
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **arguments: captured.update(arguments))
    runpy.run_path(str(REPO / "setup.py"))
    return captured


def test_sparse_flows_command_is_experiment_main(monkeypatch):
    scripts = setup_arguments(monkeypatch)["entry_points"]["console_scripts"]
    name, target = (part.strip() for part in scripts[0].split("="))
    module, function = target.split(":")
    assert name == "sparse-flows" and len(scripts) == 1
    assert getattr(importlib.import_module(module), function) is experiment_main.main


def test_install_accepts_any_torch_2_while_requirements_pin_it(monkeypatch):
    requires = setup_arguments(monkeypatch)["install_requires"]
    assert "torch>=2.0,<3" in requires and not any(line.startswith("torch==") for line in requires)
    pinned = (REPO / "requirements.txt").read_text()
    assert "\ntorch==2.13.0\n" in pinned
    assert "pip install torch==2.13.0" in (REPO / "README.md").read_text()
    assert "pip install --quiet torch==2.13.0" in (REPO / ".ci" / "run").read_text()


def test_help_shows_examples_and_the_config_reference(capsys):
    with pytest.raises(SystemExit) as stop:
        experiment_main.parse_arguments(["--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    assert "docs/CONFIG.md" in shown and (REPO / "docs" / "CONFIG.md").exists()
    assert "python -m experiment.main param/quickstart.yaml training.numEpochs=2 --dry-run" in shown


def test_a_grid_of_overrides_is_one_experiment_per_combination_in_dry_run(tmp_path, capsys):
    config = tiny_config(tmp_path / "tiny.yaml", tmp_path / "results", nets=1)
    assert experiment_main.main([str(config), "training.optimizerKwargs.lr=0.01,0.05",
                                 "training.optimizerKwargs.weight_decay=0,1e-4,1e-3", "--dry-run"]) == 0
    folders = [line.split(":", 1)[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("run folder:")]
    assert len(folders) == len(set(folders)) == 6
    assert not (tmp_path / "results").exists()
