"""The command lines around a run: the paper scripts find a run made with `key.path=value`
overrides when given the same overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env, describe, run_cli, tiny_config
from paper import tables

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
    return subprocess.run([sys.executable, "-m", f"paper.{script}", *arguments], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=120)


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
