"""Tests of the results tree API (docs/RESULTS.md): `load_results` over real runs, `ResultsTable` queries and
its pandas DataFrame, `RunDir.upsert_metrics`, and the crash-safe (atomic) writes everything in a run folder goes through."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_NETWORK, tiny_config, write_yaml
from experiment.config import load_configs
from experiment.results import ResultsTable, RunDir, load_results, run_id
from experiment.files import atomic_torch_save, atomic_write_bytes, atomic_write_text
from experiment.results.tree import METRIC_KEY
from experiment.scheduler import run_experiment


# ------------------------------------------------------------------------------ load_results


@pytest.fixture(scope="module")
def results_tree(tmp_path_factory):
    """A results root with the runs of two configs: two nets on ToyMoons, one on ToyConcentric."""
    folder = tmp_path_factory.mktemp("tree")
    root = folder / "results"
    configs = [
        load_configs(tiny_config(folder / "moons.yaml", root, epochs=2, nets=2))[0],
        load_configs(tiny_config(folder / "concentric.yaml", root, epochs=2, nets=1, dataset="ToyConcentric"))[0],
    ]
    runs = [run_experiment(config) for config in configs]
    return root, configs, runs


def test_load_results_gives_one_row_per_evaluated_model(results_tree):
    root, configs, _ = results_tree
    table = load_results(root)
    assert len(table) == 3
    assert {"dataset", "network", "run_id", "method", "net", "test_loss", "top1_acc"} <= set(table.columns)
    assert sorted((row["dataset"], row["net"]) for row in table) == [("ToyConcentric", 0), ("ToyMoons", 0),
                                                                      ("ToyMoons", 1)]
    assert set(table.unique("network")) == {TINY_NETWORK}
    ids = {config["network"]["dataset"]: run_id(config) for config in configs}
    for row in table:
        assert row["run_id"] == ids[row["dataset"]]
        assert row["method"] == "dense"
        assert isinstance(row["net"], int) and isinstance(row["test_loss"], float)  # numbers parsed back


def test_results_table_queries(results_tree):
    root, _, _ = results_tree
    table = load_results(root)

    moons = table.where(dataset="ToyMoons")
    assert len(moons) == 2 and moons.unique("net") == [0, 1]
    assert len(table.where(dataset="ToyMoons", net=1)) == 1
    assert len(table.where(dataset="ToyMoons", net=7)) == 0
    assert len(table.where()) == 3

    losses = table.column("test_loss")
    assert isinstance(losses, np.ndarray) and losses.shape == (3,) and np.isfinite(losses.astype(float)).all()
    assert sorted(table.unique("dataset")) == ["ToyConcentric", "ToyMoons"]
    assert len(table.unique("run_id")) == 2
    assert table.column("no_such_column").tolist() == [None, None, None]


def test_load_results_of_one_run_folder_and_of_nothing(results_tree, tmp_path):
    _, configs, runs = results_tree
    single = load_results(runs[0].path)
    assert len(single) == 2
    assert single.unique("run_id") == [run_id(configs[0])]
    assert single.unique("run_folder") == [str(runs[0].path)] and single.config_of(single.rows[0]) == runs[0].load_config()
    assert len(load_results(tmp_path)) == 0


def test_a_sweep_read_into_pandas_has_its_swept_key_as_a_column(tmp_path):
    """Two runs of a sweep over the learning rate: `to_pandas` gives one row per model, the run's
    config in dotted columns (lists as JSON text), and the metrics columns as numbers."""
    pandas = pytest.importorskip("pandas")
    root = tmp_path / "results"
    config = tiny_config(tmp_path / "sweep.yaml", root, epochs=1, nets=1)
    sweep = yaml.safe_load(config.read_text()) | {"customizations": [
        {"key": ["training", "optimizerKwargs", "lr"], "value": lr} for lr in (0.01, 0.002)]}
    runs = [run_experiment(swept) for swept in load_configs(write_yaml(config, sweep))]

    frame = load_results(root).to_pandas()
    assert len(frame) == 2
    by_folder = frame.set_index("run_folder")
    assert [by_folder.loc[str(run.path), "training.optimizerKwargs.lr"] for run in runs] == [0.01, 0.002]
    assert sorted(frame["run_id"]) == sorted(run.path.name for run in runs)
    assert (frame["network.name"] == TINY_NETWORK).all() and (frame["experiments.numNets"] == 1).all()
    assert json.loads(frame["experiments.methods"].iloc[0]) == load_configs(config)[0]["experiments"]["methods"]
    for column in ("net", "test_loss", "top1_acc", "prune_ratio", "num_params", "train_seconds"):
        assert pandas.api.types.is_numeric_dtype(frame[column]), column
    assert frame.groupby("training.optimizerKwargs.lr")["top1_acc"].mean().index.tolist() == [0.002, 0.01]


def test_to_pandas_without_pandas_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[pandas]"')):
        ResultsTable([]).to_pandas()


# ------------------------------------------------------------------------------ upsert_metrics


def metrics_row(method: str, net: int, step: int = 0, **values) -> dict:
    row = {"mode": "train" if method == "dense" else "cascade", "method": method, "net": net, "repetition": 0,
           "step": step, "test_loss": 1.0, **values}
    assert set(METRIC_KEY) <= set(row)
    return row


def read_file_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {tuple(str(row[name]) for name in METRIC_KEY): row for row in rows}


def test_upsert_replaces_the_row_with_the_same_key_and_keeps_the_others(tmp_path):
    run = RunDir(tmp_path / "run")
    run.upsert_metrics(metrics_row("dense", 0, test_loss=0.5))
    run.upsert_metrics(metrics_row("dense", 1, test_loss=0.6))
    run.upsert_metrics(metrics_row("ThresNet", 0, step=1, test_loss=0.7, prune_ratio=0.2))
    run.upsert_metrics(metrics_row("ThresNet", 0, step=2, test_loss=0.8, prune_ratio=0.36))
    assert len(run.read_metrics()) == 4

    run.upsert_metrics(metrics_row("ThresNet", 0, step=1, test_loss=0.25, prune_ratio=0.2))
    rows = by_key(run.read_metrics())
    assert len(rows) == 4
    assert [row["test_loss"] for row in run.read_metrics()].count(0.25) == 1
    assert rows[tuple(str(value) for value in ("cascade", "ThresNet", 0, 0, 1))]["test_loss"] == 0.25
    assert rows[tuple(str(value) for value in ("cascade", "ThresNet", 0, 0, 2))]["test_loss"] == 0.8
    assert rows[tuple(str(value) for value in ("train", "dense", 0, 0, 0))]["test_loss"] == 0.5
    assert rows[tuple(str(value) for value in ("train", "dense", 1, 0, 0))]["test_loss"] == 0.6

    # the dense rows come first; a column only some rows have stays empty in the others
    file_rows = read_file_rows(run.metrics_file)
    assert [row["method"] for row in file_rows][:2] == ["dense", "dense"]
    assert {row["prune_ratio"] for row in file_rows if row["method"] == "dense"} == {""}


def test_upsert_matches_keys_read_back_from_the_file(tmp_path):
    """Rows read back have parsed numbers (net 0 is int 0); a new row with the same key replaces them."""
    run = RunDir(tmp_path / "run")
    run.upsert_metrics(metrics_row("dense", 0, test_loss=0.5))
    run.upsert_metrics(metrics_row("dense", 0, test_loss=0.4))
    run.upsert_metrics(metrics_row("dense", 0, test_loss=0.3))
    assert [row["test_loss"] for row in run.read_metrics()] == [0.3]


# ------------------------------------------------------------------------------ atomic writes


def test_atomic_writes_leave_only_the_target_files(tmp_path):
    run = RunDir(tmp_path / "run")
    for net in range(5):
        run.upsert_metrics(metrics_row("dense", net))
    run.write_curve("dense_net0", [{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5}])
    atomic_torch_save(run.checkpoint("dense_net0"), {"model": {"w": torch.ones(3)}, "epochs": 2})
    atomic_write_text(run.path / "notes.txt", "first")
    atomic_write_text(run.path / "notes.txt", "second")

    files = sorted(path.relative_to(run.path).as_posix() for path in run.path.rglob("*") if path.is_file())
    assert files == ["checkpoints/dense_net0.pt", "curves/dense_net0.csv", "metrics.csv", "notes.txt"]
    assert (run.path / "notes.txt").read_text() == "second"
    assert [row["epoch"] for row in read_file_rows(run.curve("dense_net0"))] == ["0", "1"]
    loaded = torch.load(run.checkpoint("dense_net0"), weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.ones(3)) and loaded["epochs"] == 2


def test_a_failing_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"previous")

    released = memoryview(bytearray(b"new content"))
    released.release()
    for bad in ("text is not bytes", released):  # the write itself raises, after the temporary file exists
        with pytest.raises((TypeError, ValueError)):
            atomic_write_bytes(path, bad)
        assert path.read_bytes() == b"previous"
        assert [entry.name for entry in tmp_path.iterdir()] == ["data.bin"]


def test_a_failing_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "dense_net0.pt"
    atomic_torch_save(path, {"model": {"w": torch.zeros(2)}, "epochs": 1})
    before = path.read_bytes()
    with pytest.raises(Exception):
        atomic_torch_save(path, {"model": {"w": torch.ones(2)}, "not_serialisable": lambda: None})
    assert path.read_bytes() == before
    assert [entry.name for entry in path.parent.iterdir()] == ["dense_net0.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.zeros(2))


def test_a_failing_metrics_upsert_keeps_the_previous_table(tmp_path):
    run = RunDir(tmp_path / "run")
    run.upsert_metrics(metrics_row("dense", 0, test_loss=0.5))
    before = run.metrics_file.read_bytes()
    incomplete = metrics_row("dense", 1)
    del incomplete["step"]
    with pytest.raises(KeyError):
        run.upsert_metrics(incomplete)
    assert run.metrics_file.read_bytes() == before
    assert [entry.name for entry in run.path.iterdir()] == ["metrics.csv"]


def test_run_ids_of_regenerated_toy_data_differ_from_those_of_the_old_data(tmp_path):
    """Toy sets whose generator changed (dataset revision 2) get new run ids, so a results tree made
    with the old data is never resumed with the new; unchanged datasets keep their ids."""

    def revision_one_id(config: dict) -> str:  # (the launcher and limits sections, network.maxSteps,
        # network.solverBackend and tf32 came later, outside the run id too)
        relevant = {key: value for key, value in config.items()
                    if key not in ("experiments", "directories", "device", "launcher", "limits", "tf32")}
        relevant["network"] = {key: value for key, value in relevant["network"].items()
                               if key not in ("maxSteps", "solverBackend")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]

    for dataset, changed in (("ToyMoons", True), ("ToySpirals", True), ("ToyConcentric", False)):
        config = load_configs(tiny_config(tmp_path / f"{dataset}.yaml", tmp_path / "results", dataset=dataset))[0]
        assert (run_id(config) != revision_one_id(config)) == changed, dataset
