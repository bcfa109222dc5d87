"""Which jobs run where and when (experiment/jobs.py: a dense net, or one prune chain): the one
orchestration path of a command, whatever runs it — one process, `--workers`, a `--shard`, a SLURM
job-array task or torchrun ranks. `JobRunner` does a list of jobs in this process while any number
of other processes, here or on other machines, work on the same results tree: a job is done under
its lock by one process at a time, a job another process holds is left for later, and a job whose
owner died (the operating system then frees its lock) is taken over and resumes from its progress
files. The training itself is experiment/chain.py; where a run stands, experiment/progress.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait

import torch
from filelock import Timeout

from experiment.chain import Experiment, prepare, run_job
from experiment.devices import resolve_device
from experiment.distributed import SINGLE, Ranks
from experiment.jobs import Job, Shard, jobs_of
from experiment.plan import Plan, make_plan, sweep_labels
from experiment.progress import finished_jobs
from experiment.report import (dense_point, format_sweep_table, main_metric, pruned_points, quantity_of, report,
                               summarize_failures)
from experiment.results.tree import RunDir, is_failed
from experiment.files import DamagedFileError, os_error_text
from experiment.workers import worker_devices
from experiment import process

log = logging.getLogger("experiment")

POLL_SECONDS = 0.5  # how often a process looks again at jobs other processes hold



@dataclass(frozen=True)
class Orders:
    """How a command runs its jobs: in `workers` processes of `threads` torch threads each (one:
    in this process), `gpus_per_job` of a GPU each (workers spread over the GPUs), with `--repair`
    (`repair`: checkpoints of recorded models are checked too, see `progress.finished_jobs`); `shard`
    only names the share of the jobs in the output."""

    workers: int = 1
    threads: int = 1
    gpus_per_job: float | None = None
    repair: bool = False
    shard: Shard | None = None


def run_plans(plans: Sequence[Plan], jobs: Sequence[Job], orders: Orders = Orders(), ranks: Ranks = SINGLE) -> int:
    """`jobs` of `plans` done here or in worker processes, then the end-of-run table of every plan
    (and, for a sweep, one across them): the one orchestration path of every command. Returns the
    exit code: 0 all done; 1 a worker died (run again to resume); 2 a worker stopped on a damaged file
    or a file-system error it named; MODELS_FAILED all done, but some models failed. A run none of
    whose jobs is left is only read: no request recorded, the plot only made if missing."""
    headers = experiment_headers(plans)
    runner = JobRunner(plans, ranks=ranks, repair=orders.repair, headers=headers)
    unfinished = runner.unfinished(jobs)
    busy = {job.run_id for job in unfinished}
    runs = [RunDir.record_request(plan.config) if plan.run_id in busy else RunDir(plan.run_folder) for plan in plans]
    workers = min(orders.workers, len(unfinished))  # more would find nothing to do
    where = f" of shard {orders.shard}" if orders.shard else ""
    how = f"{ranks.world_size} data-parallel ranks" if ranks.parallel else f"{max(workers, 1)} worker(s)"
    print(f"{len(unfinished)} of {len(jobs)} job(s){where} to do, from {len(plans)} experiment(s), on {how}", flush=True)
    if orders.workers == 1 or ranks.parallel:
        runner.run(unfinished)
    elif workers:
        failed = run_workers(plans, unfinished, workers, orders.threads, orders.gpus_per_job, orders.repair, headers)
        if any(code == STOPPED_BY_FILE_ERROR for code in failed.values()):
            print("the run is incomplete: a worker stopped on the file error above; fix it and run the same command "
                  "again to resume", file=sys.stderr)
            return 2
        if failed:
            print(f"{len(failed)} worker(s) failed; the run is incomplete: run the same command again to resume it",
                  file=sys.stderr)
            return 1
    labels = sweep_labels([plan.config for plan in plans]) if len(plans) > 1 else [""]
    for plan, run, swept in zip(plans, runs, labels):
        if plan.run_id not in busy:
            intact = " (every checkpoint is there and intact)" if orders.repair else ""
            print(f"run {plan.run_id}: {plan.run_folder} has nothing left to do{intact}", flush=True)
        report(plan, run, replot=plan.run_id in busy, swept=swept)
    print_sweep_summary(plans, labels)
    return summarize_failures(plans)


def run_experiment(config: dict, repair: bool = False) -> RunDir:
    """Runs (or resumes) everything `config` asks for in this process, prints and plots its summary
    (`run_plans`), and returns its run folder. Other processes may work on the same run meanwhile (see
    JobRunner). With `repair`, every recorded model's checkpoint is checked too, and the models whose
    checkpoint is missing or damaged are computed again."""
    plan = make_plan(config)
    resolve_device(plan.settings.device)  # a missing GPU is a config error, found before anything is written
    run_plans([plan], jobs_of(plan), Orders(repair=repair))
    return RunDir(plan.run_folder)


def experiment_headers(plans: Sequence[Plan]) -> dict[str, str]:
    """Run id → 'experiment i of N[: swept values]', logged when a process starts the run's first job."""
    labels = sweep_labels([plan.config for plan in plans]) if len(plans) > 1 else [""]
    return {plan.run_id: f"experiment {index + 1} of {len(plans)}{f': {swept}' if swept else ''}"
            for index, (plan, swept) in enumerate(zip(plans, labels))}


def print_sweep_summary(plans: Sequence[Plan], labels: Sequence[str]) -> None:
    """After the experiments of a sweep (more than one): one table across them (`format_sweep_table`)
    per main metric."""
    if len(plans) < 2:
        return
    by_metric: dict[str, list] = {}
    for plan, swept in zip(plans, labels):
        metric = main_metric(plan.settings.training)
        _, transform = quantity_of(metric)
        rows = [row for row in plan.planned_rows(RunDir(plan.run_folder).read_metrics()) if not is_failed(row)]
        by_metric.setdefault(metric, []).append((swept, dense_point(rows, metric, transform), pruned_points(rows, metric, transform)))
    for metric, experiments in by_metric.items():
        print("\n" + format_sweep_table(experiments, quantity_of(metric)[0]), flush=True)


@contextmanager
def logging_into(run: RunDir) -> Iterator[None]:
    """Meanwhile, the experiment log also goes to the run's log.txt (one handler, however nested), each
    line with the time, host and process id of its writer."""
    path = os.path.abspath(run.log_file)
    if any(isinstance(handler, logging.FileHandler) and handler.baseFilename == path for handler in log.handlers):
        yield
        return
    run.path.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {socket.gethostname()}:%(process)d %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


class JobRunner:
    """Does jobs of `plans` in this process; other processes may do jobs of the same runs.

    `run(jobs)` goes over the jobs in order, again and again until every one is finished: a finished
    job (all its metrics rows present) is dropped; any other job is run under its lock, taken without
    waiting; a job whose lock another process holds is left for a later round, as is a chain whose
    dense net another process is training (if nobody holds the dense net, this process trains it
    first). Between rounds it sleeps POLL_SECONDS. A process that dies mid-job loses its lock with it,
    so the job is taken over in a later round and resumes from its progress file. Experiments
    (data, split, device) are prepared the first time one of their jobs runs, and kept.

    With several `ranks` (data-parallel training, experiment/distributed.py), rank 0 does the above
    and sends each job it takes to the other ranks, which do it with it (`follow`); between rounds it
    sends WAIT, and DONE at the end.
    """

    WAIT, DONE = "wait", "done"

    def __init__(self, plans: Sequence[Plan], *, progress_bars: bool = True, ranks: Ranks = SINGLE, repair: bool = False,
                 headers: dict[str, str] | None = None):
        self.plans = {plan.run_id: plan for plan in plans}
        self.headers = headers or {}  # run id → what to log when this process prepares the run
        self.progress_bars = progress_bars
        self.ranks = ranks
        self.repair = repair  # see `finished_jobs`
        self.experiments: dict[str, Experiment] = {}

    def run(self, jobs: Sequence[Job]) -> None:
        if not self.ranks.leader:
            self.follow()
            return
        pending, reported = list(jobs), []
        while pending:
            left = [job for job in self.unfinished(pending) if not self.try_job(job)]
            if len(left) == len(pending) and left != reported:  # a round without progress: say what holds us up
                log.info("waiting for %d job(s) that other processes hold: %s", len(left), ", ".join(map(str, left)))
                reported = left
            pending = left
            if pending:
                self.ranks.from_leader(self.WAIT)
                time.sleep(POLL_SECONDS)
        self.ranks.from_leader(self.DONE)

    def follow(self) -> None:
        """The other ranks' side of `run`: do each job rank 0 sends, until it sends DONE."""
        while (message := self.ranks.from_leader(None)) != self.DONE:
            if isinstance(message, Job):
                run_job(self.experiment(message.run_id), message)

    def unfinished(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs of `jobs` some of whose metrics rows are missing (one read of each run's metrics)."""
        finished = {run_id: finished_jobs(self.plans[run_id], self.run_dir(run_id), verify=self.repair)
                    for run_id in {job.run_id for job in jobs}}
        return [job for job in jobs if job.name not in finished[job.run_id]]

    def try_job(self, job: Job) -> bool:
        """Runs `job` unless another process holds it (or holds the dense net it needs and that is not
        trained yet); True when the job is finished on return."""
        run = self.run_dir(job.run_id)
        dense = job.dense
        if dense is not None and not run.checkpoint(dense.name).exists() and not self.try_job(dense):
            return False
        try:
            held = run.job_lock(job.name).acquire(blocking=False)
        except Timeout:
            return False
        with held:
            if self.unfinished([job]):  # looked at again now that no other process can be at it
                experiment = self.experiment(job.run_id)
                with logging_into(run):
                    run.remove_model_temporaries(job.owns)
                    log.info("started %s (solver backend %s)%s", job, experiment.backend,
                             f" on {self.ranks.world_size} ranks" if self.ranks.parallel else "")
                    started = time.perf_counter()
                    self.ranks.from_leader(job)
                    run_job(experiment, job)
                    log.info("finished %s in %.1f s", job, time.perf_counter() - started)
        return True

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.plans[run_id].run_folder)

    def experiment(self, run_id: str) -> Experiment:
        if run_id not in self.experiments:
            if run_id in self.headers:
                log.info("%s", self.headers[run_id])
            self.experiments[run_id] = prepare(self.plans[run_id], self.progress_bars, self.ranks, self.repair)
        return self.experiments[run_id]


STOPPED_BY_FILE_ERROR = 2  # a worker's exit code after a damaged results file or a file-system error (it says which)


def run_workers(plans: Sequence[Plan], jobs: Sequence[Job], workers: int, threads: int,
                gpus_per_job: float | None, repair: bool = False, headers: dict[str, str] | None = None) -> dict[int, int]:
    """Does `jobs` (of `plans`) in `workers` worker processes with `threads` torch threads each and
    waits for all of them (`repair`, `headers`: see JobRunner). Each worker is a JobRunner over the
    same list of jobs: the job locks give every job to one worker at a time, a chain waits for its
    dense net, and a job left by a worker that died is taken over by another. Workers are started
    with the "spawn" method (a fresh interpreter each: nothing of the parent's CUDA or OpenMP state is
    inherited), hide their progress bars, and prefix their log lines with `worker {w}:`; returns {worker: exit code} of the workers that failed (negative: killed by
    that signal; STOPPED_BY_FILE_ERROR: stopped on a file it named). A failure is reported on stderr
    when it happens; the other workers go on (and take over the failed worker's job)."""
    devices = worker_devices(workers, gpus_per_job, torch.cuda.device_count())
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=work, args=(worker, list(plans), list(jobs), threads, device, repair, headers or {}),
                                 name=f"worker {worker}")
                 for worker, device in enumerate(devices)]
    failed: dict[int, int] = {}
    try:
        for child in processes:
            child.start()
        running = {child.sentinel: worker for worker, child in enumerate(processes)}
        while running:
            for sentinel in wait(list(running)):
                worker = running.pop(sentinel)
                processes[worker].join()
                code = processes[worker].exitcode
                if code != 0:
                    failed[worker] = code
                    how = (f"was killed by signal {-code}" if code < 0 else "stopped on the file error above"
                           if code == STOPPED_BY_FILE_ERROR else f"failed (exit code {code})")
                    print(f"worker {worker} {how}; the other workers go on", file=sys.stderr, flush=True)
    finally:
        for child in processes:  # only if the parent itself is interrupted
            if child.is_alive():
                child.terminate()
                child.join()
    return failed


def work(worker: int, plans: list[Plan], jobs: list[Job], threads: int, device: str | None, repair: bool,
         headers: dict[str, str]) -> None:
    """The body of worker process `worker`: its plans on `device` (None: as configured)."""
    process.configure(threads)
    logging.basicConfig(level=logging.INFO, format=f"worker {worker}: %(message)s", stream=sys.stdout, force=True)
    if device is not None:
        plans = [plan if plan.settings.device == "cpu" else make_plan({**plan.config, "device": device}) for plan in plans]
    log.info("pid %d, device %s, %d thread(s)", os.getpid(), device or "as configured", threads)
    try:
        JobRunner(plans, progress_bars=False, repair=repair, headers=headers).run(jobs)
    except (DamagedFileError, OSError) as error:  # one line naming the file, not a traceback
        text = os_error_text(error) if isinstance(error, OSError) else str(error)
        print(f"worker {worker}: error: {text}", file=sys.stderr, flush=True)
        sys.exit(STOPPED_BY_FILE_ERROR)
