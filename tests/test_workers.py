"""Many processes on one results tree (docs/RUNNING.md), through real runs of `python -m experiment.main` on a
tiny cascade config (two dense nets, two methods, two ratios), checked through the tree they leave:

* two processes upserting metrics rows into one run folder at once keep every row;
* four commands started together (asking for overlapping parts of one run) write every row once and
  train every model once; config.yaml holds the union of what they asked, requests.yaml every request;
* `--shard 0/2` and `--shard 1/2` started together cover the run once, with a single process's rows;
* `--workers 2` gives the rows and the tensors of `--workers 1`, even when one worker is SIGKILLed
  mid-retraining: the other worker takes its job over and resumes it, the parent reports the loss,
  and rerunning the command finds nothing left to do;
* the job graph, shards, SLURM array variables and argument checks.
"""

from __future__ import annotations

import csv
import multiprocessing
import multiprocessing.synchronize
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import HANG_TIMEOUT, cli_command, cli_env, load_weights, the_run_folder, tiny_config
from experiment.config import load_configs
from experiment.jobs import Job, Shard, jobs_of
from experiment.main import main
from experiment.plan import make_plan
from experiment.results import RunDir
from experiment.scheduler import run_experiment
from experiment.workers import worker_devices

pytestmark = pytest.mark.slow  # starts worker processes

KEEPS = (0.5, 0.25)
METHODS = ["FilterThresNet", "ThresNet"]

# lines of the experiment log, with or without a worker's prefix
TRAINED = re.compile(r"^(?:worker \d+: )?(?:training|retraining) (\S+)$", re.MULTILINE)
RECORDED = re.compile(r"^(?:worker \d+: )?(\w+) net (\d+) rep (\d+) step (\d+): prune ratio", re.MULTILINE)


# ------------------------------------------------------------------------------------------ helpers


def start(config: Path, results: Path, output: Path, *arguments: str) -> subprocess.Popen:
    """`python -m experiment.main CONFIG directories.results=RESULTS ARGUMENTS...`, stdout and stderr
    into the file `output`."""
    with open(output, "w") as file:
        return subprocess.Popen(cli_command(config, f"directories.results={results}", *arguments), cwd=config.parent,
                                env=cli_env(), stdout=file, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, output: Path, expected_exit: int = 0) -> str:
    try:
        process.wait(timeout=HANG_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.read_text()
    assert process.returncode == expected_exit, f"exit {process.returncode}\n{text[-4000:]}"
    return text


def run(config: Path, results: Path, output: Path, *arguments: str) -> str:
    return finish(start(config, results, output, *arguments), output)


def read_rows(run_folder: Path) -> list[dict[str, str]]:
    with open(run_folder / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def row_key(row: dict) -> tuple:
    return row["mode"], row["method"], int(row["net"]), int(row["repetition"]), int(row["step"])


def untimed(rows: list[dict[str, str]]) -> dict[tuple, dict[str, str]]:
    """Rows by key, without the wall-time columns; a duplicate key fails."""
    keyed = {row_key(row): {name: value for name, value in row.items() if not name.endswith("seconds")} for row in rows}
    assert len(keyed) == len(rows), "duplicate metrics rows"
    return keyed


def trained_models(*outputs: str) -> list[str]:
    return [name for output in outputs for name in TRAINED.findall(output)]


def recorded_rows(*outputs: str) -> list[tuple]:
    return [(method, int(net), int(repetition), int(step)) for output in outputs
            for method, net, repetition, step in RECORDED.findall(output)]


def assert_same_tensors(run_a: Path, run_b: Path) -> None:
    """The same checkpoints, with bit-identical weights and masks and the same bookkeeping."""
    names = sorted(path.name for path in (run_a / "checkpoints").glob("*.pt"))
    assert sorted(path.name for path in (run_b / "checkpoints").glob("*.pt")) == names
    for name in names:
        a, b = load_weights(run_a / "checkpoints" / name), load_weights(run_b / "checkpoints" / name)
        for part in ("model", "masks"):
            assert a[part].keys() == b[part].keys(), f"{name}: {part}"
            for key in a[part]:
                assert torch.equal(a[part][key], b[part][key]), f"{name}: {part}[{key}] differs"
        for field in ("epochs", "kept_epoch", "keep_ratios", "method"):
            assert a.get(field) == b.get(field), f"{name}: {field}"


# ------------------------------------------------------------------------------- the shared runs


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("config")
    return tiny_config(folder / "config.yaml", folder / "results", epochs=1, nets=2,
                       retraining={"numEpochs": 2, "batchSize": 128},
                       experiments={"mode": "cascade", "methods": METHODS,
                                    "spacing": [{"type": "manual", "values": list(KEEPS)}]})


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> Path:
    """The run folder of one uninterrupted single-process run (read only). It runs in this process,
    through the code `--workers 1` runs, to save the start of another interpreter."""
    results = tmp_path_factory.mktemp("reference") / "results"
    return run_experiment(load_configs(config, [f"directories.results={results}"])[0]).path


ALL_MODELS = [f"dense_net{net}" for net in (0, 1)] + [
    f"cascade_{method}_net{net}_rep0_step{step}" for method in METHODS for net in (0, 1) for step in (1, 2)]


def expected_keys(nets: int = 2, methods: list[str] = METHODS) -> set[tuple]:
    return {("train", "dense", net, 0, 0) for net in range(nets)} | {
        ("cascade", method, net, 0, step) for method in methods for net in range(nets) for step in (1, 2)}


def test_reference_run_has_every_row(reference):
    assert set(untimed(read_rows(reference))) == expected_keys()
    assert sorted(path.stem for path in (reference / "checkpoints").glob("*.pt")) == sorted(ALL_MODELS)


# ----------------------------------------------------------------------------- concurrent upserts

def upsert_rows(folder: Path, writer: int, count: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    run = RunDir(folder)
    for index in range(count):
        run.upsert_metrics({"mode": "cascade", "method": "ThresNet", "net": writer, "repetition": 0, "step": index,
                            "test_loss": index / count})


def test_concurrent_upserts_keep_every_row(tmp_path):
    """Two processes (forked: they do no torch work, and start at once) each upsert 100 rows."""
    count, context = 100, multiprocessing.get_context("fork")
    start = context.Event()
    writers = [context.Process(target=upsert_rows, args=(tmp_path / "run", writer, count, start)) for writer in (0, 1)]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(timeout=HANG_TIMEOUT)
        assert writer.exitcode == 0
    keys = [(int(row["net"]), int(row["step"])) for row in read_rows(tmp_path / "run")]
    assert sorted(keys) == [(writer, index) for writer in (0, 1) for index in range(count)]


# ------------------------------------------------------------------- four commands at the same time


def test_four_commands_at_once_train_each_model_once(config, reference, tmp_path):
    results = tmp_path / "results"
    asked = [(), (), ("experiments.methods=[ThresNet]", "experiments.numNets=1"),
             ("experiments.methods=[NoPrune]", "experiments.numNets=1")]
    outputs = [tmp_path / f"output{index}.txt" for index in range(len(asked))]
    processes = [start(config, results, output, *overrides) for output, overrides in zip(outputs, asked)]
    texts = [finish(process, output) for process, output in zip(processes, outputs)]
    run_folder = the_run_folder(results)

    # every row once: the union of what the four asked, each evaluated by one process
    rows = untimed(read_rows(run_folder))
    extra = {("cascade", "NoPrune", 0, 0, step) for step in (1, 2)}
    assert set(rows) == expected_keys() | extra
    recorded = recorded_rows(*texts)
    assert sorted(recorded) == sorted(key[1:] for key in rows), "a row was evaluated more or less than once"
    reference_rows = untimed(read_rows(reference))
    assert {key: row for key, row in rows.items() if key not in extra} == reference_rows

    # every model trained by exactly one of them
    trained = trained_models(*texts)
    assert sorted(trained) == sorted(set(trained)), f"trained more than once: {trained}"
    assert len(trained) == len(rows)

    # the record of what was asked: one request per command, config.yaml the union
    resolved = load_configs(config, [f"directories.results={results}"])[0]
    requests = RunDir(run_folder).load_requests()
    assert sorted(request["pid"] for request in requests) == sorted(process.pid for process in processes)
    for request in requests:
        overrides = asked[[process.pid for process in processes].index(request["pid"])]
        expected = load_configs(config, [f"directories.results={results}", *overrides])[0]["experiments"]
        assert request["experiments"] == expected
        assert "experiment.main" in request["command"] and request["host"] and request["time"]
    recorded_config = RunDir(run_folder).load_config()
    first_seen = list(dict.fromkeys(method for request in requests for method in request["experiments"]["methods"]))
    assert sorted(first_seen) == ["FilterThresNet", "NoPrune", "ThresNet"]
    assert recorded_config == {**resolved, "experiments": {**resolved["experiments"], "methods": first_seen,
                                                           "mode": "cascade", "numNets": 2}}
    assert not list(run_folder.glob("progress/*"))


# ------------------------------------------------------------------------------------------ shards


def test_two_shards_started_together_cover_the_run_once(config, reference, tmp_path):
    """One dense net: shard 0 gets it and the ThresNet chain, shard 1 the FilterThresNet chain, which
    needs shard 0's dense net (it trains it itself if it gets there first)."""
    results = tmp_path / "results"
    outputs = [tmp_path / f"shard{index}.txt" for index in (0, 1)]
    processes = [start(config, results, output, "experiments.numNets=1", "--shard", f"{index}/2")
                 for index, output in zip((0, 1), outputs)]
    texts = [finish(process, output) for process, output in zip(processes, outputs)]

    rows = untimed(read_rows(the_run_folder(results)))
    assert set(rows) == expected_keys(nets=1)
    assert rows == {key: row for key, row in untimed(read_rows(reference)).items() if key[2] == 0}
    assert sorted(recorded_rows(*texts)) == sorted(key[1:] for key in rows)
    trained = trained_models(*texts)
    assert trained.count("dense_net0") == 1 and sorted(trained) == sorted(set(trained))
    assert "started" in texts[1] and "cascade_FilterThresNet_net0_rep0" in texts[1]
    assert "cascade_ThresNet_net0" not in texts[1] and "cascade_FilterThresNet_net0" not in texts[0]


# ------------------------------------------------------------------------------------------ workers


def test_two_workers_match_one_and_take_over_a_killed_workers_job(config, reference, tmp_path):
    """`--workers 2`, one worker SIGKILLed in the middle of retraining: the other takes the job over
    and resumes it, the parent reports the loss and fails; rerunning the command finds everything
    done, and the run equals the single-process one, rows and tensors (both workers' models, the
    resumed one included). One run serves both checks, to keep the test time down."""
    results, log_path = tmp_path / "results", tmp_path / "output.txt"
    victim = "cascade_ThresNet_net0_rep0_step2"
    process = start(config, results, log_path, "--workers", "2")
    killed_worker, saved = None, None
    try:
        deadline = time.monotonic() + HANG_TIMEOUT
        while killed_worker is None and time.monotonic() < deadline and process.poll() is None:
            for progress in results.glob(f"*/*/*/progress/{victim}_*.pt"):  # exists from epoch 1 until the step ends
                try:
                    saved = load_weights(progress)
                except (FileNotFoundError, EOFError, RuntimeError):
                    continue  # the step just ended
                if saved["epoch"] == 1:  # in its second (last) epoch: kill its worker
                    text = log_path.read_text()
                    owner = re.search(rf"^worker (\d+): retraining {victim}$", text, re.MULTILINE).group(1)
                    os.kill(int(re.search(rf"^worker {owner}: pid (\d+)", text, re.MULTILINE).group(1)), signal.SIGKILL)
                    killed_worker = int(owner)
            time.sleep(0.005)
        output = finish(process, log_path, expected_exit=1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert killed_worker is not None, f"never saw {victim} mid-retraining"
    assert f"worker {killed_worker} was killed by signal {signal.SIGKILL}" in output
    assert {int(worker) for worker in re.findall(r"^worker (\d+): started", output, re.MULTILINE)} == {0, 1}
    assert "\r" not in output, "progress bars in worker output"

    # the other worker took the job over and resumed it from the epoch the killed one had finished
    survivor = 1 - killed_worker
    assert re.search(rf"^worker {survivor}: retraining {victim}$", output, re.MULTILINE), output[-3000:]
    # workers log their epochs: the killed one the victim's first, the survivor its last (after resuming)
    assert re.search(rf"^worker {killed_worker}: ThresNet net0 step 2/\d+ PR \S+ epoch 1/2: train ", output, re.MULTILINE)
    assert re.search(rf"^worker {survivor}: ThresNet net0 step 2/\d+ PR \S+ epoch 2/2: train ", output, re.MULTILINE)
    run_folder = the_run_folder(results)
    curve = list(csv.DictReader(open(run_folder / "curves" / f"{victim}.csv")))
    assert float(curve[0]["seconds"]) == saved["curve"][0]["seconds"]
    trained = trained_models(output)
    assert sorted(set(trained)) == sorted(ALL_MODELS) and len(trained) == len(ALL_MODELS) + 1  # the victim twice

    rerun = run(config, results, tmp_path / "rerun.txt", "--workers", "2")
    assert not trained_models(rerun), "the rerun trained again what was finished"
    assert "0 of 6 job(s) to do" in rerun and "worker 0:" not in rerun  # no worker started for nothing
    assert rerun.count("mean ± std over nets") == 1  # the end-of-run table
    assert untimed(read_rows(run_folder)) == untimed(read_rows(reference))
    assert_same_tensors(reference, run_folder)
    assert not list(run_folder.glob("progress/*"))


# ------------------------------------------------------------------------ jobs, shards, arguments


def plan_of(config: Path, *overrides: str):
    return make_plan(load_configs(config, list(overrides))[0])


def test_jobs_dense_first_with_stable_ids(config):
    plan = plan_of(config)
    jobs = jobs_of(plan)
    assert [str(job) for job in jobs] == [f"{plan.run_id}/{name}" for name in (
        "dense_net0", "dense_net1", "cascade_FilterThresNet_net0_rep0", "cascade_FilterThresNet_net1_rep0",
        "cascade_ThresNet_net0_rep0", "cascade_ThresNet_net1_rep0")]
    for job in jobs[2:]:
        assert job.dense == Job.dense_net(plan.run_id, job.net) and job.dense in jobs[:2]
    assert jobs == jobs_of(plan_of(config, "directories.results=/elsewhere", "device=cpu"))  # same in every process
    assert [job.name for job in jobs_of(plan_of(config, "experiments.mode=train"))] == ["dense_net0", "dense_net1"]


def test_shards_split_the_jobs_of_all_configs_dense_first(config):
    jobs = jobs_of(plan_of(config)) + jobs_of(plan_of(config, "seed=1", "experiments.numNets=1"))
    for count in (1, 2, 3, 4):
        shares = [Shard(index, count).select(jobs) for index in range(count)]
        assert sorted(map(str, sum(shares, []))) == sorted(map(str, jobs))  # each job in exactly one share
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        for share in shares:
            kinds = [job.kind for job in share]
            assert kinds == sorted(kinds, key=lambda kind: kind != "dense")
    # the three dense nets (of both configs) go to three different shards
    assert [[job.kind for job in Shard(index, 3).select(jobs)][0] for index in range(3)] == ["dense"] * 3


def test_shard_arguments_and_slurm_array_variables():
    assert Shard.parse("1/3") == Shard(1, 3)
    for bad in ("3/3", "-1/2", "1", "a/2", "1/0"):
        with pytest.raises(ValueError, match="0 <= I < N"):
            Shard.parse(bad)
    assert Shard.from_slurm({}) is None
    assert Shard.from_slurm({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(0, 4)
    assert Shard.from_slurm({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "3",
                             "SLURM_ARRAY_TASK_MIN": "5"}) == Shard(1, 3)
    assert Shard.from_slurm({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "10",
                             "SLURM_ARRAY_TASK_STEP": "2"}) == Shard(2, 3)


def test_dry_run_lists_the_jobs_of_a_shard(config, capsys):
    assert main([str(config), "--dry-run", "--shard", "1/2"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.split("# jobs of shard 1/2 (3)\n")[1].splitlines()]
    assert listed == [str(job) for job in Shard(1, 2).select(jobs_of(plan_of(config)))]


@pytest.mark.parametrize("arguments, message", [
    (["--shard", "2/2"], "0 <= I < N"),
    (["--workers", "0"], "at least 1"),
    (["--gpus-per-job", "0"], "(0, 1]"),
    (["--gpus-per-job", "1.5"], "(0, 1]"),
])
def test_bad_arguments_are_refused(config, arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(config), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_gpus_per_job_needs_a_gpu_for_a_cuda_config(config, tmp_path, capsys):
    if torch.cuda.device_count():
        pytest.skip("a GPU is visible")
    results = tmp_path / "results"
    assert main([str(config), f"directories.results={results}", "device=cuda", "--gpus-per-job", "0.5",
                 "--workers", "2"]) == 2
    assert "no GPU is visible" in capsys.readouterr().err
    assert not results.exists()
    assert load_configs(config, ["device=cuda:1"])[0]["device"] == "cuda:1"


def test_worker_devices_pack_jobs_onto_gpus():
    assert worker_devices(3, None, 2) == [None] * 3
    assert worker_devices(3, 0.5, 0) == [None] * 3  # no GPU: the configs' own (cpu or auto) device
    assert worker_devices(6, 0.25, 2) == ["cuda:0", "cuda:1"] * 3
    assert worker_devices(10, 0.1, 1) == ["cuda:0"] * 10
    with pytest.raises(ValueError, match="needs 3 GPU"):
        worker_devices(9, 0.25, 2)
