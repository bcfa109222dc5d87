"""The NoPrune control (docs/PRUNING.md): the same chain as the pruning methods — cascade or retrain mode,
learning-rate rewinding, the full retraining schedule at every step — with nothing pruned.

Real runs of `python -m experiment.main` (tiny classifier, two steps) in both modes, checked through
their rows and checkpoints; each step of the control is then recomputed in-process from the weights
it must start from, with a fresh optimizer, and must equal the stored checkpoint bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import describe, load_weights, run_cli, the_run_folder, tiny_config
from experiment.files import read_csv
from experiment.plan import make_plan
from experiment.chain import prepare
from experiment.seeds import derive_seed
from experiment.training.loop import train

pytestmark = pytest.mark.slow  # runs prune chains end to end in subprocesses

KEEPS = (0.6, 0.3)
METHODS = ["FilterThresNet", "ThresNet", "NoPrune"]


@pytest.fixture(scope="module", params=["cascade", "retrain"])
def run(request, tmp_path_factory) -> tuple[str, Path]:
    mode = request.param
    folder = tmp_path_factory.mktemp(mode)
    config = tiny_config(folder / "config.yaml", folder / "results", epochs=2, nets=1, name="node_l2_h16_tanh_da",
                         retraining={"numEpochs": 2, "batchSize": 128},
                         experiments={"mode": mode, "methods": METHODS, "spacing": [{"type": "manual", "values": list(KEEPS)}]})
    process = run_cli(config)
    assert process.returncode == 0, describe(process)
    assert "NoPrune" in process.stdout  # the end-of-run table has the control's column
    return mode, the_run_folder(folder / "results")


def test_control_rows_say_noprune_at_prune_ratio_zero(run):
    mode, folder = run
    rows = read_csv(folder / "metrics.csv")
    control = sorted((row for row in rows if row["method"] == "NoPrune"), key=lambda row: row["step"])
    assert [(row["mode"], row["step"]) for row in control] == [(mode, 1), (mode, 2)]
    for row, keep in zip(control, KEEPS):
        assert row["target_prune_ratio"] == 0.0 and row["prune_ratio"] == 0.0
        assert row["nonzero_params"] == row["num_params"]
        assert row["step_prune_ratio"] == pytest.approx(1.0 - keep)  # drawn beside the pruned steps
        assert row["epochs"] == 2
    pruned = [row for row in rows if row["method"] in ("FilterThresNet", "ThresNet")]
    assert all(row["step_prune_ratio"] == pytest.approx(row["target_prune_ratio"]) for row in pruned)
    assert all(row["prune_ratio"] > 0.2 for row in pruned)


def retrain_step(folder: Path, start: str, step: int, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Step `step` of the control recomputed from checkpoint `start` exactly as the runner does it:
    the same seed and data, a new optimizer and schedulers (a fresh call of `train`)."""
    experiment = prepare(make_plan(yaml.safe_load((folder / "config.yaml").read_text())))
    model = experiment.new_model()
    model.load_state_dict(load_weights(folder / "checkpoints" / f"{start}.pt")["model"])
    key = dict(mode=experiment.plan.mode, method="NoPrune", net=0, repetition=0, step=step, target_prune_ratio=0.0)
    schedule = experiment.settings.retraining
    train(model, schedule, experiment.data_for(schedule), experiment.loss(schedule),
          seed=derive_seed(experiment.settings.seed, "retrain", *key.values()), progress_file=tmp_path / "progress.pt")
    return model.state_dict()


def test_each_control_step_starts_from_the_previous_step_with_a_fresh_optimizer(run, tmp_path):
    mode, folder = run
    stored = load_weights(folder / "checkpoints" / f"{mode}_NoPrune_net0_rep0_step2.pt")
    assert stored["masks"] == {}
    start = "dense_net0" if mode == "retrain" else f"{mode}_NoPrune_net0_rep0_step1"
    other = f"{mode}_NoPrune_net0_rep0_step1" if mode == "retrain" else "dense_net0"
    recomputed = retrain_step(folder, start, 2, tmp_path / "a")
    for name, value in stored["model"].items():
        assert torch.equal(recomputed[name], value), f"{mode} step 2 is not a fresh retraining of {start}: {name}"
    # and not of the other candidate starting point
    wrong = retrain_step(folder, other, 2, tmp_path / "b")
    assert any(not torch.equal(wrong[name], value) for name, value in stored["model"].items())
