"""The image pipeline end to end on real 8x8 images (scikit-learn's digits): the multiscale FFJORD
flow trained in bits/dim on dequantised data, then one WT prune step, evaluated. (Retraining runs
the training loop tested here once more, on the pruned net, and FT's step is its compact twin, whose
outputs tests/test_compaction.py checks for this flow; leaving both out halves this test's time.)"""

from __future__ import annotations

import pytest
import torch

from conftest import PARAM, describe, load_weights, run_cli, the_run_folder
from experiment.config import load_configs
from experiment.results import load_results
from experiment.plan import make_plan
from experiment.chain import prepare
from experiment.seeds import derive_seed
from experiment.training.evaluate import evaluate

pytestmark = pytest.mark.slow  # trains the image flow end to end in a subprocess

DIGITS = PARAM / "cnf" / "digits_multiscale.yaml"


def test_digits_flow_trains_prunes_and_lowers_bits_per_dim(tmp_path):
    results = tmp_path / "results"
    # One epoch of dense training (the config has two) already lowers bits/dim by several bits.
    overrides = [f"directories.results={results}", f"directories.training_data={tmp_path / 'data'}", "training.numEpochs=1",
                 "experiments.retrainIterations=0", "experiments.methods=[ThresNet]"]
    process = run_cli(DIGITS, *overrides)  # one thread: under pytest-xdist another worker shares the cores
    assert process.returncode == 0, describe(process)
    assert "mean ± std over nets" in process.stdout

    table = load_results(results)
    assert sorted((row["method"], row["step"]) for row in table) == [("ThresNet", 1), ("dense", 0)]
    for row in table:
        assert row["trace_estimator"] == "hutchinson" and row["nfe_forward"] > 0
        assert 0 < row["bits_per_dim"] < 16 and row["bits_per_dim"] == row["test_loss"]
    for row in table.where(mode="cascade"):
        assert abs(row["prune_ratio"] - 0.5) < 0.005

    # The same test evaluation of the same freshly initialised net: training must have lowered it.
    config = load_configs(DIGITS, overrides)[0]
    experiment = prepare(make_plan(config))
    torch.manual_seed(derive_seed(config["seed"], "init", 0))
    initial = experiment.new_model()
    trained = experiment.new_model()
    trained.load_state_dict(load_weights(the_run_folder(results) / "checkpoints" / "dense_net0.pt")["model"])
    dense_row = table.where(method="dense")
    # The untrained net on 60 test images only: it is several bits worse, far beyond their spread.
    for model, expected, images in ((trained, dense_row.column("bits_per_dim")[0], None), (initial, None, 60)):
        torch.manual_seed(derive_seed(config["seed"], "test", "train", "dense", 0, 0, 0, 0.0))
        schedule = experiment.settings.training
        result = evaluate(model, experiment.x_test[:images], experiment.y_test[:images], 200, experiment.loss(schedule),
                          schedule.metrics_test, experiment.data.data_dim, experiment.data_for(schedule).eval_transform)
        if expected is not None:
            assert abs(result.metrics["bits_per_dim"] - expected) < 1e-4  # the stored row is reproducible
        else:
            assert result.metrics["bits_per_dim"] > dense_row.column("bits_per_dim")[0] + 0.5
