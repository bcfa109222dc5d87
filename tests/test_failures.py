"""A model that diverges or whose solves cannot finish fails alone: it gets a failed row in
metrics.csv (status "failed", the epoch and reason in `error`, no numbers), its chain stops there,
the rest of the sweep goes on, and the command ends with exit code 3 and a list of what failed.

* solves are bounded: `network.maxSteps` caps the fused dopri5 and torchdiffeq's alike, and
  torchdiffeq's failures (step-size underflow, too many steps) are SolverErrors naming the settings;
* one sweep of four tiny experiments: a dense net diverging (relu field, rk4, lr 1e6), a dense net whose solver
  underflows (dopri5 at tolerance 1e-300), a retraining step diverging, and a healthy run that
  completes after all of them; a rerun trains nothing and says the same.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from conftest import describe, file_states, run_cli, run_folders, tiny_config, write_yaml
from experiment.config import ConfigError, load_configs, settings_of
from experiment.models import SolverError, build_model
from experiment.results import Run, load_results, run_id
from experiment.report import MODELS_FAILED
from experiment.training.loop import TrainData, TrainingFailed, train
from experiment.training.losses import build_loss

pytestmark = pytest.mark.slow  # runs sweeps with failing models in subprocesses

RK4_NETWORK = "node_l2_h4_relu_rk4_adjoint"  # unbounded: lr 1e6 overflows at once (tanh stays finite)


@pytest.mark.parametrize("name, message", [
    ("node_l2_h4_tanh_da", r"dopri5: more than 3 steps \(network.maxSteps\)"),  # the fused solve
    ("node_l2_h4_tanh_da_autograd", r"torchdiffeq: max_num_steps exceeded .*at most 3 steps"),
])
def test_solves_stop_past_max_steps(name, message):
    torch.manual_seed(0)
    model = build_model(name, 2, atol=1e-12, rtol=1e-12, max_steps=3)
    with pytest.raises(SolverError, match=message):
        model(torch.randn(16, 2))


def test_torchdiffeq_step_size_underflow_is_a_solver_error_naming_the_settings():
    torch.manual_seed(0)
    model = build_model("node_l2_h4_tanh_da_autograd", 2, atol=1e-300, rtol=1e-300)
    with pytest.raises(SolverError, match=r"torchdiffeq: underflow in dt .*\(dopri5, atol 1e-300, rtol 1e-300"):
        model(torch.randn(16, 2))


def test_training_that_stiffens_the_field_fails_at_the_step_cap_instead_of_hanging(tmp_path):
    # lr 1e6 makes the field stiff at once: each dopri5 solve would take ever more steps (minutes)
    (config,) = load_configs(tiny_config(tmp_path / "tiny.yaml", tmp_path / "results"),
                             ["training.optimizerKwargs.lr=1.0e6"])
    torch.manual_seed(0)
    x = torch.randn(640, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    model = build_model("node_l2_h16_tanh_da", 2, max_steps=200)
    loss = build_loss(config["training"]["loss"], config["training"]["lossKwargs"], 2)
    with pytest.raises(TrainingFailed, match=r"^epoch 0: solver failed: dopri5: more than 200 steps") as failure:
        train(model, settings_of(config).training, TrainData(x[:512], y[:512], x[512:], y[512:], 2), loss, seed=0,
              progress_file=tmp_path / "progress.pt", progress_bars=False)
    assert failure.value.epoch == 0 and not (tmp_path / "progress.pt").exists()


def test_max_steps_is_validated_and_enters_the_run_id_only_when_changed(tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", tmp_path / "results")
    (default,) = load_configs(config)
    (same,) = load_configs(config, ["network.maxSteps=10000"])
    (raised,) = load_configs(config, ["network.maxSteps=50000"])
    assert default["network"]["maxSteps"] == 10_000
    assert run_id(same) == run_id(default) == run_id({**default, "network": {
        key: value for key, value in default["network"].items() if key != "maxSteps"}})  # runs made before the key
    assert run_id(raised) != run_id(default)
    with pytest.raises(ConfigError) as error:
        load_configs(config, ["network.maxSteps=0"])
    assert error.value.key == "network.maxSteps" and "at least 1" in error.value.message


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four experiments in one command: dense diverges, dense solver underflows, retraining step 1
    diverges, healthy (last, so it runs after every failure)."""
    folder = tmp_path_factory.mktemp("sweep")
    results = folder / "results"
    base = tiny_config(folder / "base.yaml", results, epochs=2, nets=1, name=RK4_NETWORK,
                       experiments={"mode": "cascade", "methods": ["ThresNet"],
                                    "spacing": [{"type": "manual", "values": [0.5, 0.25]}]},
                       retraining={"numEpochs": 1})
    underflowing = {"name": "node_l2_h4_tanh_da_autograd", "dataset": "ToyMoons", "outputSize": 2,
                    "tolerances": {"atol": 1e-300, "rtol": 1e-300}}
    config = write_yaml(folder / "sweep.yaml", {"file": str(base), "customizations": [
        {"key": ["training", "optimizerKwargs", "lr"], "value": 1.0e6},
        {"key": ["network"], "value": underflowing},
        {"key": ["retraining", "optimizerKwargs", "lr"], "value": 1.0e6},
        {"key": ["seed"], "value": 7},
    ]})
    process = run_cli(config, cwd=folder)
    return config, results, process


def runs_by_kind(results) -> dict[str, Run]:
    """The sweep's run folders, by what each experiment does."""
    runs = [Run(path) for path in run_folders(results)]
    assert len(runs) == 4, [run.path for run in runs]

    def kind(run: Run) -> str:
        if run.config["network"]["tolerances"]["atol"] == 1e-300:
            return "underflow"
        if run.config["training"]["optimizerKwargs"]["lr"] == 1e6:
            return "dense diverges"
        return "retraining diverges" if run.config["retraining"]["optimizerKwargs"]["lr"] == 1e6 else "healthy"
    return {kind(run): run for run in runs}


def test_a_sweep_with_failing_models_goes_on_and_ends_with_a_summary(sweep):
    _, results, process = sweep
    assert process.returncode == MODELS_FAILED, describe(process)
    runs = runs_by_kind(results)
    assert set(runs) == {"dense diverges", "underflow", "retraining diverges", "healthy"}

    diverged = runs["dense diverges"]
    assert diverged.rows == [] and len(diverged.failures) == 1  # the dense net failed: no chain ran
    assert re.fullmatch(r"training epoch \d+: non-finite (parameters after batch \d+|training loss|validation loss).*",
                        diverged.failures[0]["error"]), diverged.failures[0]
    assert not (diverged.path / "checkpoints").exists() or not any((diverged.path / "checkpoints").iterdir())

    underflow = runs["underflow"].failures
    assert [row["method"] for row in underflow] == ["dense"] and runs["underflow"].rows == []
    assert re.fullmatch(r"training epoch 0: solver failed: torchdiffeq: underflow in dt .*atol 1e-300, rtol 1e-300.*",
                        underflow[0]["error"]), underflow[0]

    retrained = runs["retraining diverges"]
    assert [(row["method"], row["status"]) for row in retrained.rows] == [("dense", "ok")]
    assert [(row["method"], row["step"]) for row in retrained.failures] == [("ThresNet", 1)]  # the chain stopped there
    assert retrained.failures[0]["error"].startswith("retraining epoch 0: non-finite")
    assert not (retrained.path / "checkpoints" / "cascade_ThresNet_net0_rep0_step1.pt").exists()

    healthy = runs["healthy"]
    assert healthy.failures == [] and [(row["method"], row["step"]) for row in healthy.rows] == [
        ("dense", 0), ("ThresNet", 1), ("ThresNet", 2)]

    summary = process.stderr[process.stderr.index("3 model(s) failed"):]
    for run, model in ((diverged, "dense_net0"), (runs["underflow"], "dense_net0"),
                       (retrained, "cascade_ThresNet_net0_rep0_step1")):
        assert re.search(rf"{re.escape(str(run.path))} {model}: (re)?training epoch \d+: ", summary), summary
    assert "experiment 4 of 4" in process.stdout


def test_no_row_holds_non_finite_numbers_unless_marked_failed(sweep):
    _, results, _ = sweep
    for row in load_results(results):  # the finished models only
        assert row["status"] == "ok" and row["error"] == ""
        numbers = {key: value for key, value in row.items() if isinstance(value, float)}
        assert all(math.isfinite(value) for value in numbers.values()), row
    for run in runs_by_kind(results).values():
        for row in run.failures:
            assert all(row.get(column, "") == "" for column in ("test_loss", "top1_acc", "prune_ratio", "num_params")), row


def test_a_rerun_does_not_retry_failed_models(sweep):
    config, results, first = sweep
    before = {str(folder): file_states(folder / "checkpoints") | {"metrics": file_states(folder)["metrics.csv"]}
              for folder in run_folders(results)}
    again = run_cli(config, cwd=config.parent)
    assert again.returncode == MODELS_FAILED, describe(again)
    assert re.search(r"^(re)?training ", again.stdout, re.MULTILINE) is None, again.stdout  # nothing trained again
    assert {str(folder): file_states(folder / "checkpoints") | {"metrics": file_states(folder)["metrics.csv"]}
            for folder in run_folders(results)} == before
    assert again.stderr[again.stderr.index("3 model(s) failed"):] == first.stderr[first.stderr.index("3 model(s) failed"):]


def test_workers_record_failures_without_failing_or_retrying(tmp_path):
    results = tmp_path / "results"
    config = tiny_config(tmp_path / "diverging.yaml", results, epochs=2, nets=2, name=RK4_NETWORK,
                         training={"optimizerKwargs": {"lr": 1.0e6}},
                         experiments={"mode": "cascade", "methods": ["ThresNet"],
                                      "spacing": [{"type": "manual", "values": [0.5]}]})
    process = run_cli(config, "--workers", "2", cwd=tmp_path)
    assert process.returncode == MODELS_FAILED, describe(process)
    assert "worker(s) failed" not in process.stderr
    (run,) = [Run(path) for path in run_folders(results)]
    assert run.rows == [] and sorted(row["net"] for row in run.failures) == [0, 1]  # each tried once, no chain
    assert "2 model(s) failed" in process.stderr and "dense_net1: training epoch 0: non-finite" in process.stderr
