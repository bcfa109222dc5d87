"""Data-parallel training of one model (experiment/distributed.py): `torchrun --nproc_per_node 2` on
this CPU (gloo backend, torchrun's own free port) against one process with the full batch.

The flow is a small exact-trace CNF on a fixed-step solver, so the two computations differ only in
the order of float sums: same metrics rows (every column but the times), the same weights within
float tolerance. The batch size leaves a last batch of odd size, so the ranks' shares differ and
their weighting is checked too. Only rank 0 writes: one request recorded, one writer in the log, one
"training"/"retraining" line per model, one line per epoch.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import PARAM, cli_command, load_weights, run_process, the_run_folder, write_yaml
from experiment.distributed import SINGLE, Ranks, ranks_from_environment
from experiment.main import main
from experiment.results import RunDir

pytestmark = pytest.mark.slow  # starts torchrun ranks

TRAIN_SIZE = 14742  # ToyGaussians' training split
BATCH = 1229  # 14742 = 11 × 1229 + 1223: the last batch splits 612 / 611 over two ranks
TRAINED = re.compile(r"^(?:training|retraining) (\S+)$", re.MULTILINE)
EPOCH = re.compile(r" epoch [12]/2: train .* lr \S+$", re.MULTILINE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("data_parallel")
    config = write_yaml(folder / "flow.yaml", {
        "file": str(PARAM / "toy" / "base.yaml"),
        "network": {"name": "cnf_l2_h16_tanh_rk4_autograd", "dataset": "ToyGaussians"},
        "training": {"numEpochs": 2, "batchSize": BATCH},
        "experiments": {"numNets": 1, "methods": ["ThresNet"], "spacing": [{"type": "manual", "values": [0.5]}]},
        "directories": {"training_data": str(folder / "training_data")},
        "device": "cpu",
    })
    outputs = {}
    for name, launcher in [("single", []), ("ranks", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc_per_node", "2"])]:
        command = cli_command(config, f"directories.results={folder / name}")
        if launcher:
            command = launcher + command[1:]  # torchrun runs `-m experiment.main ...` itself
        process = run_process(command, cwd=folder)
        assert process.returncode == 0, f"{name}: exit {process.returncode}\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}"
        outputs[name] = (the_run_folder(folder / name), process.stdout)
    return outputs


def test_two_ranks_give_the_rows_and_weights_of_one_process_with_the_full_batch(runs):
    (single, _), (ranks, _) = runs["single"], runs["ranks"]
    rows_single, rows_ranks = RunDir(single).read_metrics(), RunDir(ranks).read_metrics()
    assert len(rows_single) == len(rows_ranks) == 2
    with np.load(ranks / "data_split.npz") as split:
        assert len(split["train"]) == TRAIN_SIZE and TRAIN_SIZE % BATCH % 2 == 1  # unequal shares, as promised
    for one, two in zip(rows_single, rows_ranks):
        assert one.keys() == two.keys()
        for column in one:
            if column == "train_seconds":
                continue
            if isinstance(one[column], float):
                assert two[column] == pytest.approx(one[column], rel=1e-5, abs=1e-6), column
            else:
                assert two[column] == one[column], column
    for checkpoint in sorted((single / "checkpoints").glob("*.pt")):
        weights_single, weights_ranks = load_weights(checkpoint)["model"], load_weights(ranks / "checkpoints" / checkpoint.name)["model"]
        assert weights_single.keys() == weights_ranks.keys()
        for name in weights_single:
            torch.testing.assert_close(weights_ranks[name], weights_single[name], rtol=1e-5, atol=1e-6, msg=name)
    for curve in sorted((single / "curves").glob("*.csv")):
        lines_single, lines_ranks = curve.read_text().splitlines(), (ranks / "curves" / curve.name).read_text().splitlines()
        assert len(lines_single) == len(lines_ranks) == 3  # header and two epochs


def test_only_rank_zero_writes_and_each_model_is_trained_once(runs):
    ranks, output = runs["ranks"]
    assert sorted(TRAINED.findall(output)) == ["cascade_ThresNet_net0_rep0_step1", "dense_net0"]
    assert len(EPOCH.findall(output)) == 4  # one plain line per epoch (output redirected), rank 0's alone
    assert "on 2 data-parallel ranks" in output
    requests = yaml.safe_load((ranks / "requests.yaml").read_text())
    assert len(requests) == 1
    writers = {line.split()[2] for line in (ranks / "log.txt").read_text().splitlines()}  # "date time host:pid ..."
    assert len(writers) == 1, writers
    assert not list((ranks / "progress").glob("*.pt"))


def test_ranks_come_from_torchrun_environment():
    assert ranks_from_environment({}) is SINGLE
    assert ranks_from_environment({"WORLD_SIZE": "1", "RANK": "0"}) is SINGLE
    assert ranks_from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Ranks(3, 4, 1)
    batch = torch.arange(7)
    shares = [Ranks(rank, 3).share(batch).tolist() for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert Ranks(0, 3).leader and not Ranks(2, 3).leader


def test_workers_under_torchrun_are_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    config = write_yaml(tmp_path / "c.yaml", {"file": str(PARAM / "quickstart.yaml"),
                                              "directories": {"results": str(tmp_path / "results")}})
    assert main([str(config), "--workers", "2"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
