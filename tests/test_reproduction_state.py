"""`paper.reproduction_state` carries an unfinished run between machines: what it saves is enough to
resume the run elsewhere with the rows an uninterrupted run ends with, and no more than that."""

from __future__ import annotations

import logging
from pathlib import Path

from conftest import tiny_config
from experiment.config import load_configs
from experiment.scheduler import run_experiment
from paper.reproduction_state import restore, save

CASCADE = {"mode": "cascade", "methods": ["ThresNet"], "numNets": 1,
           "spacing": [{"type": "manual", "values": [0.75, 0.5, 0.25, 0.1]}]}


def untimed_rows(rows: list[dict]) -> list[dict]:
    return [{name: value for name, value in row.items() if not name.endswith("seconds")} for row in rows]


def test_a_saved_unfinished_run_resumes_elsewhere_with_the_rows_of_an_uninterrupted_run(tmp_path, caplog):
    here = load_configs(tiny_config(tmp_path / "here.yaml", tmp_path / "here", epochs=2, nets=1, experiments=CASCADE,
                                    retraining={"numEpochs": 1, "batchSize": 128}), [])[0]
    run = run_experiment(here)
    rows = untimed_rows(run.read_metrics())
    # the run as if stopped during step 4 (PR 0.9): its row is not there yet
    run.metrics_file.write_text("".join(run.metrics_file.read_text().splitlines(keepends=True)[:-1]))

    saved = tmp_path / "committed" / "tiny"
    save([here], saved)
    assert (saved / "metrics.csv").read_text() == run.metrics_file.read_text()
    assert sorted(path.name for path in (saved / "curves").iterdir()) == sorted(path.name for path in (run.path / "curves").iterdir())
    # dense, the last recorded step (3), the steps closest to paper.flatness' ratios 0.25/0.5/0.75/0.9/0.95 (1, 2, 3)
    # and those paper.samples_2d shows (4 of the plan's 4 ratios: 1 to 4, of which 1 to 3 are recorded)
    assert sorted(path.stem for path in (saved / "state" / "checkpoints").iterdir()) == [
        "cascade_ThresNet_net0_rep0_step1", "cascade_ThresNet_net0_rep0_step2", "cascade_ThresNet_net0_rep0_step3", "dense_net0"]
    assert (saved / "state" / "data_split.npz").read_bytes() == run.split_file.read_bytes()

    there = load_configs(tiny_config(tmp_path / "there.yaml", tmp_path / "there", epochs=2, nets=1, experiments=CASCADE,
                                     retraining={"numEpochs": 1, "batchSize": 128}), [])[0]
    restore(there, saved)
    with caplog.at_level(logging.INFO, logger="experiment"):
        resumed = run_experiment(there)
    assert resumed.path != run.path and Path(resumed.path).name == Path(run.path).name
    assert untimed_rows(resumed.read_metrics()) == rows
    retrained = [record.getMessage() for record in caplog.records if record.getMessage().startswith(("training", "retraining"))]
    assert retrained == ["retraining cascade_ThresNet_net0_rep0_step4"]

    save([there], saved)  # finished now: what the analyses read (step 4 now too: flatness' 0.9, the grid's last), no progress files
    assert sorted(path.stem for path in (saved / "state" / "checkpoints").iterdir()) == [
        *(f"cascade_ThresNet_net0_rep0_step{step}" for step in (1, 2, 3, 4)), "dense_net0"]
    assert not (saved / "state" / "progress").exists()
    assert (saved / "metrics.csv").read_text() == resumed.metrics_file.read_text()
    save([there], saved, results_only=True)
    assert not (saved / "state").exists() and (saved / "metrics.csv").exists()


def test_configs_sharing_a_run_folder_are_saved_together_and_unfinished_while_one_has_work_left(tmp_path, capsys):
    """A config that adds a net to another's run (the same run folder: `experiments` is not part of
    the run id) keeps the run unfinished, so its resume state is saved; requests.yaml goes along."""
    one_net = load_configs(tiny_config(tmp_path / "one.yaml", tmp_path / "results", epochs=2, nets=1, experiments=CASCADE,
                                       retraining={"numEpochs": 1, "batchSize": 128}), [])[0]
    two_nets = load_configs(tiny_config(tmp_path / "two.yaml", tmp_path / "results", epochs=2, nets=1,
                                        experiments={**CASCADE, "numNets": 2}, retraining={"numEpochs": 1, "batchSize": 128}), [])[0]
    run = run_experiment(one_net)
    saved = tmp_path / "committed" / "tiny"
    save([one_net], saved)
    assert "(finished:" in capsys.readouterr().out
    save([one_net, two_nets], saved)
    assert "(unfinished:" in capsys.readouterr().out
    assert (saved / "requests.yaml").read_text() == run.requests_file.read_text()
