"""Hostile and damaged input gets one line naming the file or key, before anything is written where
it can be (exit code 2), and damage after the fact is found and repaired:

* checkpoints and progress files carry a checksum of their contents: a flipped bit in a weight is
  found on load, and `--repair` trains such a model (or one whose checkpoint is gone) again;
* config values the model, loss, metric or scheduler would only refuse in training, counts that
  multiply into jobs and memory, config files that are not text, a newline that would reach a job
  script: refused at validation;
* damaged run-folder files (metrics.csv, config.yaml, requests.yaml, data_split.npz under workers)
  and file-system errors (a file-size limit, a folder where a lock file belongs, another user's run
  folder) are one line naming the path, exit 2;
* a process waiting for a lock names the process that holds it.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from conftest import HANG_TIMEOUT, REPO, cli_command, cli_env, describe, file_states, load_weights, tiny_config
from experiment.config import ConfigError, load_configs
from experiment.files import DamagedFileError, load_checkpoint, load_or_set_aside
from experiment.main import main
from experiment.results import Run, RunDir
from experiment.results.tree import RunLock
from experiment.config.identity import run_folder
from experiment.scheduler import run_experiment

CASCADE = {"mode": "cascade", "methods": ["ThresNet"], "numNets": 1, "spacing": [{"type": "manual", "values": [0.5, 0.3]}]}


def cascade_config(folder: Path) -> Path:
    return tiny_config(folder / "config.yaml", folder / "results", epochs=2, nets=1,
                       retraining={"numEpochs": 1, "batchSize": 128}, experiments=CASCADE)


def resolved(config: Path, *overrides: str) -> dict:
    return load_configs(config, list(overrides))[0]


def untimed_rows(run: RunDir) -> list[dict]:
    return [{name: value for name, value in row.items() if not name.endswith("seconds")} for row in run.read_metrics()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunDir:
    """A finished run of the cascade config: one dense net, two prune steps (read only)."""
    return run_experiment(resolved(cascade_config(tmp_path_factory.mktemp("reference"))))


def finished_copy(reference: RunDir, tmp_path: Path) -> tuple[Path, RunDir]:
    """A config whose results root holds a copy of the reference run folder."""
    config = cascade_config(tmp_path)
    target = run_folder(resolved(config))
    shutil.copytree(reference.path, target)
    return config, RunDir(target)


def flip_a_weight_byte(checkpoint: Path) -> None:
    """One bit of the first weight tensor's stored bytes changed in place (the file still loads)."""
    weights = next(iter(load_weights(checkpoint)["model"].values()))
    data = bytearray(checkpoint.read_bytes())
    start = data.find(weights.numpy().tobytes()[:16])
    assert start > 0
    data[start + 3] ^= 0x10
    checkpoint.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------- checksums


def test_a_flipped_bit_in_a_weight_is_found_and_repair_trains_the_model_again(reference, tmp_path, caplog):
    """The file loads (torch does not notice); its checksum does. A plain rerun of the finished run
    only reads it; `--repair` sets the checkpoint aside and trains the model again, ending with the
    reference's weights and rows."""
    config, run = finished_copy(reference, tmp_path)
    dense = run.checkpoint("dense_net0")
    flip_a_weight_byte(dense)
    assert torch.load(dense, weights_only=True)["model"]  # loads without complaint
    with pytest.raises(DamagedFileError, match=r"dense_net0\.pt does not match the checksum .* --repair"):
        load_checkpoint(dense)
    with pytest.raises(DamagedFileError, match=r"--repair"):
        Run(run.path).load_model("dense_net0")

    before = file_states(run.path)
    assert main([str(config)]) == 0
    assert file_states(run.path) == before  # a finished run, only read
    with caplog.at_level(logging.INFO, logger="experiment"):
        assert main([str(config), "--repair"]) == 0
    assert [path.name.split(".corrupt-")[0] for path in dense.parent.glob("*.corrupt-*")] == ["dense_net0.pt"]
    assert "does not match the checksum" in caplog.text and "training dense_net0" in caplog.text
    assert "retraining cascade" not in caplog.text  # the chain's checkpoints are intact
    expected = load_weights(reference.checkpoint("dense_net0"))["model"]
    assert all(torch.equal(load_checkpoint(dense)["model"][key], value) for key, value in expected.items())
    assert untimed_rows(run) == untimed_rows(reference)


def test_repair_trains_a_lost_step_checkpoint_again_from_the_step_before(reference, tmp_path, caplog):
    config, run = finished_copy(reference, tmp_path)
    run.checkpoint("cascade_ThresNet_net0_rep0_step2").unlink()
    with caplog.at_level(logging.INFO, logger="experiment"):
        assert main([str(config), "--repair"]) == 0
    assert "retraining cascade_ThresNet_net0_rep0_step2" in caplog.text
    assert "retraining cascade_ThresNet_net0_rep0_step1" not in caplog.text and "training dense" not in caplog.text
    assert untimed_rows(run) == untimed_rows(reference)
    before = file_states(run.path)
    assert main([str(config), "--repair"]) == 0  # now intact: nothing to do, nothing written
    assert file_states(run.path) == before


def test_a_progress_file_with_a_flipped_bit_is_set_aside(reference, tmp_path, caplog):
    _, run = finished_copy(reference, tmp_path)
    progress = run.progress("dense_net0")
    progress.parent.mkdir(exist_ok=True)
    shutil.copy(run.checkpoint("dense_net0"), progress)  # saved the same way, with a model entry
    flip_a_weight_byte(progress)
    with pytest.raises(DamagedFileError, match="does not match the checksum"):
        load_checkpoint(progress)
    with caplog.at_level(logging.WARNING, logger="experiment"):
        assert load_or_set_aside(progress, "cpu") is None
    assert not progress.exists() and len(list(progress.parent.glob("dense_net0.pt.corrupt-*"))) == 1
    assert "does not match the checksum saved with it" in caplog.text and "set aside as dense_net0.pt.corrupt-" in caplog.text


# ------------------------------------------------------------------------- validation before writing


@pytest.mark.parametrize("override, key, message", [
    ("training.lossKwargs={foo: 1}", "training.lossKwargs.foo", "CrossEntropyLoss takes no argument 'foo'"),
    ("training.lossKwargs={reduction: none}", "training.lossKwargs", "gives a loss per sample"),
    ("training.metricsTest=[{type: TopK, kwargs: {foo: 1}}]", "training.metricsTest[0].kwargs.foo", "TopK takes no argument 'foo'"),
    ("training.metricsTest=[{type: TopK, kwargs: {topk: 5}}]", "training.metricsTest[0].kwargs.topk", "topk must be below 2"),
    ("training.metricsTest=[{type: NLLPrior}]", "training.metricsTest[0].type", "NLLPrior does not fit a classifier"),
    ("training.lrSchedulers=[{type: StepLR, kwargs: {step_size: 0}}]", "training.lrSchedulers[0]", "ZeroDivisionError"),
    ("training.lrSchedulers=[{type: StepLR, kwargs: {step_size: 2, gamma: .nan}}]", "training.lrSchedulers[0].kwargs.gamma",
     "finite"),
    ("training.lrSchedulers=[{type: ExponentialLR, kwargs: {gamma: -1}}]", "training.lrSchedulers[0].kwargs.gamma", "> 0"),
    ("network.name=node_l3_h100000000_tanh_da", "network.name", "parameters (about"),
    ("experiments.numNets=1000000000", "experiments.numNets", "at most 10,000"),
    ("experiments.spacing=[{type: linear, numIntervals: 1000000000, maxVal: 0.9, minVal: 0.1}]",
     "experiments.spacing[0].numIntervals", "at most 10,000"),
    ("experiments.spacing=[{type: manual, values: [0.25, 0.5]}]", "experiments.spacing", "a cascade prunes further"),
    ("directories.results=''", "directories.results", "must not be empty"),
])
def test_config_errors_are_found_before_anything_is_written(tmp_path, override, key, message, capsys):
    config = cascade_config(tmp_path)
    assert main([str(config), override]) == 2
    error = capsys.readouterr().err
    assert f"command line: {key}: " in error and message in error, error
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_large_model_may_be_allowed_explicitly(tmp_path, capsys):
    config = cascade_config(tmp_path)
    assert main([str(config), "network.name=node_l2_h4000_tanh_da", "limits.maxParameters=1000", "--dry-run"]) == 2
    assert "above limits.maxParameters = 1,000" in capsys.readouterr().err
    assert main([str(config), "network.name=node_l2_h4000_tanh_da", "limits.maxParameters=200000000", "--dry-run"]) == 0
    plain, allowed = (load_configs(config, ["network.name=node_l2_h4000_tanh_da", *extra])[0]
                      for extra in ([], ["limits.maxParameters=200000000"]))
    assert run_folder(plain) == run_folder(allowed)  # a bound, not part of the run id


def test_reduce_lr_on_plateau_steps_on_the_validation_loss(tmp_path):
    """Every epoch after the first misses the (huge) improvement threshold, so the rate halves after it."""
    scheduler = ("training.lrSchedulers=[{type: ReduceLROnPlateau, kwargs: {factor: 0.5, patience: 0, threshold: 10, "
                 "threshold_mode: abs}}]")
    run = run_experiment(resolved(cascade_config(tmp_path), "experiments.mode=train", "training.numEpochs=3", scheduler))
    learning_rates = [row["lr"] for row in Run(run.path).curve("dense_net0")]  # the rate each epoch trained with
    assert learning_rates == pytest.approx([learning_rates[0], learning_rates[0], learning_rates[0] / 2])
    with pytest.raises(ConfigError, match="startEpoch"):
        load_configs(cascade_config(tmp_path), [scheduler, "training.startEpoch=1"])


@pytest.mark.parametrize("arguments, message", [
    (["--threads", "100000"], "argument --threads: must be at most 1024"),
    (["--workers", "5000"], "argument --workers: must be at most 1024"),
])
def test_process_counts_are_bounded(tmp_path, arguments, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(cascade_config(tmp_path)), *arguments])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_sweep_too_large_to_expand_is_refused_before_expanding(tmp_path, capsys):
    values = ",".join(str(value) for value in range(1, 1001))
    assert main([str(cascade_config(tmp_path)), f"training.numEpochs={values}", f"seed={values}", "--dry-run"]) == 2
    assert "make 1,000,000 experiments; one command runs at most 10,000" in capsys.readouterr().err


def test_config_files_that_are_not_yaml_text_are_refused_by_name(tmp_path, capsys):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"seed: \xff\xfe\x00")
    include_folder = tmp_path / "includes.yaml"
    include_folder.write_text(f"file: {tmp_path}\n")
    for path, message in ((fifo, "is not a regular file"), ("/dev/zero", "is not a regular file"),
                          (binary, "is not UTF-8 text (byte 0xff at offset 6)"), (tmp_path, "is a folder"),
                          (include_folder, f"file: '{tmp_path}' is a folder; an include names a YAML file"),
                          ("nowhere.yaml", f"relative to the working directory {Path.cwd()}")):
        assert main([str(path), "--dry-run"]) == 2
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------- damaged run files


@pytest.mark.parametrize("damage, message", [
    (lambda text: text.replace(",0,0,0,", ",zero,0,0,", 1), "line 2: column 'net' holds 'zero', not a count"),
    (lambda text: text.replace(",step,", ",stage,", 1), "has no column 'step'"),
    (lambda text: text.replace("method", "methode", 1), "has no column 'method'"),
    (lambda text: text.replace("\ncascade,ThresNet,0,0,1,0.5,", "\ncascade,ThresNet,0,0,1,half,", 1),
     "line 3: column 'target_prune_ratio' holds 'half', not a number"),
])
def test_a_metrics_table_with_a_wrong_cell_or_header_is_an_error_naming_it(reference, tmp_path, capsys, damage, message):
    config, run = finished_copy(reference, tmp_path)
    run.metrics_file.write_text(damage(run.metrics_file.read_text()))
    before = file_states(run.path)
    assert main([str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {run.metrics_file} ") and message in error and "Traceback" not in error
    assert file_states(run.path) == before


@pytest.mark.parametrize("content", ["not: [valid yaml", "- a list\n- of things\n", "network: {name: x}\nexper"])
def test_a_damaged_run_config_is_an_error_naming_it(reference, tmp_path, capsys, content):
    config, run = finished_copy(reference, tmp_path)
    run.metrics_file.unlink()  # work to do: the run's config.yaml is read to record the request
    run.config_file.write_text(content)
    assert main([str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {run.config_file} ") and "records the run's resolved config" in error
    with pytest.raises(DamagedFileError, match="config.yaml"):
        Run(run.path)


def test_a_truncated_requests_file_is_never_appended_to(reference, tmp_path, capsys):
    config, run = finished_copy(reference, tmp_path)
    run.metrics_file.unlink()
    text = run.requests_file.read_text()
    run.requests_file.write_text(text[: len(text) // 2] + "\n  - [")
    damaged = run.requests_file.read_text()
    assert main([str(config)]) == 2
    assert f"error: {run.requests_file} is not readable YAML" in capsys.readouterr().err
    assert run.requests_file.read_text() == damaged


def test_a_torn_last_metrics_line_is_reported_once(reference, tmp_path, caplog):
    _, run = finished_copy(reference, tmp_path)
    run.metrics_file.write_text(run.metrics_file.read_text()[:-25])
    with caplog.at_level(logging.WARNING, logger="experiment"):
        for _ in range(5):
            run.read_metrics()
    assert caplog.text.count("its last line is incomplete") == 1


@pytest.mark.slow
def test_a_truncated_data_split_under_workers_is_exit_2_naming_it(reference, tmp_path):
    config, run = finished_copy(reference, tmp_path)
    run.metrics_file.unlink()
    run.split_file.write_bytes(run.split_file.read_bytes()[:50])
    finished = subprocess.run(cli_command(config, "--workers", "2"), env=cli_env(), capture_output=True, text=True,
                              timeout=HANG_TIMEOUT)
    assert finished.returncode == 2, describe(finished)
    assert f"error: {run.split_file} cannot be read" in finished.stderr and "Traceback" not in finished.stderr
    assert "a worker stopped on the file error above" in finished.stderr


# ------------------------------------------------------------------------------------- file system


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_naming_the_file(tmp_path):
    """A write past RLIMIT_FSIZE fails with EFBIG (SIGXFSZ ignored, as a batch system may set it)."""
    config = cascade_config(tmp_path)

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    finished = subprocess.run(cli_command(config), env=cli_env(), capture_output=True, text=True, timeout=HANG_TIMEOUT,
                              preexec_fn=limit_file_size)
    assert finished.returncode == 2, describe(finished)
    assert "File too large (EFBIG): a file-size limit stopped the write" in finished.stderr
    assert f"error: {tmp_path}" in finished.stderr and "Traceback" not in finished.stderr


def test_a_folder_where_a_lock_file_belongs_is_named_before_anything_is_written(reference, tmp_path, capsys):
    config, run = finished_copy(reference, tmp_path)
    run.metrics_file.unlink()
    (run.locks / "metrics.lock").mkdir(parents=True)
    before = file_states(run.path)
    assert main([str(config)]) == 2
    assert f"lock file {run.locks / 'metrics.lock'} is a folder" in capsys.readouterr().err
    assert file_states(run.path) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the command as another user")
@pytest.mark.slow
def test_a_run_folder_of_another_user_is_named_before_anything_is_written(reference):
    """A shared results tree (the results folder open to all, a run folder made by root under umask
    022); the command runs as the user nobody."""
    shared = Path(tempfile.mkdtemp(prefix="shared-tree-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        interpreter = Path(sys.executable).resolve()
        if any(path.stat().st_mode & 0o005 != 0o005 for path in [*shared.parents, *interpreter.parents, *REPO.parents, REPO]):
            pytest.skip("the temporary folder or the interpreter is not open to other users")
        config, run = finished_copy(reference, shared)
        run.metrics_file.unlink()
        for folder in (shared / "results", run.path.parent, run.path.parent.parent):
            folder.chmod(0o777)
        finished = subprocess.run(cli_command(config), env={**cli_env(), "HOME": str(shared)}, capture_output=True,
                                  text=True, timeout=HANG_TIMEOUT, cwd=shared, user=65534, group=65534)
        assert finished.returncode == 2, describe(finished)
        assert f"error: {run.path}: no permission to write in it (owner uid 0)" in finished.stderr
    finally:
        shutil.rmtree(shared)


# ------------------------------------------------------------------------------------------- locks


@pytest.mark.slow
def test_a_process_waiting_for_a_lock_names_its_holder(tmp_path, caplog, monkeypatch):
    """The holder, a real second process, takes the lock and is stopped (SIGSTOP); the waiter says
    whom it waits for, and gets the lock once the holder is gone."""
    run = RunDir(tmp_path / "run")
    lock = run.lock("metrics")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pathlib import Path
from experiment.results.tree import RunLock
lock = RunLock(Path({str(lock.path)!r}))
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""], env=cli_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGSTOP)
        monkeypatch.setattr(RunLock, "WAIT_NOTICE_SECONDS", 0.2)
        threading.Timer(1.0, holder.kill).start()
        with caplog.at_level(logging.WARNING, logger="experiment"):
            with lock:
                pass
    finally:
        holder.kill()
        holder.wait()
    assert f"for {lock.path}, held by " in caplog.text and f":{holder.pid} since " in caplog.text


def test_an_analysis_of_a_run_without_its_checkpoints_says_how_to_train_them_again(reference, tmp_path, capsys):
    """A copy of a run trimmed to its results: the 2-D figures need the models, and say how to get them."""
    from paper import samples_2d
    from paper.common import command

    copy = Path(shutil.copytree(reference.path, tmp_path / "run"))
    shutil.rmtree(copy / "checkpoints")
    assert command(lambda: samples_2d.main([str(copy), "--out", str(tmp_path / "figures")])) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {copy / 'checkpoints' / 'dense_net0.pt'} is missing. ")
    assert "python -m experiment.main CONFIG --repair" in error and "Traceback" not in error
