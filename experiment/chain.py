"""The training chain of one resolved config: data → dense nets → prune steps → metrics rows, one
job at a time (`run_job`: a dense net, or one prune chain from its dense net). Read it top to bottom:
`prepare` builds what a run needs once; `train_dense` and `prune_chain` train (or load) each model
through `experiment.results.checkpoints.load_or_train`; `record` evaluates a model and writes its
metrics row.

Every finished model is a checkpoint plus a metrics row, both written atomically; work whose outputs
exist is skipped, so a killed job resumes from its progress files. A checkpoint or progress file
that cannot be loaded is set aside and its model trained again. A model that cannot be trained or
evaluated (it diverges, or a solve cannot finish) gets a metrics row with `status` "failed" and the
reason in `error`, and no numbers; a chain stops at such a model (a failed dense net starts no
chain). A failed row counts as done: a rerun of the same run does not try the model again (training
is seeded, so it would fail again the same way); a changed config (learning rate, tolerances,
`network.maxSteps`) is a new run id, and deleting the row makes a rerun resume the model from its
last finite epoch (its progress file). Which jobs run where and when is the scheduler's
(experiment/scheduler.py).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from experiment import process
from experiment.config.settings import Schedule, Settings
from experiment.data.transforms import build_transform
from experiment.devices import resolve_device
from experiment.distributed import SINGLE, Ranks
from experiment.jobs import Job
from experiment.models import SolverError, solver_backend
from experiment.plan import Plan
from experiment.progress import chain_rows, intact_checkpoint, stop_decision
from experiment.pruning.compaction import compact, expand
from experiment.pruning.liveness import Masks
from experiment.pruning.rules import CONTROL_METHOD, STRUCTURED_METHODS, prune
from experiment.pruning.sparsity import measure_sparsity
from experiment.results.checkpoints import Checkpoints, Training, load_or_train
from experiment.results.rebuild import build_run_model, load_run_data
from experiment.results.rows import MetricsRow, ModelKey, failed_row, non_finite_measurements
from experiment.results.tree import RunDir, is_failed, metric_key
from experiment.seeds import derive_seed, seeded_generator
from experiment.training.evaluate import evaluate
from experiment.training.losses import Loss, build_loss
from experiment.training.loop import TrainData, TrainingFailed, TrainOutcome, train

log = logging.getLogger("experiment")


@dataclass(frozen=True)
class Experiment:
    """Everything the chain needs, built once per run."""

    plan: Plan
    run: RunDir
    device: torch.device
    data: TrainData
    x_test: torch.Tensor
    y_test: torch.Tensor
    progress_bars: bool = True  # off in worker processes, whose bars would garble one terminal
    ranks: Ranks = SINGLE  # the processes training each model together; rank 0 alone writes files
    repair: bool = False  # recorded models whose checkpoint is missing or damaged are computed again
    backend: str = ""  # the solver backend the run's models use (experiment.models.solvers)

    @property
    def settings(self) -> Settings:
        return self.plan.settings

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.run, self.device, self.ranks.leader)

    def new_model(self, generator: torch.Generator | None = None) -> nn.Module:
        """A new model of the run's network on the run's device, its parameters drawn from `generator`
        (None: the global default generator, for a model whose weights are loaded next)."""
        return build_run_model(self.settings.network, self.device, generator)

    def loss(self, schedule: Schedule) -> Loss:
        return build_loss(schedule.loss, schedule.loss_kwargs, self.data.data_dim)

    def data_for(self, schedule: Schedule) -> TrainData:
        """The data with the per-batch transforms of `schedule` (the settings' `training` or `retraining`)."""
        return replace(self.data, train_transform=build_transform(schedule.transforms_train + schedule.transforms_final),
                       eval_transform=build_transform(schedule.transforms_test + schedule.transforms_final))


def prepare(plan: Plan, progress_bars: bool = True, ranks: Ranks = SINGLE, repair: bool = False) -> Experiment:
    """Loads the data (downloading real datasets if needed) and the run folder's persisted
    train/validation split (made by the first process that needs it; of several ranks, by rank 0,
    which prepares before the others)."""
    device = resolve_device(plan.settings.device)
    run = RunDir(plan.run_folder)
    run.path.mkdir(parents=True, exist_ok=True)
    loaded = load_run_data(plan.settings, run, make_split=True)
    parts = {name: tuple(tensor.to(device) for tensor in pair) for name, pair in loaded.splits.items()}
    data = TrainData(*parts["train"], *parts["valid"], loaded.dim)
    backend = solver_backend(build_run_model(plan.settings.network, "cpu"))
    return Experiment(plan, run, device, data, *parts["test"], progress_bars=progress_bars, ranks=ranks, repair=repair,
                      backend=backend)


def run_job(experiment: Experiment, job: Job) -> None:
    """Does `job`, skipping whatever of it is finished: trains a dense net, or runs a prune chain from
    its dense net. The chain takes its dense net under the dense job's lock (rank 0; the other ranks
    follow it), since a damaged dense checkpoint is trained again then, and this process writes its
    files; a dense job is never held while waiting for a chain, so this cannot deadlock."""
    process.set_tf32(experiment.settings.tf32)  # every rank, worker and main process trains through here
    if job.kind == "dense":
        train_dense(experiment, job.net)
        return
    leader, run = experiment.ranks.leader, experiment.run
    with run.job_lock(job.dense.name) if leader else nullcontext():
        if leader:
            run.remove_model_temporaries(job.dense.owns)
        dense = train_dense(experiment, job.net)
    if dense is not None:  # (a dense net that fails here, retrained after damage, has a failed row: no chain)
        prune_chain(experiment, job.method, job.net, job.repetition, dense)


def train_dense(experiment: Experiment, net: int) -> nn.Module | None:
    """Dense net `net` trained (resuming a partial run) unless a loadable checkpoint of it exists; its
    metrics row written if missing. Returns the net; None if its training fails (it gets a failed row
    and no checkpoint)."""
    key = ModelKey.dense(net)
    trained = load_or_train(experiment.checkpoints, key.name, experiment.new_model,
                            lambda: initialise_and_train(experiment, key))
    if trained is None:
        return None
    if trained.fresh or needs_row(experiment, key):  # (trained anew after its checkpoint was lost: its row again)
        record(experiment, trained.model, key, experiment.settings.training, trained.seconds, trained.epochs)
    return trained.model


def initialise_and_train(experiment: Experiment, key: ModelKey) -> Training | None:
    """A dense net initialised from its seed and trained with the `training` schedule, resuming from
    its progress file; None if training fails (its failed row says why)."""
    run, seed, name, schedule = experiment.run, experiment.settings.seed, key.name, experiment.settings.training
    model = experiment.new_model(seeded_generator(derive_seed(seed, "init", key.net)))
    log.info("training %s", name)
    try:
        outcome = train(model, schedule, experiment.data_for(schedule), experiment.loss(schedule),
                        seed=derive_seed(seed, "train", key.net), progress_file=run.progress(name), description=name,
                        progress_bars=experiment.progress_bars, ranks=experiment.ranks, curve_file=run.curve(name))
    except TrainingFailed as failure:
        record_failure(experiment, key, None, f"training {failure}")
        return None
    return Training(model, outcome, masks={}, progress=name)


def needs_row(experiment: Experiment, key: ModelKey) -> bool:
    """Is the model's metrics row missing, or, where a stop rule judges by them, its validation
    columns (rows made before they existed get them from the model's checkpoint)?"""
    row = experiment.run.metrics_row(key.columns())
    if row is None:
        return True
    return experiment.plan.stop_rule is not None and not is_failed(row) and row.get("valid_loss") in (None, "")


def prune_chain(experiment: Experiment, method: str, net: int, repetition: int, dense: nn.Module) -> None:
    """Prune → retrain → evaluate over the plan's ratios. In `cascade` mode each step starts from the
    previous step's retrained net and masks; in `retrain` mode every step starts from the dense net.
    A step whose checkpoint exists for the same ratio history is loaded instead of recomputed. The
    control method prunes nothing: its rows say prune ratio 0 and carry the step's ratio as
    `step_prune_ratio`. Models of a structured method (FT) are retrained and evaluated as their
    compact twins (see `retrain`); checkpoints and rows keep the full layout all the same. The chain
    stops at a step whose retraining or evaluation fails (its row says why), and where the plan's stop
    rule says so (experiment/stopping.py); under a stop rule its rows get a `selected` column (1 for
    the sparsest net within tolerance) once the chain ends. Recorded steps before `resume_step` are
    passed over without loading their checkpoints, which may thus be deleted."""
    plan = experiment.plan
    start, start_masks = dense, {}
    resume = experiment.ranks.from_leader(resume_step(experiment, method, net, repetition))
    for step, history in enumerate(ratio_histories(plan), start=1):
        key = chain_key(plan, method, net, repetition, step)
        step_prune_ratio = 1.0 - history[-1]
        if step < resume:
            if experiment.ranks.from_leader(end_of_chain(experiment, method, net, repetition, final=False)):
                return
            continue
        trained = load_or_train(experiment.checkpoints, key.name, experiment.new_model,
                                lambda: prune_and_retrain(experiment, key, step_prune_ratio, start, start_masks, history),
                                usable=lambda checkpoint: checkpoint["keep_ratios"] == list(history))
        if trained is None:
            return
        # A step computed anew (a changed ratio history, a damaged checkpoint) replaces its earlier row.
        if trained.fresh or needs_row(experiment, key):
            evaluated = compact(trained.model, trained.masks).model if method in STRUCTURED_METHODS else trained.model
            if not record(experiment, trained.model, key, plan.settings.retraining, trained.seconds, trained.epochs,
                          step_prune_ratio, evaluated=evaluated):
                return
        if experiment.ranks.from_leader(end_of_chain(experiment, method, net, repetition, final=False)):
            return  # (every rank stops with rank 0, which alone reads the rows)
        if plan.mode == "cascade":
            start, start_masks = trained.model, trained.masks
    end_of_chain(experiment, method, net, repetition, final=True)


def ratio_histories(plan: Plan) -> list[tuple[float, ...]]:
    """Per step of a chain, the keep ratios its model was pruned through: all so far in `cascade`
    mode, the step's own in `retrain` mode (what a step checkpoint's `keep_ratios` records)."""
    if plan.mode == "cascade":
        return [tuple(plan.keep_ratios[:step]) for step in range(1, len(plan.keep_ratios) + 1)]
    return [(keep,) for keep in plan.keep_ratios]


def chain_key(plan: Plan, method: str, net: int, repetition: int, step: int) -> ModelKey:
    """The model of step `step` (from 1) of a chain (the control's rows say prune ratio 0)."""
    keep = plan.keep_ratios[step - 1]
    return ModelKey(plan.mode, method, net, repetition, step, 0.0 if method == CONTROL_METHOD else 1.0 - keep)


def resume_step(experiment: Experiment, method: str, net: int, repetition: int) -> int:
    """The first step of a chain that `prune_chain` loads or computes; the steps before it have their
    rows and are not needed as a start. In `cascade` mode: the last step whose row is recorded, as are
    those of all steps before it, and whose checkpoint loads for the same ratio history (the start of
    the next step); in `retrain` mode, where every step starts from the dense net: the first step
    without a recorded row. 1 when no step can be passed over. Under `--repair` (`experiment.repair`)
    no later than the step before the first recorded one whose checkpoint is lost or damaged, which
    is then computed again. Rank 0's job (it alone reads rows)."""
    plan = experiment.plan
    if not experiment.ranks.leader:
        return 1
    recorded = 0  # steps 1..recorded have their rows
    while recorded < len(plan.keep_ratios) and not needs_row(experiment, chain_key(plan, method, net, repetition, recorded + 1)):
        recorded += 1
    if experiment.repair:  # computed again from the first recorded step whose checkpoint is lost or damaged
        keys = [chain_key(plan, method, net, repetition, step) for step in range(1, recorded + 1)]
        broken = next((key.step for key in keys if not is_failed(experiment.run.metrics_row(key.columns()))
                       and not intact_checkpoint(experiment.run, key.name)), None)
        recorded = recorded if broken is None else broken - 1
    if plan.mode != "cascade":
        return recorded + 1
    histories = ratio_histories(plan)
    for step in range(recorded, 0, -1):
        if experiment.run.checkpoint(chain_key(plan, method, net, repetition, step).name).exists():
            checkpoint = experiment.checkpoints.load(chain_key(plan, method, net, repetition, step).name)
            if checkpoint is not None and checkpoint["keep_ratios"] == list(histories[step - 1]):
                return step
    return 1


def prune_and_retrain(experiment: Experiment, key: ModelKey, step_prune_ratio: float, start: nn.Module, start_masks: Masks,
                      history: tuple[float, ...]) -> Training | None:
    """Prune step `key` of a chain computed: a copy of `start` (under `start_masks`) pruned to the
    step's target, then retrained if the step is one of the plan's first `retrain_steps`; its
    checkpoint records the keep ratios so far, `history`. None if retraining fails (its row says why)."""
    plan, seed, name = experiment.plan, experiment.settings.seed, key.name
    model = experiment.new_model()
    model.load_state_dict(start.state_dict())
    masks = prune(model, key.method, key.target_prune_ratio, start_masks)
    outcome, progress = TrainOutcome(curve=[], seconds=0.0, kept_epoch=-1), None
    if key.step <= plan.retrain_steps:
        log.info("retraining %s", name)
        try:
            # The progress file is tied to the ratio history, so a changed ratio list never resumes a stale step.
            outcome, progress, masks = retrain(experiment, key.method, model, masks, f"{name}_{derive_seed(0, history):08x}",
                                               seed=derive_seed(seed, "retrain", *key.seed_path()),
                                               description=f"{key.method} net{key.net} step {key.step}/{len(plan.keep_ratios)} "
                                                           f"PR {key.target_prune_ratio:.3f}",
                                               curve=name)
        except TrainingFailed as failure:
            record_failure(experiment, key, step_prune_ratio, f"retraining {failure}")
            return None
    return Training(model, outcome, masks, progress, extra={"keep_ratios": list(history), "method": key.method})


def end_of_chain(experiment: Experiment, method: str, net: int, repetition: int, final: bool) -> bool:
    """Under a stop rule, whether the chain ends here: it has stopped early, or this is its `final`
    step. Then its rows' `selected` column is set (1: the last step within tolerance) and the choice
    logged. Rank 0's job (the others get False)."""
    plan, run = experiment.plan, experiment.run
    if not experiment.ranks.leader or plan.stop_rule is None or not plan.stop_rule.applies_to(method):
        return False
    rows = plan.planned_rows(run.read_metrics())
    decision = stop_decision(plan, rows, method, net, repetition)
    if decision is None or not (decision.stopped or final):
        return False
    chain = chain_rows(plan, rows, method, net, repetition)
    marks = {metric_key(row): int(row["step"] == decision.selected) for row in chain}
    if any(row.get("selected") != marks[metric_key(row)] for row in chain):
        run.update_metrics({key: {"selected": mark} for key, mark in marks.items()})
    ratio = plan.prune_ratios[decision.selected - 1] if decision.selected else 0.0
    ended = f"stopped after step {decision.last_step} of {len(plan.keep_ratios)}" if decision.stopped else "ran every step"
    log.info("%s net %d rep %d: %s; selected step %d (PR %.3f), the sparsest within tolerance", method, net, repetition,
             ended, decision.selected, ratio)
    return True


def retrain(experiment: Experiment, method: str, model: nn.Module, masks: Masks, progress: str, *, seed: int,
            description: str, curve: str | None = None) -> tuple[TrainOutcome, str, Masks]:
    """Retrains the pruned `model` in place under `masks` with the `retraining` schedule, resuming
    from the progress file `progress` (a name) and keeping the curve file of model `curve` (a name)
    up to date epoch by epoch; returns the outcome, the name of the progress file used and the masks.

    A model of a structured method is trained as its compact twin, the masked model's training in a
    fraction of the time (`experiment.pruning.compaction`), then expanded back into `model`, its
    masks too (they come back as they were). The twin's progress file is `{progress}_compact`, so
    that it is never loaded into the full model, nor a full-size one into the twin: a masked
    retraining interrupted before compaction existed (its file has the plain name) resumes masked."""
    run, compacted, trained, trained_masks = experiment.run, None, model, masks
    if method in STRUCTURED_METHODS and not run.progress(progress).exists():
        compacted = compact(model, masks)
        trained, trained_masks, progress = compacted.model, compacted.masks, f"{progress}_compact"
    schedule = experiment.settings.retraining
    outcome = train(trained, schedule, experiment.data_for(schedule), experiment.loss(schedule),
                    seed=seed, progress_file=run.progress(progress), masks=trained_masks, description=description,
                    progress_bars=experiment.progress_bars, ranks=experiment.ranks,
                    curve_file=None if curve is None else run.curve(curve))
    if compacted is not None:
        masks = expand(compacted, model)
    return outcome, progress, masks


def record(experiment: Experiment, model: nn.Module, key: ModelKey, schedule: Schedule, train_seconds: float, epochs: int,
           step_prune_ratio: float | None = None, evaluated: nn.Module | None = None) -> bool:
    """Evaluates `model` with `schedule` (the one it was trained with last: its test batch size, loss,
    metrics and transforms) on the test set, and on the validation set (the `valid_*` columns, what a
    stop rule may judge by: experiment.stopping), and upserts its metrics row
    (experiment/results/rows.py); rank 0's job alone. `evaluated`, if given, is what runs instead: a model with the same outputs
    (`model`'s compact twin), while the sparsity columns count `model` itself. A non-finite loss or
    metric, or a failed solve, makes the row a failed one; False then."""
    if not experiment.ranks.leader:
        return True
    seed = experiment.settings.seed
    measured = model if evaluated is None else evaluated
    data = experiment.data_for(schedule)
    try:
        test = evaluate(measured, experiment.x_test, experiment.y_test, schedule.test_batch_size, experiment.loss(schedule),
                        schedule.metrics_test, data.data_dim, data.eval_transform,
                        seeded_generator(derive_seed(seed, "test", *key.seed_path()), experiment.x_test.device))
        valid = evaluate(measured, data.x_valid, data.y_valid, schedule.test_batch_size, experiment.loss(schedule),
                         schedule.metrics_test, data.data_dim, data.eval_transform,
                         seeded_generator(derive_seed(seed, "valid", *key.seed_path()), data.x_valid.device))
    except SolverError as error:
        record_failure(experiment, key, step_prune_ratio, f"evaluation: solver failed: {error}")
        return False
    bad = non_finite_measurements(test, valid)
    if bad:
        record_failure(experiment, key, step_prune_ratio,
                       f"evaluation: non-finite {', '.join(f'{name} ({value})' for name, value in bad.items())}")
        return False
    row = MetricsRow(key, step_prune_ratio, measure_sparsity(model), test, valid, train_seconds, epochs, solver_backend(model))
    experiment.run.upsert_metrics(row.columns())
    log.info("%s net %d rep %d step %d: prune ratio %.3f, test loss %.4f", key.method, key.net, key.repetition,
             key.step, row.sparsity.prune_ratio, test.loss)
    return True


def record_failure(experiment: Experiment, key: ModelKey, step_prune_ratio: float | None, reason: str) -> None:
    """Upserts the metrics row of a model that failed: its key, status "failed" and `reason` as its
    error; no measurements. Rank 0's job alone."""
    if not experiment.ranks.leader:
        return
    experiment.run.upsert_metrics(failed_row(key, step_prune_ratio, reason))
    log.error("FAILED %s: %s", key.name, reason)

