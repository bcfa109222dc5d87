"""`--launcher` (experiment/launcher.py): a sweep submitted as a job array through submitit.

* end to end, for real, through submitit's local executor (`--launcher local --wait`): a two-config
  sweep in two array tasks writes every metrics row of both runs once, the rows a plain run plans,
  trains each model once, and prints what it submitted; one task, sent the signal SLURM sends
  before preempting a job, is requeued and resumes; running the command again submits nothing;
* the `launcher` config section and its flags: validated like every section, checked against the
  jobs and devices before anything is submitted, and not part of the run id;
* `--wait` reports a failed task and why; with stand-ins for `sbatch` and `srun`, the SLURM array
  script carries the resources and each task's submission its shard;
* `--dry-run` shows each task's shard; submitit stays optional.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

import experiment
from conftest import HANG_TIMEOUT, cli_command, cli_env, run_folders, tiny_config
from experiment.config import ConfigError, load_configs
from experiment.jobs import Shard, jobs_of
from experiment.main import main
from experiment.plan import Plan, make_plan
from experiment.results.tree import model_name
from experiment.config.identity import run_id

pytestmark = pytest.mark.slow  # submits jobs through submitit's local executor

SEEDS = (0, 1)  # the sweep: one experiment per seed

# a line of a run's log.txt: time, host:pid, message
TRAINED = re.compile(r"^\S+ \S+ \S+:(\d+) (?:training|retraining) (\S+)$", re.MULTILINE)


def sweep_config(folder: Path, **launcher) -> Path:
    """Two experiments (seeds 0 and 1), each two dense nets of one epoch and a two-ratio ThresNet
    cascade per net, with one retraining epoch a step: 4 jobs each, 8 in all."""
    path = tiny_config(folder / "sweep.yaml", folder / "results", epochs=1, nets=2,
                       retraining={"numEpochs": 1, "batchSize": 128},
                       experiments={"mode": "cascade", "methods": ["ThresNet"],
                                    "spacing": [{"type": "manual", "values": [0.5, 0.25]}]},
                       launcher=launcher)
    content = yaml.safe_load(path.read_text())
    content["customizations"] = [{"key": ["seed"], "value": seed} for seed in SEEDS]
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def plans_of(config: Path, *overrides: str) -> list[Plan]:
    return [make_plan(resolved) for resolved in load_configs(config, list(overrides))]


def planned_keys(plan: Plan) -> set[tuple]:
    """The metrics-row keys a run of `plan` writes: a dense row per net, a row per chain step."""
    return {("train", "dense", net, 0, 0) for net in plan.nets} | {
        (plan.mode, method, net, repetition, step) for method in plan.methods for net in plan.nets
        for repetition in range(plan.repetitions) for step in range(1, len(plan.keep_ratios) + 1)}


def row_keys(run_folder: Path) -> list[tuple]:
    with open(run_folder / "metrics.csv", newline="") as file:
        return [(row["mode"], row["method"], int(row["net"]), int(row["repetition"]), int(row["step"]))
                for row in csv.DictReader(file)]


# ------------------------------------------------------------------------------------- end to end


def test_a_sweep_through_the_local_executor(tmp_path, capsys):
    """`--launcher local --wait` with two tasks (from the config's `launcher` section). When a task
    logs that it started training its first model, it is sent SIGUSR2, as SLURM does before it
    preempts a job: submitit checkpoints it and the local executor starts it again, and the task
    resumes. In the end every planned row is there once, and only the model the preempted task was
    training may have been trained twice."""
    config = sweep_config(tmp_path, tasks=2)
    results = tmp_path / "results"
    arguments = ["--launcher", "local", "--time-min", "30", "--job-name", "tiny-sweep", "--wait"]
    output = tmp_path / "output.txt"
    with open(output, "w") as file:
        process = subprocess.Popen(cli_command(config, *arguments), cwd=tmp_path, env=cli_env(), stdout=file,
                                   stderr=subprocess.STDOUT)
    preempted = None
    try:
        deadline = time.monotonic() + HANG_TIMEOUT
        while preempted is None and process.poll() is None and time.monotonic() < deadline:
            for log in results.glob("*/*/*/log.txt"):
                if match := TRAINED.search(log.read_text()):
                    preempted = int(match.group(1))
                    os.kill(preempted, signal.SIGUSR2)
                    break
            time.sleep(0.005)
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.read_text()
    assert process.returncode == 0, f"exit {process.returncode}\n{text[-4000:]}"
    assert preempted is not None, "never saw a task training"

    # the summary, the waiting and the end-of-run tables
    assert "submitted 2 task(s) to submitit's local executor (this machine) for 8 unfinished of 8 job(s)" in text
    job_ids = re.findall(r"^  task (\d+): --shard \1/2, 4 job\(s\), job id (\d+), log (\S+)$", text, re.MULTILINE)
    assert [int(task) for task, _, _ in job_ids] == [0, 1], text
    for line in ("per task:       1 CPU(s), 0 GPU(s)", "time limit 30 min", f"logs:           {results}/submitit/%j",
                 "job name tiny-sweep", "tail -f ", "run the same command again"):
        assert line in text, line
    for task, job_id, _ in job_ids:
        assert f"task {task} (--shard {task}/2, job {job_id}) finished" in text
    assert text.count("mean ± std over nets") == 2

    # every planned row once, in the run of each experiment
    plans = plans_of(config)
    assert sorted(run_folders(results)) == sorted(plan.run_folder for plan in plans)
    for plan in plans:
        keys = row_keys(plan.run_folder)
        assert sorted(keys) == sorted(planned_keys(plan)), plan.run_folder
        assert not list(plan.run_folder.glob("progress/*"))

    # each task's log: its shard, done by one process, the preempted one by two
    logs = {int(task): Path(log) for task, _, log in job_ids}
    task_logs = {task: log.read_text() for task, log in logs.items()}
    for task, log_text in task_logs.items():
        assert f"job(s) of shard {task}/2 to do" in log_text
    requeued = [task for task, log_text in task_logs.items() if "Requeued job" in log_text]
    assert len(requeued) == 1, task_logs
    assert task_logs[requeued[0]].count(f"job(s) of shard {requeued[0]}/2 to do") == 2
    assert "this job is preempted" in logs[requeued[0]].with_suffix(".err").read_text()

    # each model trained once, but the one the preempted process was training when the signal came
    trained = Counter()
    interrupted = set()
    for plan in plans:
        lines = TRAINED.findall((plan.run_folder / "log.txt").read_text())
        trained.update((plan.run_id, model) for _, model in lines)
        interrupted |= {(plan.run_id, model) for pid, model in lines if int(pid) == preempted}
    models = {(plan.run_id, model_name(dict(zip(("mode", "method", "net", "repetition", "step"), key))))
              for plan in plans for key in planned_keys(plan)}
    assert set(trained) == models
    assert all(count == 1 for model, count in trained.items() if model not in interrupted), trained
    assert all(count <= 2 for count in trained.values()), trained

    # the same command again finds nothing left and submits nothing
    assert main([str(config), *arguments]) == 0
    assert "all 8 job(s) are finished: nothing to submit" in capsys.readouterr().out
    assert len([folder for folder in (results / "submitit").iterdir() if folder.name != "%j"]) == 2


@pytest.mark.skipif(torch.cuda.device_count() >= 8, reason="GPU 7 is there")
def test_wait_reports_a_failed_task(tmp_path, monkeypatch, capsys):
    """A task that fails (it asks for GPU 7 of 8 this machine does not have) is reported with the
    reason from its error log, and the command fails. (Launched from this process: the task is a
    process of its own all the same.)"""
    for name in ("PYTHONPATH", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, cli_env()[name])
    config = sweep_config(tmp_path)
    assert main([str(config), "device=cuda:7", "--launcher", "local", "--tasks", "1", "--gpus-per-task", "8",
                 "--wait"]) == 1
    output = capsys.readouterr()
    job_id = re.search(r"^  task 0: --shard 0/1, 8 job\(s\), job id (\d+), log ", output.out, re.MULTILINE).group(1)
    error = output.err.split(f"task 0 (--shard 0/1, job {job_id}) failed; from its error log ")[1]
    assert "config error: <config>: device: cuda:7 requested but" in error
    assert "RuntimeError: shard 0/1 failed (exit code 2)" in error
    assert "1 of 1 task(s) failed (task(s) 0); the run is incomplete: run the same command again" in error
    assert "mean ± std" not in output.out


# --------------------------------------------------------------------------- settings and checks


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """The sweep, never run: its results folder stays absent."""
    return sweep_config(tmp_path_factory.mktemp("sweep"))


@pytest.mark.parametrize("launcher, key, message", [
    ({"partition": 5}, "launcher.partition", "expected a string, got int 5"),
    ({"partition": "two words"}, "launcher.partition", "without spaces"),
    ({"partiton": "gpu"}, "launcher.partiton", "did you mean 'partition'"),
    ({"tasks": 0}, "launcher.tasks", "must be at least 1, got 0"),
    ({"timeMin": 1.5}, "launcher.timeMin", "expected an integer"),
    ({"gpusPerTask": -1}, "launcher.gpusPerTask", "must be at least 0"),
    ({"memGb": 0}, "launcher.memGb", "must be > 0"),
])
def test_the_launcher_section_is_validated(tmp_path, launcher, key, message):
    with pytest.raises(ConfigError) as error:
        load_configs(sweep_config(tmp_path, **launcher))
    assert error.value.key == key and message in error.value.message
    assert error.value.file.endswith("sweep.yaml")


def test_the_launcher_section_has_defaults_and_leaves_the_run_id(config):
    (plain, *_), (launched, *_) = load_configs(config), load_configs(config, ["launcher.partition=gpu",
                                                                             "launcher.tasks=3"])
    assert plain["launcher"] == {"tasks": None, "partition": None, "account": None, "timeMin": 240,
                                 "timeoutRequeues": 3, "gpusPerTask": None, "cpusPerTask": None, "memGb": None,
                                 "arrayParallelism": None, "jobName": "sparse-flows", "logs": None}
    assert launched["launcher"]["partition"] == "gpu"
    assert run_id(launched) == run_id(plain)


def test_dry_run_shows_each_tasks_shard_without_submitit(config, monkeypatch, capsys):
    """Nothing is submitted or written; by default one task per dense net (4); flags override the
    config section (a numeric partition name stays a name)."""
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` fails
    assert main([str(config), "--launcher", "slurm", "--dry-run", "--partition", "7", "--workers", "2",
                 "--threads", "3", "--mem-gb", "2.5"]) == 0
    text = capsys.readouterr().out.split("# would submit ")[1]
    assert text.startswith("4 task(s) to SLURM (dry run: nothing submitted)")
    assert "--workers 2 --threads 3 --shard I/4" in text
    assert "per task:       6 CPU(s), 0 GPU(s), 2.5 GB; time limit 240 min" in text
    assert "partition 7, account (default), at most 4 task(s) at once, job name sparse-flows" in text
    jobs = [job for plan in plans_of(config) for job in jobs_of(plan)]
    for index in range(4):
        listed = text.split(f"  task {index}: --shard {index}/4, 2 job(s)\n")[1].splitlines()[:2]
        assert [line.strip() for line in listed] == [str(job) for job in Shard(index, 4).select(jobs)]
    assert not (config.parent / "results").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--tasks", "9"], "launcher.tasks: 9 tasks for 8 job(s); at most one task per job"),
    (["--tasks", "0"], "command line: launcher.tasks: must be at least 1, got 0"),
    (["--time-min", "soon"], "command line: launcher.timeMin: expected an integer, got str 'soon'"),
    (["device=cuda:1", "--gpus-per-task", "1"], "launcher.gpusPerTask: 1 GPU(s) per task, but device cuda:1 needs 2"),
    (["--workers", "3", "--gpus-per-job", "0.5", "--gpus-per-task", "1"],
     "but --workers 3 with --gpus-per-job 0.5 needs 2"),
])
def test_bad_launches_are_refused_before_submitting(config, arguments, message, capsys):
    overrides = [argument for argument in arguments if "=" in argument]
    flags = [argument for argument in arguments if "=" not in argument]
    assert main([str(config), *overrides, "--launcher", "local", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (config.parent / "results").exists()


def test_the_experiments_of_a_sweep_share_one_launcher_section(tmp_path, capsys):
    """One command submits one array: a customization may not change the resources."""
    config = sweep_config(tmp_path)
    content = yaml.safe_load(config.read_text())
    content["customizations"][1] = {"key": ["launcher", "tasks"], "value": 1}
    config.write_text(yaml.safe_dump(content))
    assert main([str(config), "--launcher", "local", "--dry-run"]) == 2
    assert (f"config error: {config}: launcher: experiment 2 of 2 has another launcher section than experiment 1"
            in capsys.readouterr().err)


@pytest.mark.parametrize("arguments, message", [
    (["--partition", "gpu"], "--partition needs --launcher"),
    (["--wait"], "--wait needs --launcher"),
    (["--launcher", "local", "--shard", "0/2"], "--shard does not go with --launcher"),
    (["--launcher", "pbs"], "invalid choice: 'pbs'"),
])
def test_launcher_flags_need_a_launcher(config, arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(config), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_submitit_is_optional(config, monkeypatch, capsys):
    """experiment.main imports without it; a launch without it says how to install it."""
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` fails
    for name in ("main", "launcher"):  # imported afresh below; the modules are put back afterwards
        monkeypatch.delitem(sys.modules, f"experiment.{name}")
        monkeypatch.setattr(experiment, name, getattr(experiment, name))
    fresh_main = importlib.import_module("experiment.main").main
    assert fresh_main([str(config), "--launcher", "local"]) == 2
    assert 'needs submitit, an optional dependency: pip install -e ".[cluster]"' in capsys.readouterr().err
    assert not (config.parent / "results").exists()


def slurm_stand_ins(tmp_path: Path, monkeypatch) -> None:
    """`srun` (does nothing) and `sbatch` (keeps the script it is given as tmp_path/array.sh and
    answers with job id 4242) first on the PATH."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_folder / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/array.sh\necho "Submitted batch job 4242"\n')
    for program in ("srun", "sbatch"):
        (bin_folder / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")


def test_the_slurm_array_script(tmp_path, monkeypatch, capsys):
    """`--launcher slurm` with stand-ins for `srun` (there) and `sbatch` (keeps the script it is
    given, answers with a job id): the array script carries the resources, and each task's pickled
    submission runs its shard of the same command and requeues itself as the same shard."""
    from submitit.core.utils import DelayedSubmission

    slurm_stand_ins(tmp_path, monkeypatch)
    config = sweep_config(tmp_path, partition="gpu", memGb=2.5)
    assert main([str(config), "experiments.numNets=1", "--launcher", "slurm", "--tasks", "2", "--account", "proj",
                 "--gpus-per-task", "1", "--array-parallelism", "1", "--time-min", "30", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "submitted 2 task(s) to SLURM for 4 unfinished of 4 job(s): array job 4242" in text
    log = tmp_path / "results/submitit/4242_1/4242_1_0_log.out"
    assert f"task 1: --shard 1/2, 2 job(s), job id 4242_1, log {log}" in text
    assert "squeue -j 4242" in text and "scancel 4242" in text
    script = (tmp_path / "array.sh").read_text()
    for line in ("--array=0-1%1", "--partition=gpu", "--account=proj", "--time=30", "--gpus-per-node=1",
                 "--cpus-per-task=2", "--mem=2560MB", "--job-name=sparse-flows", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
    for task in (0, 1):
        submission = DelayedSubmission.load(tmp_path / f"results/submitit/4242_{task}/4242_{task}_submitted.pkl")
        assert submission.args == (f"{task}/2",)
        assert submission.function.command[:2] == [str(config), "experiments.numNets=1"]
        assert submission.function.command[-4:] == ["--workers", "2", "--threads", "1"]
        requeued = submission.function.checkpoint(*submission.args)
        assert (requeued.function, requeued.args) == (submission.function, submission.args)
    assert not run_folders(tmp_path / "results")  # nothing ran


@pytest.mark.parametrize("override, key", [
    ('launcher.logs="x\\ntouch PWNED\\n#"', "launcher.logs"),
    ('directories.results="out\\n#SBATCH --wrap=touch PWNED"', "directories.results"),
    ('launcher.jobName="a\\rb"', "launcher.jobName"),
])
def test_a_newline_in_a_config_string_is_refused_before_anything_is_written(tmp_path, override, key, capsys):
    """A newline in a value that reaches the job script would start a line of its own there, which
    the shell runs: refused at validation, naming the key."""
    config = sweep_config(tmp_path)
    assert main([str(config), override, "--launcher", "slurm", "--dry-run"]) == 2
    assert f"command line: {key}: must not contain control characters" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not list(tmp_path.rglob("PWNED"))


def test_shell_syntax_in_folders_stays_text_in_the_slurm_script(tmp_path, monkeypatch, capsys):
    """Folders may hold spaces, quotes and `$(...)`: the array script (captured from a stand-in
    `sbatch`, then run by bash with a stand-in `srun`) runs none of it."""
    slurm_stand_ins(tmp_path, monkeypatch)
    results = f"{tmp_path}/res $(touch {tmp_path}/PWNED1); `touch {tmp_path}/PWNED2`"
    logs = f"{tmp_path}/logs $(touch {tmp_path}/PWNED3) 'q\" %j"
    config = sweep_config(tmp_path)
    assert main([str(config), f"directories.results={json.dumps(results)}", f"launcher.logs={json.dumps(logs)}",
                 "--launcher", "slurm"]) == 0
    assert "array job 4242" in capsys.readouterr().out
    script = tmp_path / "array.sh"
    assert "$(touch" in script.read_text()
    subprocess.run(["bash", str(script)], check=True, cwd=tmp_path, timeout=HANG_TIMEOUT,
                   env={**os.environ, "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "0"})
    assert not list(tmp_path.glob("PWNED*"))


@pytest.mark.skipif(shutil.which("srun") is not None, reason="SLURM is installed here")
def test_slurm_without_slurm_says_so(config, capsys):
    assert main([str(config), "--launcher", "slurm"]) == 2
    error = capsys.readouterr().err
    assert "--launcher slurm: " in error and "srun" in error and "--launcher local tries" in error
    assert not (config.parent / "results").exists()
