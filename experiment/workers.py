"""`--workers N`: the jobs of one command done by N processes on this machine (SPEC §11).

Each worker is a `JobRunner` (experiment/runner.py) over the same list of jobs: the job locks give
every job to one worker at a time, a chain waits for its dense net, and a job left by a worker that
died is taken over by another. Workers are started with the "spawn" method (a fresh interpreter
each: nothing of the parent's CUDA or OpenMP state is inherited), hide their progress bars, and prefix
their log lines with `worker {w}:`.

With `--gpus-per-job F` (0 < F ≤ 1), floor(1/F) workers share each visible GPU and the workers are
dealt out round-robin over the GPUs: worker w runs on cuda:(w mod number of GPUs).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Sequence
from multiprocessing.connection import wait

import torch

from experiment import process
from experiment.config import settings_of
from experiment.files import DamagedFileError, os_error_text
from experiment.jobs import Job
from experiment.runner import JobRunner

log = logging.getLogger("experiment")

STOPPED_BY_FILE_ERROR = 2  # a worker's exit code after a damaged results file or a file-system error (it says which)


def gpus_needed(workers: int, gpus_per_job: float) -> int:
    """The fewest GPUs that hold `workers` workers taking `gpus_per_job` of a GPU each."""
    per_gpu = math.floor(1 / gpus_per_job + 1e-9)  # 1 / 0.1 is 9.999...: still 10 per GPU
    return math.ceil(workers / per_gpu)


def worker_devices(workers: int, gpus_per_job: float | None, gpu_count: int) -> list[str | None]:
    """The device of each worker; None leaves each config's own `device`. Raises ValueError when the
    GPUs cannot hold that many workers."""
    if gpus_per_job is None or gpu_count == 0:
        return [None] * workers
    needed = gpus_needed(workers, gpus_per_job)
    if needed > gpu_count:
        raise ValueError(f"--workers {workers} with --gpus-per-job {gpus_per_job} needs {needed} GPU(s); "
                         f"{gpu_count} visible")
    return [f"cuda:{worker % gpu_count}" for worker in range(workers)]


def run_workers(configs: Sequence[dict], jobs: Sequence[Job], workers: int, threads: int,
                gpus_per_job: float | None, repair: bool = False) -> dict[int, int]:
    """Does `jobs` (of `configs`) in `workers` worker processes with `threads` torch threads each and
    waits for all of them; returns {worker: exit code} of the workers that failed (negative: killed by
    that signal; STOPPED_BY_FILE_ERROR: stopped on a file it named). A failure is reported on stderr
    when it happens; the other workers go on (and take over the failed worker's job)."""
    devices = worker_devices(workers, gpus_per_job, torch.cuda.device_count())
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=work, args=(worker, list(configs), list(jobs), threads, device, repair),
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


def work(worker: int, configs: list[dict], jobs: list[Job], threads: int, device: str | None, repair: bool = False) -> None:
    """The body of worker process `worker` (`repair`: see `JobRunner`)."""
    process.configure(threads)
    logging.basicConfig(level=logging.INFO, format=f"worker {worker}: %(message)s", stream=sys.stdout, force=True)
    if device is not None:
        configs = [config if settings_of(config).device == "cpu" else {**config, "device": device} for config in configs]
    log.info("pid %d, device %s, %d thread(s)", os.getpid(), device or "as configured", threads)
    try:
        JobRunner(configs, progress_bars=False, repair=repair).run(jobs)
    except (DamagedFileError, OSError) as error:  # one line naming the file, not a traceback
        text = os_error_text(error) if isinstance(error, OSError) else str(error)
        print(f"worker {worker}: error: {text}", file=sys.stderr, flush=True)
        sys.exit(STOPPED_BY_FILE_ERROR)
