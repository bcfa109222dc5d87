"""The image pipeline end to end on real 8x8 images (scikit-learn's digits): the multiscale FFJORD
flow trained in bits/dim on dequantised data, then one prune step per method, evaluated. (Retraining
runs the training loop tested here once more, on the pruned net — FT's as its compact twin, whose
outputs tests/test_compaction.py checks for this flow; leaving it out halves this test's time.)"""

from __future__ import annotations

import torch

from conftest import PARAM, describe, load_weights, run_cli, the_run_folder
from experiment.config import load_configs
from experiment.results import load_results
from experiment.runner import prepare
from experiment.seeds import derive_seed
from experiment.training.evaluate import evaluate

DIGITS = PARAM / "cnf" / "digits_multiscale.yaml"


def test_digits_flow_trains_prunes_and_lowers_bits_per_dim(tmp_path):
    results = tmp_path / "results"
    # One epoch of dense training (the config has two) already lowers bits/dim by several bits.
    overrides = [f"directories.results={results}", f"directories.training_data={tmp_path / 'data'}", "training.numEpochs=1",
                 "experiments.retrainIterations=0"]
    process = run_cli(DIGITS, *overrides, "--threads", "2")
    assert process.returncode == 0, describe(process)
    assert "mean ± std over nets" in process.stdout

    table = load_results(results)
    assert sorted((row["method"], row["step"]) for row in table) == [("FilterThresNet", 1), ("ThresNet", 1), ("dense", 0)]
    for row in table:
        assert row["trace_estimator"] == "hutchinson" and row["nfe_forward"] > 0
        assert 0 < row["bits_per_dim"] < 16 and row["bits_per_dim"] == row["test_loss"]
    for row in table.where(mode="cascade"):
        assert abs(row["prune_ratio"] - 0.5) < 0.005

    # The same test evaluation of the same freshly initialised net: training must have lowered it.
    config = load_configs(DIGITS, overrides)[0]
    experiment = prepare(config)
    torch.manual_seed(derive_seed(config["seed"], "init", 0))
    initial = experiment.new_model()
    trained = experiment.new_model()
    trained.load_state_dict(load_weights(the_run_folder(results) / "checkpoints" / "dense_net0.pt")["model"])
    dense_row = table.where(method="dense")
    for model, expected in ((trained, dense_row.column("bits_per_dim")[0]), (initial, None)):
        torch.manual_seed(derive_seed(config["seed"], "test", "train", "dense", 0, 0, 0, 0.0))
        schedule = experiment.settings.training
        result = evaluate(model, experiment.x_test, experiment.y_test, 200, experiment.loss(schedule),
                          schedule.metrics_test, experiment.data.data_dim, experiment.data_for(schedule).eval_transform)
        if expected is not None:
            assert abs(result.metrics["bits_per_dim"] - expected) < 1e-4  # the stored row is reproducible
        else:
            assert result.metrics["bits_per_dim"] > dense_row.column("bits_per_dim")[0] + 0.5
