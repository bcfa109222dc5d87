"""Where `--workers N` puts its workers (docs/RUNNING.md): with `--gpus-per-job F` (0 < F ≤ 1),
floor(1/F) workers share each visible GPU and the workers are dealt out round-robin over the GPUs:
worker w runs on cuda:(w mod number of GPUs). The workers themselves are the scheduler's
(experiment/scheduler.py, `run_workers`)."""

from __future__ import annotations

import math


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
