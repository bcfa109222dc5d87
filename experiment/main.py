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
job whose process died is taken over (docs/RUNNING.md, experiment/scheduler.py). `--workers N` runs N worker
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
from experiment.config import ConfigError, Settings, add_overrides_argument, load_configs
from experiment.devices import resolve_device
from experiment.distributed import Ranks, join, leave, ranks_from_environment
from experiment.files import DamagedFileError, os_error_text
from experiment.jobs import Job, Shard, jobs_of
from experiment.models import parameter_count
from experiment.plan import Plan, make_plan, sweep_labels
from experiment.progress import is_finished
from experiment.projection import projection_lines
from experiment.results.tree import RunDir
from experiment.scheduler import JobRunner, Orders, run_plans
from experiment.workers import worker_devices

# Shown after the options by --help: a first command to copy, and where the config keys are explained.
EXAMPLES = """examples:
  python -m experiment.main param/quickstart.yaml                          # the demo: train, prune, report
  python -m experiment.main param/quickstart.yaml training.numEpochs=2 --dry-run   # see an override, write nothing
  python -m experiment.main param/toy/ffjord/gaussians/sweep_solver.yaml --workers 4   # a sweep on 4 processes

Every config key, its default and what it does: docs/CONFIG.md. `sparse-flows` is the same command."""


MAX_PROCESS_COUNT = 1024  # --threads and --workers: beyond any machine; a typo would exhaust memory starting them


def positive_integer(text: str) -> int:
    """An argparse type for counts (--threads, --workers): 0 or fewer, or more than MAX_PROCESS_COUNT,
    is a usage error, not a crash later (libgomp runs out of memory starting 100000 threads)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > MAX_PROCESS_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PROCESS_COUNT}, got {value}")
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
                        help="print what this command would do and cost (trainings, epochs, a projected wall time), "
                             "each experiment's plan and the jobs; write nothing")
    parser.add_argument("--show-config", action="store_true", help="with --dry-run: each resolved config too")
    parser.add_argument("--no-calibration", action="store_true",
                        help="with --dry-run: time epochs only from those recorded, without training a little to "
                             "calibrate (an instant check of many configs)")
    parser.add_argument("--threads", type=positive_integer, default=1,
                        help="CPU threads for torch per process (default 1: fastest for the small toy models; raise it for images)")
    parser.add_argument("--workers", type=positive_integer, default=1, metavar="N",
                        help="worker processes on this machine (default 1: everything in this process)")
    parser.add_argument("--gpus-per-job", type=gpu_share, metavar="F",
                        help="share of a GPU per job, e.g. 0.25: floor(1/F) workers per visible GPU, workers spread over all GPUs")
    parser.add_argument("--shard", type=shard, metavar="I/N",
                        help="do only share I of N (0 <= I < N) of the jobs: dense nets first, dealt round-robin")
    parser.add_argument("--repair", action="store_true",
                        help="also check every recorded model's checkpoint (present, loads, matches its checksum) and "
                             "train again the models whose checkpoint is missing or damaged")
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
    labels = sweep_labels(configs) if len(configs) > 1 else [""]
    try:
        check_model_sizes(plans, arguments.config, arguments.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if not arguments.dry_run:
        try:  # (a finished run is only read: a read-only copy of a results tree can be rerun)
            check_results_folders([plan for plan in plans if not is_finished(plan, RunDir(plan.run_folder), arguments.repair)])
        except (ValueError, DamagedFileError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    jobs = [job for plan in plans for job in jobs_of(plan)]
    print_results_folders(plans, Path(arguments.config))
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
        process.configure(arguments.threads)  # (its calibration trains a little)
        print_dry_run(plans, jobs, selected_shard, labels, arguments)
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
    orders = Orders(workers=arguments.workers, threads=arguments.threads, gpus_per_job=arguments.gpus_per_job,
                    repair=arguments.repair, shard=selected_shard)
    try:
        if ranks.parallel:
            return run_data_parallel(plans, jobs, orders, ranks)
        return run_plans(plans, jobs, orders)
    except DamagedFileError as error:  # metrics.csv or data_split.npz: the researcher decides (see the message)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a file-size limit, permissions: nothing finished is lost
        print(f"error: {os_error_text(error)}", file=sys.stderr)
        return 2


def launch_array(plans: list[Plan], jobs: list[Job], arguments: argparse.Namespace) -> int:
    """`--launcher`: the `jobs` of all plans submitted as a job array, one task per shard
    (experiment/launcher.py); with `--dry-run`, the configs, their jobs and the array shown instead."""
    if arguments.dry_run:
        print_dry_run(plans, jobs, None, sweep_labels([plan.config for plan in plans]) if len(plans) > 1 else [""], arguments)
    try:
        return launcher.launch(arguments, plans, jobs, entry=main)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
    except launcher.LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
    return 2


def print_dry_run(plans: list[Plan], jobs: list[Job], selected_shard: Shard | None, labels: list[str],
                  arguments: argparse.Namespace) -> None:
    """What the command would do, cost first: experiments, jobs finished and to do, the trainings and
    epochs left and a projected wall time (experiment/projection.py); then each experiment's plan (its
    resolved config too with --show-config) and the jobs."""
    unfinished = JobRunner(plans).unfinished(jobs)
    where = f" of shard {selected_shard}" if selected_shard else ""
    print("# dry run: nothing is written")
    print(f"experiments: {len(plans)}; jobs{where}: {len(jobs)}, {len(jobs) - len(unfinished)} finished, {len(unfinished)} to do")
    if unfinished:
        busy = {job.run_id for job in unfinished}
        for line in projection_lines([plan for plan in plans if plan.run_id in busy], arguments.workers,
                                     calibrate=not arguments.no_calibration):
            print(line)
    else:
        print("nothing left to do: every job is finished (run the command without --dry-run to print the tables)")
    print()
    for index, (plan, swept) in enumerate(zip(plans, labels)):
        print(f"# experiment {index + 1} of {len(plans)}{f': {swept}' if swept else ''}")
        if arguments.show_config:
            print(yaml.safe_dump(plan.config, sort_keys=False).rstrip())
            print("# plan")
        print(plan.describe())
        print()
    print(f"# jobs{where} ({len(jobs)})")
    for job in jobs:
        after = "" if job.dense is None else f"  (after {job.dense})"
        print(f"{job}{after}{'' if job in unfinished else '  (finished)'}")


def project_folder(config_file: Path) -> Path | None:
    """The project a config file belongs to: the folder holding the `param/` folder it lies in."""
    parts = config_file.resolve().parts
    return Path(*parts[:len(parts) - 1 - parts[::-1].index("param")]) if "param" in parts[:-1] else None


def print_results_folders(plans: list[Plan], config_file: Path) -> None:
    """Where the command reads and writes, as absolute folders (a relative `directories.results` is
    relative to the working directory); and a note for each run that this command would start afresh
    while the config's own project already holds it under its results folder (the command was given
    from another folder)."""
    roots = dict.fromkeys(Path(plan.settings.directories.results).absolute() for plan in plans)
    print(f"results folder: {', '.join(map(str, roots))}", flush=True)
    project = project_folder(config_file)
    if project is None or project == Path.cwd().resolve():
        return
    for plan in plans:
        if Path(plan.settings.directories.results).is_absolute():
            continue
        there = project / plan.run_folder
        if not (plan.run_folder / "metrics.csv").exists() and (there / "metrics.csv").exists():
            print(f"note: run {plan.run_id} already exists in {there}, the results folder of the config's project; "
                  f"this command works in {plan.run_folder.absolute()} instead (relative results folders are relative "
                  f"to the working directory: run it from {project} to go on with that run)", flush=True)


TRAINING_BYTES_PER_PARAMETER = 16  # float32 weight, gradient and the optimizer's two moments (AdamW)


def check_model_sizes(plans: list[Plan], config_file: str, overrides: list[str]) -> None:
    """A model above `limits.maxParameters` is refused before anything is written or allocated
    (counted without allocating it, `parameter_count`); the error gives its training memory and
    names the command line when an override set the model or the bound, else the config file."""
    overridden = {override.split("=", 1)[0].strip() for override in overrides}
    source = "command line" if overridden & {"network.name", "limits.maxParameters"} else config_file
    for plan in plans:
        network, limit = plan.settings.network, plan.settings.limits.max_parameters
        count = parameter_count(network.name, network.output_size)
        if count > limit:
            memory = count * TRAINING_BYTES_PER_PARAMETER
            raise ConfigError(source, "network.name", f"{network.name} has {count:,} parameters (about "
                                                      f"{memory / 2**30:,.1f} GiB to train), above limits.maxParameters "
                                                      f"= {limit:,}; raise that bound to train it")


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


def check_results_folders(plans: list[Plan]) -> None:
    """Raises ValueError naming a folder or file of the runs of `plans` this process could not create
    or write in, before anything is written: otherwise the first write, deep in a run, fails with a
    traceback. The results folder (`directories.results`) and, where a run folder exists (of another
    user, say, in a shared tree), the run folder, its subfolders, its lock folder and each lock file
    in it (a lock file is opened for writing). Looks only, creates nothing."""
    for results in dict.fromkeys(os.path.abspath(plan.settings.directories.results) for plan in plans):
        existing = Path(results)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"results folder {results}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            action = "write in" if str(existing) == results else f"create it in {existing}"
            raise ValueError(f"results folder {results}: no permission to {action}")
    for plan in plans:
        run = RunDir(plan.run_folder)
        folders = [path for path in (run.path, *(run.path / name for name in ("checkpoints", "curves", "progress")),
                                     run.locks, run.locks / "jobs") if path.exists()]
        for folder in folders:
            if not folder.is_dir():
                raise ValueError(f"{folder} is a file, not a folder; move it aside")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ValueError(f"{folder}: no permission to write in it (owner uid {folder.stat().st_uid}); "
                                 "ask its owner to make it group-writable, or use another directories.results")
        for lock in (path for folder in folders if folder.name in (run.locks.name, "jobs") for path in folder.glob("*.lock")):
            if lock.is_dir() or not os.access(lock, os.R_OK | os.W_OK):
                what = "is a folder" if lock.is_dir() else f"cannot be opened for writing (owner uid {lock.stat().st_uid})"
                raise ValueError(f"lock file {lock} {what}; remove it when no process of this run is running "
                                 "(the lock is held by the operating system, not by the file)")


def run_data_parallel(plans: list[Plan], jobs: list[Job], orders: Orders, ranks: Ranks) -> int:
    """This rank's part of `jobs` under torchrun: rank 0 as `run_plans` does, the others following it
    (each on its own GPU, cuda:LOCAL_RANK, when the configs ask for a GPU)."""
    device = join(ranks, resolve_device(plans[0].settings.device))
    try:
        plans = [make_plan({**plan.config, "device": str(device)}) for plan in plans]
        if ranks.leader:
            return run_plans(plans, jobs, orders, ranks)
        JobRunner(plans, progress_bars=False, ranks=ranks, repair=orders.repair).run(jobs)
        return 0
    finally:
        leave(ranks)


if __name__ == "__main__":
    sys.exit(main())
