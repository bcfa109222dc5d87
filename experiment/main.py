"""`python -m experiment.main CONFIG.yaml [key.path=value ...] [--dry-run] [--workers N] [--shard I/N]
[--launcher slurm|local ...]`: run every experiment a config describes (one per `customizations`
entry), resuming whatever was already computed. Options and overrides may come in any order. A bad
config, or a results folder this process cannot write, is one line on stderr and exit code 2, before
anything is written.

Exit codes: 0 all done; 1 a worker or job-array task died (rerun to resume); 2 a config, device or
argument error (nothing was run); 3 all jobs done, but some models failed (they diverged or a solve
could not finish): each is listed at the end and has a failed row in its run's metrics.csv.

Any number of these commands may run at once on one results tree, on one machine or on several
sharing a file system: each job (a dense net, a prune chain) is done by one process at a time, and a
job whose process died is taken over (SPEC §11, experiment/runner.py). `--workers N` runs N worker
processes here; `--shard I/N` does only the I-th of N fixed shares of the jobs (set by a SLURM job
array's SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT when not given); `--launcher slurm` submits such
a job array, one task per shard, through submitit (experiment/launcher.py). Started by `torchrun
--nproc_per_node K`, the K processes train each model together, data-parallel
(experiment/distributed.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
import yaml

from experiment import launcher, process
from experiment.config import ConfigError, Settings, add_overrides_argument, load_configs, settings_of
from experiment.devices import resolve_device
from experiment.files import DamagedFileError
from experiment.distributed import SINGLE, Ranks, join, leave, ranks_from_environment
from experiment.jobs import Job, Shard, jobs_of
from experiment.plan import Plan, make_plan
from experiment.results.tree import RunDir
from experiment.runner import JobRunner, is_finished, report, run_experiment, summarize_failures
from experiment.workers import run_workers, worker_devices

# Shown after the options by --help: a first command to copy, and where the config keys are explained.
EXAMPLES = """examples:
  python -m experiment.main param/quickstart.yaml                          # the demo: train, prune, report
  python -m experiment.main param/quickstart.yaml training.numEpochs=2 --dry-run   # see an override, write nothing
  python -m experiment.main param/toy/ffjord/gaussians/sweep_solver.yaml --workers 4   # a sweep on 4 processes

Every config key, its default and what it does: docs/CONFIG.md. `sparse-flows` is the same command."""


def positive_integer(text: str) -> int:
    """An argparse type for counts (--threads, --workers): 0 or fewer is a usage error, not a crash later."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def gpu_share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1] (a share of one GPU), got {value}")
    return value


def shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiment.main", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file, e.g. param/quickstart.yaml")
    add_overrides_argument(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print each resolved config, its plan and the jobs this command would do; write nothing")
    parser.add_argument("--threads", type=positive_integer, default=1,
                        help="CPU threads for torch per process (default 1: fastest for the small toy models; raise it for images)")
    parser.add_argument("--workers", type=positive_integer, default=1, metavar="N",
                        help="worker processes on this machine (default 1: everything in this process)")
    parser.add_argument("--gpus-per-job", type=gpu_share, metavar="F",
                        help="share of a GPU per job, e.g. 0.25: floor(1/F) workers per visible GPU, workers spread over all GPUs")
    parser.add_argument("--shard", type=shard, metavar="I/N",
                        help="do only share I of N (0 <= I < N) of the jobs: dense nets first, dealt round-robin")
    launcher.add_arguments(parser)
    arguments = parser.parse_intermixed_args(argv)  # options may come after the overrides too
    launcher.check_arguments(parser, arguments)
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        configs = load_configs(arguments.config, [*arguments.overrides, *launcher.overrides(arguments)])
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    plans = [make_plan(config) for config in configs]
    if not arguments.dry_run:
        try:  # (a finished run is only read: a read-only copy of a results tree can be rerun)
            check_results_folders([plan.settings for plan in plans if not is_finished(plan, RunDir(plan.run_folder))])
        except (ValueError, DamagedFileError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    jobs = [job for plan in plans for job in jobs_of(plan)]
    if arguments.launcher is not None:
        return launch_array(plans, jobs, arguments)
    try:
        selected_shard = arguments.shard or Shard.from_slurm()
    except ValueError as error:
        print(f"error: SLURM job array: {error}", file=sys.stderr)
        return 2
    if selected_shard is not None:
        jobs = selected_shard.select(jobs)
    if arguments.dry_run:
        print_dry_run(plans, jobs, selected_shard)
        return 0
    ranks = ranks_from_environment()
    try:
        check_devices([plan.settings for plan in plans], arguments.workers, arguments.gpus_per_job, ranks)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    process.configure(arguments.threads)
    logging.basicConfig(level=logging.INFO if ranks.leader else logging.WARNING, format="%(message)s", stream=sys.stdout)
    try:
        if ranks.parallel:
            return run_data_parallel(configs, jobs, selected_shard, arguments, ranks)
        if arguments.workers == 1 and selected_shard is None:
            for index, config in enumerate(configs):
                print(f"experiment {index + 1} of {len(configs)}")
                run_experiment(config)
            return summarize_failures(plans)
        return run_jobs(plans, jobs, selected_shard, arguments)
    except DamagedFileError as error:  # metrics.csv or data_split.npz: the researcher decides (see the message)
        print(f"error: {error}", file=sys.stderr)
        return 2


def launch_array(plans: list[Plan], jobs: list[Job], arguments: argparse.Namespace) -> int:
    """`--launcher`: the `jobs` of all plans submitted as a job array, one task per shard
    (experiment/launcher.py); with `--dry-run`, the configs, their jobs and the array shown instead."""
    if arguments.dry_run:
        print_dry_run(plans, jobs, None)
    try:
        return launcher.launch(arguments, plans, jobs, entry=main)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
    except launcher.LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
    return 2


def print_dry_run(plans: list[Plan], jobs: list[Job], selected_shard: Shard | None) -> None:
    for index, plan in enumerate(plans):
        print(f"# experiment {index + 1} of {len(plans)}")
        print(yaml.safe_dump(plan.config, sort_keys=False).rstrip())
        print("# plan")
        print(plan.describe())
        print()
    print(f"# jobs{f' of shard {selected_shard}' if selected_shard else ''} ({len(jobs)})")
    for job in jobs:
        print(job if job.dense is None else f"{job}  (after {job.dense})")


def check_devices(settings: list[Settings], workers: int, gpus_per_job: float | None, ranks: Ranks) -> None:
    """Raises ConfigError for a device that is not there, ValueError for more workers than the GPUs
    hold or for workers under torchrun: before anything is written."""
    if ranks.parallel:
        if workers > 1 or gpus_per_job is not None:
            raise ValueError("under torchrun every rank trains the same model: --workers and --gpus-per-job do not apply")
        kinds = {resolve_device(each.device).type for each in settings}
        if len(kinds) > 1:
            raise ConfigError("<config>", "device", f"under torchrun all experiments need one kind of device, got {sorted(kinds)}")
    if gpus_per_job is not None and torch.cuda.device_count() == 0 and any(
            each.device.startswith("cuda") for each in settings):
        raise ConfigError("<config>", "device", "--gpus-per-job with a cuda device, but no GPU is visible")
    for each in settings:
        resolve_device(each.device)
    worker_devices(workers, gpus_per_job, torch.cuda.device_count())


def check_results_folders(settings: list[Settings]) -> None:
    """Raises ValueError naming a results folder (`directories.results`) this process could not
    create or write in, before anything is written: otherwise the first write, deep in a run, fails
    with a traceback. Looks only, creates nothing."""
    for results in dict.fromkeys(os.path.abspath(each.directories.results) for each in settings):
        existing = Path(results)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"results folder {results}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            action = "write in" if str(existing) == results else f"create it in {existing}"
            raise ValueError(f"results folder {results}: no permission to {action}")


def run_data_parallel(configs: list[dict], jobs: list[Job], selected_shard: Shard | None,
                      arguments: argparse.Namespace, ranks: Ranks) -> int:
    """This rank's part of `jobs` under torchrun: rank 0 as `run_jobs` does, the others following it
    (each on its own GPU, cuda:LOCAL_RANK, when the configs ask for a GPU)."""
    device = join(ranks, resolve_device(settings_of(configs[0]).device))
    try:
        configs = [{**config, "device": str(device)} for config in configs]
        if ranks.leader:
            return run_jobs([make_plan(config) for config in configs], jobs, selected_shard, arguments, ranks)
        JobRunner(configs, progress_bars=False, ranks=ranks).run(jobs)
        return 0
    finally:
        leave(ranks)


def run_jobs(plans: list[Plan], jobs: list[Job], selected_shard: Shard | None, arguments: argparse.Namespace,
             ranks: Ranks = SINGLE) -> int:
    """`jobs` (a shard's, or all of several workers') done here or in worker processes, then the
    end-of-run table of every config; 1 if a worker failed, else MODELS_FAILED if a model failed. A run
    none of whose `jobs` is left is only read (no request recorded, the plot only made if missing), as
    in `run_experiment`."""
    configs = [plan.config for plan in plans]
    runner = JobRunner(configs, ranks=ranks)
    unfinished = runner.unfinished(jobs)
    busy = {job.run_id for job in unfinished}
    runs = [RunDir.record_request(plan.config) if plan.run_id in busy else RunDir(plan.run_folder) for plan in plans]
    workers = min(arguments.workers, len(unfinished))  # more would find nothing to do
    where = f" of shard {selected_shard}" if selected_shard else ""
    how = f"{ranks.world_size} data-parallel ranks" if ranks.parallel else f"{workers} worker(s)"
    print(f"{len(unfinished)} of {len(jobs)} job(s){where} to do, from {len(configs)} experiment(s), on {how}", flush=True)
    if arguments.workers == 1:
        runner.run(unfinished)
    elif workers:
        failed = run_workers(configs, unfinished, workers, arguments.threads, arguments.gpus_per_job)
        if failed:
            print(f"{len(failed)} worker(s) failed; the run is incomplete: run the same command again to resume it",
                  file=sys.stderr)
            return 1
    for plan, run in zip(plans, runs):
        report(plan, run, replot=plan.run_id in busy)
    return summarize_failures(plans)


if __name__ == "__main__":
    sys.exit(main())
