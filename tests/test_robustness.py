"""Damaged files and crashes get a clear answer, checked on real runs of a tiny cascade
config (one dense net, one prune step):

* a damaged checkpoint or progress file is set aside as `NAME.corrupt-<time>` and its model trained
  again, ending with the rows of an undamaged run; a damaged metrics.csv or data_split.npz is an
  error naming the file, but a metrics.csv whose last line is torn is read without it and repaired;
* temporary files that a killed atomic write left are removed by the next holder of their lock, and
  only those;
* atomically written files get the umask's mode, and their folder is fsynced;
* rerunning a finished run writes nothing (and works on a read-only copy);
* fault injection: a real process SIGKILLed just before or just after the rename of each kind of
  write, then resumed, leaves no temporary file and the rows of an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_command, describe, file_states, load_weights, run_process, tiny_config
from experiment.config import load_configs
from experiment.files import DamagedFileError, TEMPORARY, atomic_write_bytes, atomic_write_text, remove_temporaries
from experiment.jobs import Job
from experiment.main import main
from experiment.results import Run, RunDir
from experiment.config.identity import run_folder
from experiment.scheduler import run_experiment
from experiment.seeds import derive_seed

pytestmark = pytest.mark.slow  # kills and resumes real runs in subprocesses

CASCADE = {"mode": "cascade", "methods": ["ThresNet"], "numNets": 1, "spacing": [{"type": "manual", "values": [0.5]}]}


def cascade_config(folder: Path, **experiments) -> Path:
    return tiny_config(folder / "config.yaml", folder / "results", epochs=2, nets=1,
                       retraining={"numEpochs": 1, "batchSize": 128}, experiments={**CASCADE, **experiments})


def resolved(config: Path, *overrides: str) -> dict:
    return load_configs(config, list(overrides))[0]


def untimed_rows(run: RunDir) -> list[dict]:
    return [{name: value for name, value in row.items() if not name.endswith("seconds")} for row in run.read_metrics()]


def temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*") if TEMPORARY.match(path.name)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunDir:
    """An uninterrupted run of the cascade config (read only)."""
    return run_experiment(resolved(cascade_config(tmp_path_factory.mktemp("reference"))))


# ------------------------------------------------------------------------- damaged files (item 1)


def test_damaged_dense_checkpoint_and_progress_file_are_set_aside_and_recomputed(reference, tmp_path, caplog):
    """The dense net alone first; then its checkpoint is cut short, and a garbage progress file waits
    for the prune step: the cascade run sets both aside, says so in the log, trains them again and
    ends with the reference's rows and weights."""
    config = cascade_config(tmp_path)
    dense_only = run_experiment(resolved(config, "experiments.mode=train"))
    checkpoint = dense_only.checkpoint("dense_net0")
    damaged = checkpoint.read_bytes()[:100]
    checkpoint.write_bytes(damaged)
    progress = dense_only.progress(f"cascade_ThresNet_net0_rep0_step1_{derive_seed(0, (0.5,)):08x}")
    progress.parent.mkdir(exist_ok=True)
    progress.write_bytes(b"garbage")
    with caplog.at_level(logging.INFO, logger="experiment"):
        run = run_experiment(resolved(config))
    assert untimed_rows(run) == untimed_rows(reference)

    aside = list((run.path / "checkpoints").glob("dense_net0.pt.corrupt-*"))
    assert [path.read_bytes() for path in aside] == [damaged]
    assert [path.read_bytes() for path in progress.parent.glob(f"{progress.name}.corrupt-*")] == [b"garbage"]
    log = run.log_file.read_text()
    assert f"{checkpoint} cannot be loaded" in log and f"set aside as {aside[0].name}" in log
    assert f"{progress} cannot be loaded" in log
    assert "training dense_net0" in log.partition(f"{checkpoint} cannot be loaded")[2]
    assert "retraining cascade_ThresNet_net0_rep0_step1" in log.partition(f"{progress} cannot be loaded")[0]
    for name in ("dense_net0", "cascade_ThresNet_net0_rep0_step1"):
        trained, expected = load_weights(run.checkpoint(name)), load_weights(reference.checkpoint(name))
        assert all(torch.equal(trained["model"][key], expected["model"][key]) for key in expected["model"])


def test_garbage_progress_file_is_set_aside_and_training_starts_over(reference, tmp_path):
    config = resolved(cascade_config(tmp_path))
    progress = run_folder(config) / "progress" / "dense_net0.pt"
    progress.parent.mkdir(parents=True)
    progress.write_bytes(b"\x00garbage, not a zip archive")
    run = run_experiment(config)
    assert untimed_rows(run) == untimed_rows(reference)
    assert [path.read_bytes() for path in progress.parent.glob("dense_net0.pt.corrupt-*")] == [b"\x00garbage, not a zip archive"]
    assert "set aside as dense_net0.pt.corrupt-" in run.log_file.read_text()
    assert not list(progress.parent.glob("*.pt"))


def test_damaged_prune_step_checkpoint_is_set_aside_and_retrained(reference, tmp_path, caplog):
    """A finished run whose step checkpoint is garbage and whose step row is lost: the step is
    retrained (its progress file is gone, so from the start) and its row comes back the same."""
    config, run = finished_copy(reference, tmp_path)
    step = run.checkpoint("cascade_ThresNet_net0_rep0_step1")
    step.write_bytes(b"not a checkpoint")
    run.metrics_file.write_text("".join(run.metrics_file.read_text().splitlines(keepends=True)[:-1]))
    with caplog.at_level(logging.INFO, logger="experiment"):
        run_experiment(resolved(config))
    assert f"{step} cannot be loaded" in caplog.text and "retraining cascade_ThresNet_net0_rep0_step1" in caplog.text
    assert [path.read_bytes() for path in step.parent.glob(f"{step.name}.corrupt-*")] == [b"not a checkpoint"]
    assert untimed_rows(run) == untimed_rows(reference)


def test_a_cascade_resumes_from_its_last_step_checkpoint_without_the_earlier_ones(tmp_path, caplog):
    """Only the dense net and the checkpoint of step 2 of 3 are kept, and step 3's row is lost (what
    a results folder trimmed to move between machines holds): the rerun retrains step 3 alone, from
    step 2, and ends with the rows and final weights of the uninterrupted run."""
    config = resolved(cascade_config(tmp_path, spacing=[{"type": "manual", "values": [0.8, 0.7, 0.5]}]))
    run = run_experiment(config)
    rows = untimed_rows(run)
    step3 = load_weights(run.checkpoint("cascade_ThresNet_net0_rep0_step3"))
    for step in (1, 3):
        run.checkpoint(f"cascade_ThresNet_net0_rep0_step{step}").unlink()
    run.metrics_file.write_text("".join(run.metrics_file.read_text().splitlines(keepends=True)[:-1]))
    with caplog.at_level(logging.INFO, logger="experiment"):
        run_experiment(config)
    assert "retraining cascade_ThresNet_net0_rep0_step3" in caplog.text
    assert "retraining cascade_ThresNet_net0_rep0_step1" not in caplog.text and "training dense" not in caplog.text
    assert not run.checkpoint("cascade_ThresNet_net0_rep0_step1").exists()
    assert untimed_rows(run) == rows
    resumed = load_weights(run.checkpoint("cascade_ThresNet_net0_rep0_step3"))
    assert all(torch.equal(resumed["model"][key], step3["model"][key]) for key in step3["model"])


def test_reading_a_damaged_checkpoint_names_it(reference, tmp_path):
    copy = Path(shutil.copytree(reference.path, tmp_path / "run"))
    (copy / "checkpoints" / "dense_net0.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DamagedFileError, match=r"dense_net0\.pt cannot be loaded .*python -m experiment.main CONFIG --repair"):
        Run(copy).load_model("dense_net0")


def finished_copy(reference: RunDir, tmp_path: Path) -> tuple[Path, RunDir]:
    """A config whose results root holds a copy of the reference run folder."""
    config = cascade_config(tmp_path)
    target = run_folder(resolved(config))
    shutil.copytree(reference.path, target)
    return config, RunDir(target)


def test_metrics_with_a_torn_last_line_are_read_without_it_and_repaired(reference, tmp_path, caplog):
    config, run = finished_copy(reference, tmp_path)
    text = run.metrics_file.read_text()
    run.metrics_file.write_text(text[:-25])  # the last row (the prune step's) cut off mid-line
    with caplog.at_level(logging.WARNING, logger="experiment"):
        assert len(run.read_metrics()) == len(reference.read_metrics()) - 1
    assert "metrics.csv: its last line is incomplete" in caplog.text

    run_experiment(resolved(config))  # the step's model is evaluated again from its checkpoint
    assert run.metrics_file.read_text() == text


@pytest.mark.parametrize("damage", ["binary", "short row", "header cut"])
def test_a_damaged_metrics_table_stops_the_run_naming_the_file(reference, tmp_path, capsys, damage):
    config, run = finished_copy(reference, tmp_path)
    lines = run.metrics_file.read_text().splitlines(keepends=True)
    run.metrics_file.write_bytes({"binary": b"\xff\xfe\x00\x01garbage\n",
                                  "short row": "".join([lines[0], "train,dense,0\n", *lines[1:]]).encode(),
                                  "header cut": lines[0][:10].encode()}[damage])
    before = file_states(run.path)
    assert main([str(config)]) == 2
    error = capsys.readouterr().err
    assert f"error: {run.metrics_file} " in error and "move it aside and run the experiment again" in error
    assert damage != "short row" or "line 2 does not have the" in error
    assert file_states(run.path) == before


def test_a_damaged_data_split_stops_the_run_naming_the_file(reference, tmp_path):
    config, run = finished_copy(reference, tmp_path)
    run.split_file.write_bytes(run.split_file.read_bytes()[:50])
    with pytest.raises(DamagedFileError, match=r"data_split\.npz cannot be read .*restore it from a backup"):
        Run(run.path).load_data()
    run.metrics_file.unlink()  # so that the run has work to do and needs the split
    with pytest.raises(DamagedFileError, match=r"data_split\.npz cannot be read"):
        run_experiment(resolved(config))
    np.savez(run.split_file, train=np.zeros(3), valid=np.zeros(2))  # readable, but not index arrays
    with pytest.raises(DamagedFileError, match="does not hold two integer index arrays"):
        Run(run.path).load_data()


# ------------------------------------------------------------------ leftover temporaries (item 2)


def test_only_temporaries_of_the_locked_files_are_removed(tmp_path):
    """`remove_temporaries` matches the atomic-write pattern and the owner; a job owns its own models
    only (dense_net1 does not own dense_net10)."""
    names = [".dense_net1.pt.abc_1234.tmp", ".dense_net10.pt.xyz98765.tmp", "dense_net1.pt", ".dense_net1.pt.corrupt-1",
             "notes.tmp", ".cascade_ThresNet_net1_rep0_step2_0a1b2c3d.pt.q1w2e3r4.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_temporaries(tmp_path, lambda name: name.rsplit(".", 1)[0] in ("dense_net1",))
    assert [path.name for path in removed] == [".dense_net1.pt.abc_1234.tmp"]
    chain = Job.chain("run", "cascade", "ThresNet", 1, 0)
    assert chain.owns("cascade_ThresNet_net1_rep0_step2_0a1b2c3d") and not chain.owns("cascade_ThresNet_net10_rep0_step2")
    assert Job.dense_net("run", 1).owns("dense_net1") and not Job.dense_net("run", 1).owns("dense_net10")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(set(names) - {".dense_net1.pt.abc_1234.tmp"})


def test_a_resumed_run_removes_its_leftovers_but_not_those_of_jobs_it_does_not_take(reference, tmp_path):
    """net 1's job is not asked for, so its process may still be alive: its temporary stays."""
    config, run = finished_copy(reference, tmp_path)
    run.metrics_file.unlink()
    mine = [run.path / "checkpoints" / ".dense_net0.pt.aaaaaaaa.tmp", run.path / "progress" / ".dense_net0.pt.bbbbbbbb.tmp",
            run.path / "curves" / ".cascade_ThresNet_net0_rep0_step1.csv.cccccccc.tmp", run.path / ".metrics.csv.dddddddd.tmp",
            run.path / ".requests.yaml.eeeeeeee.tmp", run.path / ".data_split.npz.ffffffff.tmp"]
    other = run.path / "checkpoints" / ".dense_net1.pt.gggggggg.tmp"
    for path in [*mine, other]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a file")
    run_experiment(resolved(config))
    assert temporaries(run.path) == [other]
    assert untimed_rows(run) == untimed_rows(reference)


# --------------------------------------------------------------------- file modes, fsync (item 3)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "file.txt", "text")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == mode


def test_atomic_writes_fsync_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(handle: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(handle).st_mode))
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_bytes(tmp_path / "sub" / "file.bin", b"data")
    assert synced == [False, True]


# ---------------------------------------------------------------- finished runs are read (item 4)


def test_rerunning_a_finished_run_writes_nothing(reference, tmp_path, capsys):
    config, run = finished_copy(reference, tmp_path)
    before = file_states(run.path)
    shutil.rmtree(run.locks, ignore_errors=True)
    assert run_experiment(resolved(config)).path == run.path
    assert "mean ± std over nets" in capsys.readouterr().out
    assert file_states(run.path) == before
    assert not run.locks.exists()


def test_rerunning_a_finished_run_from_a_read_only_copy(reference, tmp_path):
    """The copy's results tree made read-only: by chmod, or, for root (whom chmod does not stop), by a
    read-only bind mount in a private mount namespace (skipped where that is not allowed)."""
    config, run = finished_copy(reference, tmp_path)
    results = tmp_path / "results"
    command = cli_command(config)
    everything = [results, *results.rglob("*")]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("root, and no unshare for a read-only mount")
        where = shlex.quote(str(results))
        script = (f"mount --bind {where} {where} && mount -o remount,bind,ro {where} || exit 98; "
                  f"touch {where}/probe 2>/dev/null && exit 99; exec \"$@\"")  # 99: not read-only after all
        command = ["unshare", "-m", "sh", "-c", script, "sh", *command]
    else:
        for path in everything:
            path.chmod(path.stat().st_mode & ~0o222)
    try:
        finished = run_process(command, cwd=tmp_path)
    finally:
        for path in everything:
            path.chmod(path.stat().st_mode | 0o200)
    if finished.returncode == 98:
        pytest.skip(f"no read-only bind mount here: {finished.stderr.strip()}")
    assert finished.returncode == 0, describe(finished)
    assert "mean ± std over nets" in finished.stdout
    assert not run.locks.exists()


# ----------------------------------------------------------------------- fault injection (item 6)

KILLER = """
import os, runpy, signal, sys

where, when = sys.argv[1], sys.argv[2]
real_replace = os.replace


def replace(source, target, *arguments, **keywords):
    hit = where in os.fspath(target)
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target, *arguments, **keywords)
    if hit and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
sys.argv = ["experiment.main", *sys.argv[3:]]
runpy.run_module("experiment.main", run_name="__main__", alter_sys=True)
"""

WRITES = ["config.yaml", "requests.yaml", "data_split.npz", "progress/dense_net0", "checkpoints/dense_net0",
          "curves/dense_net0", "metrics.csv", "checkpoints/cascade", "prune_curve.png"]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("where", WRITES)
def test_killed_at_a_write_then_resumed_ends_like_an_uninterrupted_run(reference, tmp_path, where, when):
    """A real process SIGKILLed at the first atomic write whose target contains `where`, just before
    or just after the rename; the resumed run leaves no temporary file and the reference's rows."""
    config = cascade_config(tmp_path)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    killed = run_process([sys.executable, str(killer), where, when, str(config)], cwd=tmp_path)
    assert killed.returncode == -9, describe(killed)
    run = RunDir(run_folder(resolved(config)))
    left = temporaries(run.path)
    if when == "before":
        assert [where.split("/")[-1] in path.name for path in left] == [True], left
    else:
        assert not left and list(run.path.glob(f"{where}*"))

    run_experiment(resolved(config))
    assert not temporaries(run.path)
    assert untimed_rows(run) == untimed_rows(reference)
    assert not list(run.path.glob("progress/*.pt"))
