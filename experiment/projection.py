"""What a command will cost before it runs (`--dry-run`): the trainings and epochs its plans still
need, and an estimate of the wall time.

Seconds per epoch of a model come from the epochs already recorded for the same network and
dataset under the results folder (the median of the `seconds` column of every curve there), or,
where there are none and the dataset is generated in memory (the toy sets), from a calibration:
one epoch of an untrained model on a few batches, scaled to the training split. Both are estimates:
retrainings of sparse models are cheaper or dearer per epoch than dense training, and a flow's
solver takes more steps as it trains (an untrained flow's epoch is about 2–3 times cheaper).
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from experiment.config.settings import Settings
from experiment.data import DATASETS
from experiment.plan import Plan
from experiment.results.rebuild import build_run_model, load_run_data
from experiment.results.tree import RunDir, metric_key
from experiment.files import read_csv
from experiment.seeds import seeded_generator
from experiment.training.loop import TrainData, train
from experiment.training.losses import build_loss

CALIBRATION_BATCHES = 3


@dataclass(frozen=True)
class Work:
    """The trainings of a plan: all it asks for, those without a metrics row yet, and the epochs of
    those (steps after `retrainIterations` prune without retraining and count no epochs)."""

    trainings: int
    left: int
    epochs_left: int
    longest_job_epochs: int  # the most epochs one job (a dense net or a chain, which runs in order) has left


def work_of(plan: Plan, run: RunDir) -> Work:
    """What `plan` still has to train in `run` (an upper bound under a stop rule: chains may stop early)."""
    done = {metric_key(row) for row in plan.planned_rows(run.read_metrics())} if run.metrics_file.exists() else set()
    dense_epochs, retrain_epochs = plan.settings.training.num_epochs, plan.settings.retraining.num_epochs
    jobs: list[list[int]] = [[dense_epochs if ("train", "dense", str(net), "0", "0") not in done else -1]
                             for net in plan.nets]
    for method in plan.methods:
        for net in plan.nets:
            for repetition in range(plan.repetitions):
                jobs.append([retrain_epochs if (plan.mode, method, str(net), str(repetition), str(step)) not in done else -1
                             for step in range(1, plan.retrain_steps + 1)])
    left = [epochs for job in jobs for epochs in job if epochs >= 0]
    return Work(trainings=sum(len(job) for job in jobs), left=len(left), epochs_left=sum(left),
                longest_job_epochs=max((sum(epochs for epochs in job if epochs > 0) for job in jobs), default=0))


@dataclass(frozen=True)
class EpochSeconds:
    seconds: float
    source: str  # how it was found, for the reader


def recorded_epoch_seconds(settings: Settings) -> EpochSeconds | None:
    """The median seconds per epoch of every curve of the same network and dataset under the results folder."""
    network = settings.network
    folder = Path(settings.directories.results) / network.dataset / network.name
    seconds = [row["seconds"] for curve in sorted(folder.glob("*/curves/*.csv"))
               for row in read_csv(curve) if isinstance(row.get("seconds"), (int, float))]
    if not seconds:
        return None
    return EpochSeconds(statistics.median(seconds), f"median of {len(seconds):,} recorded epochs under {folder.parent.parent}")


def calibrated_epoch_seconds(plan: Plan) -> EpochSeconds | None:
    """Two training epochs of an untrained model on CALIBRATION_BATCHES batches of the training split
    (the second timed: the first pays one-time costs), scaled to the whole split; None for datasets
    that would have to be read or downloaded."""
    settings = plan.settings
    if not DATASETS[settings.network.dataset].generated:
        return None
    splits = load_run_data(settings, RunDir(plan.run_folder), draw_missing_split=True)
    schedule = settings.training
    x_all, y_all = splits.splits["train"]
    count = min(len(x_all), CALIBRATION_BATCHES * schedule.batch_size)
    data = TrainData(x_all[:count], y_all[:count], x_all[:2], y_all[:2], splits.dim)  # (validation: a token)
    model = build_run_model(settings.network, "cpu", seeded_generator(settings.seed))
    two_epochs = replace(schedule, num_epochs=2, start_epoch=0, lr_schedulers=(), early_stop_epoch=None)
    with tempfile.TemporaryDirectory() as folder:
        outcome = train(model, two_epochs, data, build_loss(schedule.loss, schedule.loss_kwargs, splits.dim),
                        seed=settings.seed, progress_file=Path(folder) / "calibration.pt", progress_bars=False)
    seconds = outcome.curve[-1]["seconds"] * len(x_all) / count
    return EpochSeconds(seconds, f"calibrated on {count:,} points of an untrained model; a trained flow's epoch is 2–3 × that")


def projection_lines(plans: Sequence[Plan], workers: int, calibrate: bool = True) -> list[str]:
    """The cost of the plans for `--dry-run`: trainings and epochs left, seconds per epoch of each
    model (recorded, else calibrated if `calibrate`), and the projected wall time on `workers`
    worker processes."""
    works = [work_of(plan, RunDir(plan.run_folder)) for plan in plans]
    trainings, left = sum(work.trainings for work in works), sum(work.left for work in works)
    epochs = sum(work.epochs_left for work in works)
    lines = [f"trainings: {left:,} to do of {trainings:,} ({epochs:,} epochs)"]
    if not left:
        return lines
    rates: dict[tuple[str, str], EpochSeconds | None] = {}
    for plan in plans:
        network = plan.settings.network
        if (network.name, network.dataset) not in rates:
            rates[network.name, network.dataset] = (recorded_epoch_seconds(plan.settings)
                                                    or (calibrated_epoch_seconds(plan) if calibrate else None))
    for (name, dataset), rate in rates.items():
        lines.append(f"seconds per epoch, {name} on {dataset}: "
                     + (f"{rate.seconds:.2f} ({rate.source})" if rate else
                        "unknown (no recorded epochs" + ("; the data are not generated)" if calibrate else "; not calibrated)")))
    if any(rate is None for rate in rates.values()):
        return lines
    busy = [(work, rates[plan.settings.network.name, plan.settings.network.dataset].seconds) for work, plan in zip(works, plans)]
    total = sum(work.epochs_left * seconds for work, seconds in busy)
    longest = max(work.longest_job_epochs * seconds for work, seconds in busy)
    wall = max(total / workers, longest)
    alone = f", ≈ {format_duration(total)} of one process" if workers > 1 else ""
    lines.append(f"projected wall time: ≈ {format_duration(wall)} with --workers {workers}{alone} "
                 "(an estimate: experiment/projection.py says how it is made)")
    return lines


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{math.ceil(seconds)} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
