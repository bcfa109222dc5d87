"""What a researcher sees in the daily loop: a dry run leads with what the command costs; sweeps
read as sweeps (swept values in headers and titles, one table across the experiments, `n = 1` for a
single net); the folder results go to is said as an absolute path, with a note when the config's
own project already holds the run; `load_results` of a config selects exactly its runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import matplotlib
import pytest
import yaml

from conftest import PARAM, REPO, describe, run_cli, tiny_config
from experiment.config import load_configs
from experiment.main import main
from experiment.plan import make_plan
from experiment.projection import work_of
from experiment.results import RunDir, load_results, run_folder
from experiment.files import rows_to_csv
from experiment.scheduler import run_experiment

pytestmark = pytest.mark.slow  # runs small experiments end to end

CASCADE = {"mode": "cascade", "methods": ["ThresNet"], "spacing": [{"type": "manual", "values": [0.5, 0.3]}]}


def cascade_config(folder: Path, nets: int = 1) -> Path:
    return tiny_config(folder / "config.yaml", folder / "results", epochs=2, nets=nets,
                       retraining={"numEpochs": 1, "batchSize": 128}, experiments=CASCADE)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The config of a finished tiny cascade run (one net, two steps)."""
    config = cascade_config(tmp_path_factory.mktemp("finished"))
    run_experiment(load_configs(config)[0])
    return config


def test_a_dry_run_leads_with_the_cost(tmp_path, capsys):
    """Trainings and epochs to do and a projected time (calibrated: no epochs recorded yet), before
    the plans; no resolved YAML without --show-config; nothing written."""
    config = cascade_config(tmp_path, nets=2)
    assert main([str(config), "--dry-run", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[:8]
    assert f"results folder: {tmp_path / 'results'}" in head
    assert "experiments: 1; jobs: 4, 0 finished, 4 to do" in head
    assert "trainings: 6 to do of 6 (8 epochs)" in head  # 2 dense nets × 2 epochs + 2 chains × 2 steps × 1 epoch
    assert any(line.startswith("seconds per epoch, node_l2_h4_tanh_da on ToyMoons: ") and "calibrated" in line for line in head)
    assert any(re.match(r"projected wall time: ≈ \d+ s with --workers 2, ≈ \d+ s of one process", line) for line in head)
    assert "network:\n  name:" not in out and "run id:" in out
    assert not (tmp_path / "results").exists()
    assert main([str(config), "--dry-run", "--show-config"]) == 0
    assert "network:\n  name: node_l2_h4_tanh_da" in capsys.readouterr().out


def test_every_row_records_the_solver_backend(finished):
    run = RunDir(make_plan(load_configs(finished)[0]).run_folder)
    assert {row["backend"] for row in run.read_metrics()} == {"fused"}  # node_l2_h4_tanh_da: an MLP field, dopri5, adjoint


def test_a_dry_run_of_a_finished_run_says_nothing_is_left(finished, capsys):
    assert main([str(finished), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "jobs: 2, 2 finished, 0 to do" in out and "nothing left to do" in out and "projected" not in out
    assert out.count("  (finished)") == 2


def test_the_projection_uses_recorded_epochs_and_counts_what_is_left(finished, capsys):
    """One more net for the finished run: its 3 trainings are left, timed from the recorded epochs."""
    assert main([str(finished), "experiments.numNets=2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trainings: 3 to do of 6 (4 epochs)" in out
    assert re.search(r"seconds per epoch, node_l2_h4_tanh_da on ToyMoons: [\d.]+ \(median of 4 recorded epochs under ", out)
    plan = make_plan(load_configs(finished, ["experiments.numNets=2"])[0])
    work = work_of(plan, RunDir(plan.run_folder))
    assert (work.trainings, work.left, work.epochs_left, work.longest_job_epochs) == (6, 3, 4, 2)


def test_a_sweep_reads_as_a_sweep(tmp_path):
    """Each experiment's header and table title name its swept value; one table across the sweep
    follows; a single net reads `n = 1`, not `± 0.0000`; the achieved ratio is labelled."""
    config = cascade_config(tmp_path)
    process = run_cli(config, "training.optimizerKwargs.lr=0.01,0.02")
    assert process.returncode == 0, describe(process)
    out = process.stdout
    assert "experiment 1 of 2: lr=0.01" in out and "experiment 2 of 2: lr=0.02" in out
    assert "node_l2_h4_tanh_da on ToyMoons (lr=0.02), run " in out
    assert "± 0.0000" not in out and "(n = 1)" in out and "(PR 0.500)" in out
    table = out.split("test top-1 error (%) across the sweep (mean ± std over nets):\n")[1].splitlines()
    assert table[0].split() == ["experiment", "dense", "WT", "@", "PR", "0.50", "WT", "@", "PR", "0.70"]
    assert table[1].startswith("lr=0.01 ") and table[2].startswith("lr=0.02 ")


def test_the_results_folder_of_the_configs_project_is_named_from_another_folder(tmp_path):
    """A project (param/ beside data/) holding a finished run; the same command from another folder
    would start a new results tree there: it says where it writes, and where the run already is."""
    project = tmp_path / "project"
    (project / "param").mkdir(parents=True)
    config = tiny_config(project / "param" / "tiny.yaml", Path("data/results"), epochs=1, nets=1)
    content = yaml.safe_load(config.read_text())
    content["directories"] = {"results": "./data/results", "training_data": "./data/training"}
    config.write_text(yaml.safe_dump(content))
    assert run_cli(config, cwd=project).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    process = run_cli(config, "--dry-run", cwd=elsewhere)
    assert process.returncode == 0, describe(process)
    plan = make_plan(load_configs(config)[0])
    assert f"results folder: {elsewhere / 'data' / 'results'}" in process.stdout
    assert (f"note: run {plan.run_id} already exists in {project / plan.run_folder}, the results folder of the "
            f"config's project; this command works in {elsewhere / plan.run_folder} instead") in process.stdout


def test_load_results_of_a_config_selects_exactly_its_runs(tmp_path, monkeypatch):
    """The README's pandas example, run verbatim in a results tree that also holds a decoy run of the
    same network and dataset: its frame holds the sweep's runs and no others."""
    pytest.importorskip("pandas")
    sweep = REPO / "param" / "toy" / "ffjord" / "gaussians" / "sweep_opt.yaml"
    wanted = set()
    for index, config in enumerate([*load_configs(sweep), *load_configs(sweep, ["seed=7"])]):  # seed 7: a decoy
        folder = tmp_path / run_folder(config)
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        rows = [{"mode": "train", "method": "dense", "net": 0, "repetition": 0, "step": 0, "target_prune_ratio": 0.0,
                 "prune_ratio": 0.0, "nll": 1.0 + index / 100},
                {"mode": "cascade", "method": "ThresNet", "net": 0, "repetition": 0, "step": 1, "target_prune_ratio": 0.2,
                 "prune_ratio": 0.2, "nll": 1.1 + index / 100}]
        (folder / "metrics.csv").write_text(rows_to_csv(rows))
        if config["seed"] != 7:
            wanted.add(folder.name)
    readme = (REPO / "README.md").read_text()
    code = readme.split("### Results in pandas", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    shutil.copytree(REPO / "param", tmp_path / "param")
    namespace: dict = {}
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["df"].run_id) == wanted and len(wanted) == len(load_configs(sweep))
    with pytest.raises(ValueError, match="no results yet"):
        load_results(PARAM / "quickstart.yaml", ["seed=12345"])
