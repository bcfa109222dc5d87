"""`--launcher slurm|local`: a command's jobs submitted as a job array through submitit (docs/RUNNING.md).

    python -m experiment.main CONFIG.yaml [key.path=value ...] --launcher slurm [--tasks N] [resources]

submits one job-array task per shard: task i of N runs `--shard i/N` of the same command (config,
overrides, `--workers`, `--threads`, `--gpus-per-job`) by calling `experiment.main.main` in the task's
Python process. The tasks share the results tree like any other processes (experiment/scheduler.py),
so whatever stops a task loses nothing finished: submitit requeues a task that is preempted or
reaches its time limit (`ShardTask.checkpoint`), and the requeued task resumes from the progress
files; a failed task's jobs are done by running the same command again.

The resources come from the config's `launcher` section (docs/CONFIG.md); each has a flag that
overrides it (`--partition gpu` is the override `launcher.partition=gpu`), so they are validated with
the rest of the config, and checked against the jobs and devices before anything is submitted.
`--launcher local` is submitit's local executor: the same path on this machine, for trying a launch
without SLURM. submitit is an optional dependency (`pip install -e ".[cluster]"`), imported only
when a launch is submitted.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from experiment.config import ConfigError
from experiment.config.settings import LauncherSettings, Settings
from experiment.jobs import Job, Shard
from experiment.plan import Plan
from experiment.results.tree import RunDir
from experiment.report import MODELS_FAILED, report, summarize_failures
from experiment.scheduler import JobRunner
from experiment.workers import gpus_needed

if TYPE_CHECKING:
    import submitit

CLUSTERS = {"slurm": "SLURM", "local": "submitit's local executor (this machine)"}
POLL_SECONDS = 2.0  # how often `--wait` looks at the tasks


class LaunchError(ValueError):
    """A launch that cannot be submitted as asked (found before anything is submitted), or a
    submission the cluster refused."""


class Flag(NamedTuple):
    """A command-line flag that overrides one key of the `launcher` section."""

    option: str
    key: str
    metavar: str
    help: str
    text: bool = False  # a string setting: passed quoted, so that `--partition 1` stays the name "1"

    @property
    def dest(self) -> str:
        return self.option.removeprefix("--").replace("-", "_")


FLAGS = (
    Flag("--tasks", "tasks", "N", "job-array tasks, each doing shard I/N of the jobs (default: one per dense net, "
                                  "at most one per unfinished job)"),
    Flag("--partition", "partition", "NAME", "SLURM partition (default: the cluster's)", text=True),
    Flag("--account", "account", "NAME", "SLURM account charged (default: yours)", text=True),
    Flag("--time-min", "timeMin", "M", "time limit of each task in minutes (default 240)"),
    Flag("--timeout-requeues", "timeoutRequeues", "N", "times a task that reaches its time limit is requeued "
                                                       "(default 3; a preempted task is always requeued)"),
    Flag("--gpus-per-task", "gpusPerTask", "G", "GPUs of each task (default: what the configs' device and "
                                                "--workers x --gpus-per-job need, 0 for cpu and auto)"),
    Flag("--cpus-per-task", "cpusPerTask", "C", "CPUs of each task (default: --workers x --threads)"),
    Flag("--mem-gb", "memGb", "GB", "memory of each task in GB (default: the cluster's)"),
    Flag("--array-parallelism", "arrayParallelism", "P", "SLURM runs at most P tasks at once (default: all)"),
    Flag("--job-name", "jobName", "NAME", "job name (default sparse-flows)", text=True),
    Flag("--logs", "logs", "FOLDER", "submitit's folder: task logs and pickles, %%j is the job id "
                                     "(default {directories.results}/submitit/%%j)", text=True),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--launcher` flags, in their own group of the help."""
    group = parser.add_argument_group(
        "submitting the jobs as a job array (--launcher)",
        "Each resource flag overrides a key of the config's `launcher` section, named in brackets.")
    group.add_argument("--launcher", choices=list(CLUSTERS),
                       help="submit one job-array task per shard through submitit and return: slurm, or local "
                            "(submitit's local executor: the same path on this machine, for trying a launch "
                            "without SLURM)")
    for flag in FLAGS:
        group.add_argument(flag.option, dest=flag.dest, metavar=flag.metavar, help=f"{flag.help} [launcher.{flag.key}]")
    group.add_argument("--wait", action="store_true",
                       help="wait for every task, say which failed, then print the end-of-run tables")


def check_arguments(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    """Exits through `parser.error` for launcher flags without `--launcher`, or `--shard` with it."""
    given = [flag.option for flag in FLAGS if getattr(arguments, flag.dest) is not None]
    given += ["--wait"] if arguments.wait else []
    if arguments.launcher is None and given:
        parser.error(f"{given[0]} needs --launcher")
    if arguments.launcher is not None and arguments.shard is not None:
        parser.error("--shard does not go with --launcher, which gives each task its shard")


def overrides(arguments: argparse.Namespace) -> list[str]:
    """The `launcher.KEY=VALUE` config overrides the resource flags given stand for."""
    return [f"launcher.{flag.key}={json.dumps(value) if flag.text else value}"
            for flag in FLAGS if (value := getattr(arguments, flag.dest)) is not None]


# ----------------------------------------------------------------------------------- what to submit


@dataclass(frozen=True)
class Launch:
    """One job array: `tasks` tasks (task i runs `command` with `--shard i/tasks`) and the resources of
    each."""

    cluster: str
    command: tuple[str, ...]  # the arguments of `python -m experiment.main` each task runs, less --shard
    tasks: int
    time_min: int
    timeout_requeues: int
    gpus: int
    cpus: int
    mem_gb: float | None
    partition: str | None
    account: str | None
    array_parallelism: int  # at most this many tasks at once
    job_name: str
    logs: Path  # submitit's folder; `%j` in it is the job id

    @property
    def shards(self) -> list[Shard]:
        return [Shard(index, self.tasks) for index in range(self.tasks)]

    def executor_parameters(self) -> dict[str, Any]:
        """`AutoExecutor.update_parameters` arguments; the `slurm_` ones are ignored by the local
        executor, None leaves the cluster's default."""
        return {"name": self.job_name, "timeout_min": self.time_min, "cpus_per_task": self.cpus,
                "gpus_per_node": self.gpus or None, "mem_gb": self.mem_gb, "slurm_partition": self.partition,
                "slurm_account": self.account, "slurm_array_parallelism": self.array_parallelism}

    def describe(self) -> str:
        """The task command and the resources, one item a line."""
        memory = f"{self.mem_gb:g} GB" if self.mem_gb is not None else "the cluster's default memory"
        slurm_only = "" if self.cluster == "slurm" else " (SLURM only: not used here)"
        return "\n".join([
            f"  each task runs: python -m experiment.main {shlex.join(self.command)} --shard I/{self.tasks}",
            f"  per task:       {self.cpus} CPU(s), {self.gpus} GPU(s), {memory}; time limit {self.time_min} min",
            f"  requeued:       when preempted; up to {self.timeout_requeues} time(s) on reaching the time limit",
            f"  SLURM:          partition {self.partition or '(default)'}, account {self.account or '(default)'}, "
            f"at most {self.array_parallelism} task(s) at once, job name {self.job_name}{slurm_only}",
            f"  logs:           {self.logs}",
        ])


def plan_launch(arguments: argparse.Namespace, settings: Sequence[Settings], jobs: Sequence[Job],
                unfinished: Sequence[Job]) -> Launch:
    """The job array for the `jobs` of the configs of `settings` (`unfinished` of them left to do), as their
    `launcher` section (with the flags' overrides) and `arguments` (--launcher, --workers, --threads,
    --gpus-per-job) ask. Raises ConfigError or LaunchError for a launch that cannot work."""
    section = common_section(settings, arguments.config)
    tasks = section.tasks
    if tasks is None:  # the jobs that can start at once, but no task without something left to do
        tasks = max(1, min(sum(job.kind == "dense" for job in jobs), len(unfinished)))
    if tasks > len(jobs):
        raise LaunchError(f"launcher.tasks: {tasks} tasks for {len(jobs)} job(s); at most one task per job")
    needed, why = gpus_required(settings, arguments.workers, arguments.gpus_per_job)
    gpus = needed if section.gpus_per_task is None else section.gpus_per_task
    if gpus < needed:
        raise LaunchError(f"launcher.gpusPerTask: {gpus} GPU(s) per task, but {why} needs {needed}")
    results = Path(settings[0].directories.results)
    command = [str(Path(arguments.config).absolute()), *arguments.overrides, *overrides(arguments),
               "--workers", str(arguments.workers), "--threads", str(arguments.threads)]
    if arguments.gpus_per_job is not None:
        command += ["--gpus-per-job", str(arguments.gpus_per_job)]
    if arguments.repair:
        command += ["--repair"]
    cpus = arguments.workers * arguments.threads if section.cpus_per_task is None else section.cpus_per_task
    return Launch(
        cluster=arguments.launcher, command=tuple(command), tasks=tasks, time_min=section.time_min,
        timeout_requeues=section.timeout_requeues, gpus=gpus, cpus=cpus, mem_gb=section.mem_gb,
        partition=section.partition, account=section.account,
        array_parallelism=min(section.array_parallelism or tasks, tasks), job_name=section.job_name,
        logs=Path(section.logs or results / "submitit" / "%j").absolute())


def common_section(settings: Sequence[Settings], config_file: str) -> LauncherSettings:
    """The `launcher` section, which all configs of a sweep must share: one command, one array."""
    for index, each in enumerate(settings[1:], start=2):
        if each.launcher != settings[0].launcher:
            raise ConfigError(config_file, "launcher", f"experiment {index} of {len(settings)} has another launcher "
                                                       "section than experiment 1; one command submits one job array")
    return settings[0].launcher


def gpus_required(settings: Sequence[Settings], workers: int, gpus_per_job: float | None) -> tuple[int, str]:
    """The fewest GPUs a task can run the configs with, and what needs them: a config's `cuda:N`
    needs N + 1 (`cuda` is cuda:0), `--gpus-per-job` as many as the workers fill; cpu and auto none."""
    needed, why = 0, ""
    for device in (each.device for each in settings if each.device.startswith("cuda")):
        if (torch.device(device).index or 0) + 1 > needed:
            needed, why = (torch.device(device).index or 0) + 1, f"device {device}"
    if gpus_per_job is not None and gpus_needed(workers, gpus_per_job) > needed:
        needed, why = gpus_needed(workers, gpus_per_job), f"--workers {workers} with --gpus-per-job {gpus_per_job}"
    return needed, why


# --------------------------------------------------------------------------------- the array tasks


class ShardTask:
    """What a job-array task runs: `entry(COMMAND + ["--shard", "I/N"])` in its process, `entry` being
    `experiment.main.main` (handed in, so that this module, which experiment.main imports, imports
    nothing of it; pickled by reference, it is imported in the task).

    submitit calls `checkpoint` when SLURM preempts the task or its time limit nears (the SIGUSR2
    submitit asks SLURM for); the submission it returns, the same shard, is requeued and resumes
    from the results tree's progress files."""

    def __init__(self, command: Sequence[str], entry: Callable[[list[str]], int]) -> None:
        self.command = list(command)
        self.entry = entry

    def __call__(self, shard: str) -> None:
        logging.getLogger("submitit").propagate = False  # it has handlers; main's root handler would repeat it
        code = self.entry([*self.command, "--shard", shard])
        if code not in (0, MODELS_FAILED):  # failed models are the run's results, reported by `wait_for`
            raise RuntimeError(f"shard {shard} failed (exit code {code}); the lines above say why")

    def checkpoint(self, shard: str) -> submitit.helpers.DelayedSubmission:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, shard)


def submit(launch: Launch, entry: Callable[[list[str]], int]) -> list[submitit.Job]:
    """Submits the array, each task running `entry` (see ShardTask); one submitit job per task, in shard order."""
    try:
        import submitit
    except ImportError:
        raise LaunchError('--launcher needs submitit, an optional dependency: pip install -e ".[cluster]"') from None
    try:
        executor = submitit.AutoExecutor(folder=launch.logs, cluster=launch.cluster,
                                         **{f"{launch.cluster}_max_num_timeout": launch.timeout_requeues})
    except RuntimeError as error:  # no SLURM here
        raise LaunchError(f"--launcher {launch.cluster}: {error} (--launcher local tries the same launch on this "
                          "machine)") from None
    executor.update_parameters(**launch.executor_parameters())
    try:
        return executor.map_array(ShardTask(launch.command, entry), [str(shard) for shard in launch.shards])
    except RuntimeError as error:  # sbatch refused the array
        raise LaunchError(f"--launcher {launch.cluster}: the submission failed: {error}") from None


def print_tasks(launch: Launch, jobs: Sequence[Job], unfinished: Sequence[Job]) -> None:
    """What `launch` would submit: each task's shard and jobs, and the resources."""
    print(f"# would submit {launch.tasks} task(s) to {CLUSTERS[launch.cluster]} (dry run: nothing submitted)")
    print(launch.describe())
    for index, shard in enumerate(launch.shards):
        share = shard.select(jobs)
        print(f"  task {index}: --shard {shard}, {len(share)} job(s)")
        for job in share:
            print(f"    {job}{'' if job in unfinished else '  (finished)'}")


def print_summary(launch: Launch, submitted: Sequence[submitit.Job], jobs: Sequence[Job],
                  unfinished: Sequence[Job]) -> None:
    """What was submitted, where its logs go and how to follow it, for a terminal or a log file."""
    ids = [job.job_id for job in submitted]
    array = ids[0].split("_")[0]  # SLURM's array tasks are ARRAY_TASK; the local executor's are process ids
    print(f"submitted {launch.tasks} task(s) to {CLUSTERS[launch.cluster]} for {len(unfinished)} unfinished of "
          f"{len(jobs)} job(s)" + (f": array job {array}" if launch.cluster == "slurm" else ""))
    for index, (shard, job) in enumerate(zip(launch.shards, submitted)):
        print(f"  task {index}: --shard {shard}, {len(shard.select(jobs))} job(s), job id {job.job_id}, "
              f"log {job.paths.stdout}")
    print(launch.describe())
    if launch.cluster == "slurm":
        print(f"follow:  squeue -j {array}   (sacct -j {array} once finished; scancel {array} cancels)")
    else:
        print(f"follow:  ps -f -p {','.join(ids)}   (kill -INT {' '.join(ids)} cancels)")
    print(f"         tail -f {shlex.quote(str(submitted[0].paths.stdout))} {shlex.quote(str(submitted[0].paths.stderr))}")
    print("A preempted task, or one that reaches its time limit, is requeued and resumes where it stopped. "
          "To resume or complete the run after a failure, or to resubmit, run the same command again: "
          "finished jobs are skipped.", flush=True)


def wait_for(launch: Launch, submitted: Sequence[submitit.Job], plans: Sequence[Plan]) -> int:
    """Waits for every task, reporting each as it ends; then the end-of-run table of every config.
    1 if a task failed, else MODELS_FAILED if a model failed."""
    on_interrupt = "; interrupting this stops the waiting, not the tasks" if launch.cluster == "slurm" else ""
    print(f"waiting for {len(submitted)} task(s){on_interrupt}", flush=True)
    pending, failed = dict(enumerate(submitted)), []
    while pending:
        for index, job in list(pending.items()):
            if not job.done():
                continue
            del pending[index]
            task = f"task {index} (--shard {launch.shards[index]}, job {job.job_id})"
            if job.exception() is None:
                print(f"{task} finished", flush=True)
                continue
            failed.append(index)
            print(f"{task} failed; from its error log {job.paths.stderr}:\n{failure(job.paths.stderr)}",
                  file=sys.stderr, flush=True)
        if pending:
            time.sleep(POLL_SECONDS)
    if failed:
        print(f"{len(failed)} of {len(submitted)} task(s) failed (task(s) {', '.join(map(str, failed))}); "
              "the run is incomplete: run the same command again to resume it", file=sys.stderr)
        return 1
    for plan in plans:
        report(plan, RunDir(plan.run_folder))
    return summarize_failures(plans)


def failure(error_log: Path) -> str:
    """Why a task failed, from its error log: the lines just before the (last) traceback, where
    experiment.main reports a config or device error, and the exception; indented."""
    lines = error_log.read_text(errors="replace").splitlines() if error_log.exists() else ["(no error log)"]
    traceback = "Traceback (most recent call last):"
    if traceback in lines:
        start = len(lines) - 1 - lines[::-1].index(traceback)
        lines = [*lines[max(0, start - 3):start], "...", lines[-1]]
    return "\n".join(f"    {line}" for line in lines[-12:])


def launch(arguments: argparse.Namespace, plans: Sequence[Plan], jobs: Sequence[Job], entry: Callable[[list[str]], int]) -> int:
    """`--launcher`: the array planned, then printed (`--dry-run`) or submitted and summarised (and
    with `--wait` waited for), each task calling `entry` (experiment.main.main) with its command line.
    Raises ConfigError or LaunchError before anything is submitted."""
    unfinished = JobRunner(plans, repair=arguments.repair).unfinished(jobs)
    planned = plan_launch(arguments, [plan.settings for plan in plans], jobs, unfinished)
    if arguments.dry_run:
        print_tasks(planned, jobs, unfinished)
        return 0
    if not unfinished:
        print(f"all {len(jobs)} job(s) are finished: nothing to submit")
        return 0
    submitted = submit(planned, entry)
    print_summary(planned, submitted, jobs, unfinished)
    return wait_for(planned, submitted, plans) if arguments.wait else 0
