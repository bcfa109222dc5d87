"""The training chain of one resolved config: data → dense nets → (pruning steps) → results tree.

Every finished model is a checkpoint plus a metrics row; both are written atomically, and work whose
outputs exist is skipped, so re-running a config resumes it and a finished run trains nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from experiment.config import ConfigError
from experiment.data import load_dataset
from experiment.data.splits import split_tensors, train_valid_indices
from experiment.data.transforms import build_transform
from experiment.models import build_model
from experiment.plan import Plan, make_plan
from experiment.pruning.rules import CONTROL_METHOD, prune
from experiment.pruning.sparsity import measure_sparsity
from experiment.report import dense_point, format_table, main_metric, plot_prune_curve, pruned_points, step_prune_ratio
from experiment.files import atomic_torch_save, load_checkpoint
from experiment.results.tree import RunDir, model_name
from experiment.seeds import derive_seed
from experiment.training.evaluate import evaluate
from experiment.training.losses import build_loss
from experiment.training.loop import TrainData, TrainOutcome, train

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

    @property
    def config(self) -> dict:
        return self.plan.config

    def new_model(self) -> nn.Module:
        network = self.config["network"]
        tolerances = network["tolerances"]
        return build_model(network["name"], network["outputSize"], tolerances["atol"], tolerances["rtol"]).to(self.device)

    def loss(self, section: str):
        schedule = self.config[section]
        return build_loss(schedule["loss"], schedule["lossKwargs"], self.data.data_dim)

    def data_for(self, section: str) -> TrainData:
        """The data with the per-batch transforms of the `training` or `retraining` section."""
        schedule = self.config[section]
        return replace(self.data, train_transform=build_transform(schedule["transformsTrain"] + schedule["transformsFinal"]),
                       eval_transform=build_transform(schedule["transformsTest"] + schedule["transformsFinal"]))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("<config>", "device", "cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def prepare(config: dict) -> Experiment:
    """Loads the data (downloading real datasets if needed), then creates the run folder with its
    persisted train/validation split."""
    plan = make_plan(config)
    device = resolve_device(config["device"])
    splits = load_dataset(config["network"]["dataset"], config["directories"]["training_data"], derive_seed(config["seed"], "data"))
    run = RunDir.create(config)
    indices = None
    if splits.valid is None:
        num_train = len(splits.train)
        indices = run.data_split(lambda: train_valid_indices(num_train, derive_seed(config["seed"], "split")))
    parts = {name: tuple(tensor.to(device) for tensor in pair) for name, pair in split_tensors(splits, indices).items()}
    data = TrainData(*parts["train"], *parts["valid"], splits.dim)
    return Experiment(plan, run, device, data, *parts["test"])


def run_experiment(config: dict) -> RunDir:
    """Runs (or resumes) everything `config` asks for and returns its run folder."""
    experiment = prepare(config)
    handler = logging.FileHandler(experiment.run.log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    try:
        log.info("run %s: %s", experiment.plan.run_id, experiment.run.path)
        dense = {net: dense_model(experiment, net) for net in experiment.plan.nets}
        for method in experiment.plan.methods:
            for net in experiment.plan.nets:
                for repetition in range(experiment.plan.repetitions):
                    prune_chain(experiment, method, net, repetition, dense[net])
        report(experiment)
        log.info("run %s finished", experiment.plan.run_id)
    finally:
        log.removeHandler(handler)
        handler.close()
    return experiment.run


def dense_model(experiment: Experiment, net: int) -> nn.Module:
    """Dense net `net`: loaded if trained before, else trained (resuming a partial run); its metrics
    row is written if missing."""
    run, seed = experiment.run, experiment.config["seed"]
    key = dict(mode="train", method="dense", net=net, repetition=0, step=0, target_prune_ratio=0.0)
    name = model_name(key)
    torch.manual_seed(derive_seed(seed, "init", net))
    model = experiment.new_model()
    if run.checkpoint(name).exists():
        checkpoint = load_trained(run, name, experiment.device)
        model.load_state_dict(checkpoint["model"])
        seconds, epochs = checkpoint["train_seconds"], checkpoint["epochs"]
    else:
        log.info("training %s", name)
        outcome = train(model, experiment.config["training"], experiment.data_for("training"), experiment.loss("training"),
                        seed=derive_seed(seed, "train", net), progress_file=run.progress(name), description=name)
        save_trained(run, name, model, outcome, {}, {}, name)
        seconds, epochs = outcome.seconds, len(outcome.curve)
    if not run.has_metrics(key):
        record(experiment, model, key, "training", seconds, epochs)
    return model


def prune_chain(experiment: Experiment, method: str, net: int, repetition: int, dense: nn.Module) -> None:
    """Prune → retrain → evaluate over the plan's ratios. In `cascade` mode each step starts from the
    previous step's retrained net and masks; in `retrain` mode every step starts from the dense net.
    A step whose checkpoint exists for the same ratio history is loaded instead of recomputed. The
    control method prunes nothing: its rows say prune ratio 0 and carry the step's ratio as
    `step_prune_ratio`."""
    plan, run, seed = experiment.plan, experiment.run, experiment.config["seed"]
    start, start_masks, history = dense, {}, ()
    for step, keep in enumerate(plan.keep_ratios, start=1):
        history = history + (keep,) if plan.mode == "cascade" else (keep,)
        target = 0.0 if method == CONTROL_METHOD else 1.0 - keep
        key = dict(mode=plan.mode, method=method, net=net, repetition=repetition, step=step, target_prune_ratio=target)
        name = model_name(key)
        model = experiment.new_model()
        saved = load_trained(run, name, experiment.device) if run.checkpoint(name).exists() else None
        if saved is not None and saved["keep_ratios"] == list(history):
            model.load_state_dict(saved["model"])
            masks, seconds, epochs = saved["masks"], saved["train_seconds"], saved["epochs"]
            fresh = False
        else:
            model.load_state_dict(start.state_dict())
            masks = prune(model, method, target, start_masks)
            outcome, progress = TrainOutcome(curve=[], seconds=0.0, kept_epoch=-1), None
            if step <= plan.retrain_steps:
                log.info("retraining %s", name)
                # The progress file is tied to the ratio history, so a changed ratio list never resumes a stale step.
                progress = f"{name}_{derive_seed(0, history):08x}"
                outcome = train(model, experiment.config["retraining"], experiment.data_for("retraining"),
                                experiment.loss("retraining"),
                                seed=derive_seed(seed, "retrain", *key.values()), progress_file=run.progress(progress),
                                masks=masks, description=f"{method} net{net} step {step}/{len(plan.keep_ratios)} PR {target:.3f}")
            save_trained(run, name, model, outcome, masks, {"keep_ratios": list(history), "method": method}, progress)
            seconds, epochs, fresh = outcome.seconds, len(outcome.curve), True
        if fresh or not run.has_metrics(key):
            record(experiment, model, key, "retraining", seconds, epochs, step_prune_ratio=1.0 - keep)
        if plan.mode == "cascade":
            start, start_masks = model, masks


def planned_rows(rows: list[dict], plan: Plan) -> list[dict]:
    """The metrics rows of the models `plan` asks for (a run folder may also hold rows of other
    modes, more nets or an earlier ratio list)."""
    def planned(row: dict) -> bool:
        if row["net"] not in plan.nets:
            return False
        if row["method"] == "dense":
            return True
        return (row["mode"] == plan.mode and row["method"] in plan.methods and row["repetition"] < plan.repetitions
                and 1 <= row["step"] <= len(plan.prune_ratios)
                and math.isclose(step_prune_ratio(row), plan.prune_ratios[row["step"] - 1], abs_tol=1e-9))
    return [row for row in rows if planned(row)]


def report(experiment: Experiment) -> None:
    """Prints prune ratio vs the main metric per method and plots it into the run folder."""
    metric = main_metric(experiment.config["training"])
    rows = planned_rows(experiment.run.read_metrics(), experiment.plan)
    dense, lines = dense_point(rows, metric), pruned_points(rows, metric)
    title = f"{experiment.config['network']['name']} on {experiment.config['network']['dataset']}"
    print(f"\n{title} ({experiment.run.path}), test {metric}, mean ± std over nets:")
    print(format_table(dense, lines, metric))
    plot_prune_curve(dense, lines, metric, title, experiment.run.path / "prune_curve.png")


def save_trained(run: RunDir, name: str, model: nn.Module, outcome: TrainOutcome, masks: dict[str, torch.Tensor],
                 extra: dict, progress: str | None) -> None:
    """The final checkpoint (holding the curve too), then the curve file, then the progress file
    goes; `load_trained` finishes the last two if a kill came in between."""
    atomic_torch_save(run.checkpoint(name), {
        "model": model.state_dict(), "masks": masks, "train_seconds": outcome.seconds, "curve": outcome.curve,
        "epochs": len(outcome.curve), "kept_epoch": outcome.kept_epoch, "progress": progress or "", **extra,
    })
    run.write_curve(name, outcome.curve)
    if progress is not None:
        run.progress(progress).unlink(missing_ok=True)


def load_trained(run: RunDir, name: str, device: torch.device) -> dict:
    """A final checkpoint, with the bookkeeping of `save_trained` completed if it was interrupted."""
    checkpoint = load_checkpoint(run.checkpoint(name), device)
    if not run.curve(name).exists():
        run.write_curve(name, checkpoint["curve"])
    if checkpoint["progress"]:
        run.progress(checkpoint["progress"]).unlink(missing_ok=True)
    return checkpoint


def record(experiment: Experiment, model: nn.Module, key: dict, section: str, train_seconds: float, epochs: int,
           **columns) -> dict:
    """Evaluates `model` on the test set and upserts its metrics row (key, `columns`, measurements)."""
    schedule = experiment.config[section]
    torch.manual_seed(derive_seed(experiment.config["seed"], "test", *key.values()))
    result = evaluate(model, experiment.x_test, experiment.y_test, schedule["testBatchSize"], experiment.loss(section),
                      schedule["metricsTest"], experiment.data.data_dim, experiment.data_for(section).eval_transform)
    sparsity = measure_sparsity(model)
    row = {
        **key,
        **columns,
        "prune_ratio": sparsity.prune_ratio,
        "weight_prune_ratio": sparsity.weight_prune_ratio,
        "num_params": sparsity.num_params,
        "nonzero_params": sparsity.nonzero_params,
        "test_loss": result.loss,
        **result.metrics,
        "trace_estimator": result.trace_estimator,
        "nfe_forward": result.nfe_forward,
        "flops": sparsity.nonzero_weights * result.nfe_forward,
        "train_seconds": train_seconds,
        "epochs": epochs,
    }
    experiment.run.upsert_metrics(row)
    log.info("%s net %d rep %d step %d: prune ratio %.3f, test loss %.4f", key["method"], key["net"], key["repetition"],
             key["step"], sparsity.prune_ratio, result.loss)
    return row
