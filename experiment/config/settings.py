"""Typed, read-only views of a resolved config (`settings_of`): frozen dataclasses with snake_case
fields. Config keys are camelCase in YAML (docs/CONFIG.md); this module is the only place that
reads them, so the rest of the code reads `settings.training.num_epochs`, never
`config["training"]["numEpochs"]`. The resolved dict itself stays what a run id hashes and what
config.yaml records (experiment/results/tree.py).

Free-form keyword arguments (`optimizerKwargs`, a metric's or transform's `kwargs`) stay mappings,
as do the `{type, kwargs}` entries of `metricsTest` and `transforms*`, which their builders take
as they are (experiment/training/metrics.py, experiment/data/transforms.py); each is a copy, never
shared with the config dict.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from experiment.config.schema import Sources, remove_ignored_original_keys, validate_config
from experiment.stopping import StopRule


@dataclass(frozen=True)
class NetworkSettings:
    """`network`: the model and the dataset it is trained on."""

    name: str
    dataset: str
    output_size: int
    atol: float | None  # null: the model's default solver tolerance
    rtol: float | None
    max_steps: int  # solver steps per solve before it fails
    solver_backend: str  # "auto" or a backend of experiment.models.solvers


@dataclass(frozen=True)
class LRSchedulerSpec:
    """One `lrSchedulers` entry: a torch.optim.lr_scheduler class and its arguments."""

    type: str
    kwargs: Mapping[str, Any]
    step_kwargs: Mapping[str, Any]  # arguments counted in epochs (milestones, step_size, ...)


@dataclass(frozen=True)
class Schedule:
    """A `training` or `retraining` section: everything training, evaluation, losses and the batch
    transforms read. Metric and transform entries are `{type, kwargs}` mappings."""

    loss: str
    loss_kwargs: Mapping[str, Any]
    metrics_test: tuple[Mapping[str, Any], ...]
    batch_size: int
    test_batch_size: int
    optimizer: str
    optimizer_kwargs: Mapping[str, Any]
    num_epochs: int
    early_stop_epoch: int | None  # None: keep the last epoch's weights
    lr_schedulers: tuple[LRSchedulerSpec, ...]
    transforms_train: tuple[Mapping[str, Any], ...]
    transforms_test: tuple[Mapping[str, Any], ...]
    transforms_final: tuple[Mapping[str, Any], ...]
    start_epoch: int


@dataclass(frozen=True)
class RangeSpacing:
    """A `spacing` entry of type geometric or linear: `num_intervals` keep ratios from `max_val` to `min_val`."""

    type: str
    num_intervals: int
    max_val: float
    min_val: float


@dataclass(frozen=True)
class ManualSpacing:
    """A `spacing` entry of type manual: the keep ratios themselves."""

    values: tuple[float, ...]


@dataclass(frozen=True)
class RelativeSpacing:
    """A `spacing` entry of type relative: `max_steps` steps, each pruning `ratio` of what is left."""

    ratio: float
    max_steps: int


Spacing = RangeSpacing | ManualSpacing | RelativeSpacing


@dataclass(frozen=True)
class PlottedKeepRatios:
    """`experiments.plotting`: the keep ratios the figures show, `min_val` to `max_val`."""

    min_val: float
    max_val: float


@dataclass(frozen=True)
class ExperimentSettings:
    """`experiments`: which nets, methods and keep ratios a run asks for."""

    methods: tuple[str, ...]
    mode: str
    num_nets: int
    num_repetitions: int
    spacing: tuple[Spacing, ...]
    retrain_iterations: int  # -1: retrain after every prune step
    plotting: PlottedKeepRatios
    stop_rule: StopRule | None  # None: every chain runs all its steps


@dataclass(frozen=True)
class Directories:
    """`directories`: where results go and where datasets are kept."""

    results: str
    training_data: str


@dataclass(frozen=True)
class LauncherSettings:
    """`launcher`: how `--launcher` submits a job array; None leaves the choice to experiment/launcher.py."""

    tasks: int | None
    partition: str | None
    account: str | None
    time_min: int
    timeout_requeues: int
    gpus_per_task: int | None
    cpus_per_task: int | None
    mem_gb: float | None
    array_parallelism: int | None
    job_name: str
    logs: str | None


@dataclass(frozen=True)
class Limits:
    """`limits`: safety bounds a config may raise."""

    max_parameters: int


@dataclass(frozen=True)
class Settings:
    """A resolved config, typed."""

    network: NetworkSettings
    training: Schedule
    retraining: Schedule
    experiments: ExperimentSettings
    directories: Directories
    seed: int
    device: str
    tf32: bool
    launcher: LauncherSettings
    limits: Limits


def settings_of(config: Mapping[str, Any]) -> Settings:
    """The settings of a resolved, validated config (`load_configs`; every key present)."""
    network, experiments, launcher = config["network"], config["experiments"], config["launcher"]
    return Settings(
        network=NetworkSettings(name=network["name"], dataset=network["dataset"], output_size=network["outputSize"],
                                atol=network["tolerances"]["atol"], rtol=network["tolerances"]["rtol"],
                                max_steps=network["maxSteps"], solver_backend=network["solverBackend"]),
        training=schedule_of(config["training"]),
        retraining=schedule_of(config["retraining"]),
        experiments=ExperimentSettings(
            methods=tuple(experiments["methods"]), mode=experiments["mode"], num_nets=experiments["numNets"],
            num_repetitions=experiments["numRepetitions"], spacing=tuple(map(_spacing, experiments["spacing"])),
            retrain_iterations=experiments["retrainIterations"], plotting=plotted_keep_ratios_of(experiments),
            stop_rule=None if experiments["stopRule"] is None else StopRule(**experiments["stopRule"])),
        directories=Directories(results=config["directories"]["results"],
                                training_data=config["directories"]["training_data"]),
        seed=config["seed"],
        device=config["device"],
        tf32=config["tf32"],
        launcher=LauncherSettings(
            tasks=launcher["tasks"], partition=launcher["partition"], account=launcher["account"],
            time_min=launcher["timeMin"], timeout_requeues=launcher["timeoutRequeues"],
            gpus_per_task=launcher["gpusPerTask"], cpus_per_task=launcher["cpusPerTask"], mem_gb=launcher["memGb"],
            array_parallelism=launcher["arrayParallelism"], job_name=launcher["jobName"], logs=launcher["logs"]),
        limits=Limits(max_parameters=config["limits"]["maxParameters"]),
    )


def recorded_config(config: Mapping[str, Any], file: str) -> dict:
    """The config a run folder recorded (its config.yaml, shown as `file`), validated again: keys
    added since the run was made take their defaults, keys dropped since are dropped silently (the
    run's own record, not a config someone wrote), and a value that no longer passes is a
    ConfigError naming `file` and the key."""
    raw, sources = copy.deepcopy(dict(config)), Sources({}, file)
    remove_ignored_original_keys(raw, sources)
    return validate_config(raw, sources)


def recorded_settings(config: Mapping[str, Any], file: str) -> Settings:
    """The settings of `recorded_config(config, file)`."""
    return settings_of(recorded_config(config, file))


def schedule_of(section: Mapping[str, Any]) -> Schedule:
    """The schedule of a resolved `training` or `retraining` section."""
    entries = lambda key: tuple(copy.deepcopy(section[key]))
    return Schedule(
        loss=section["loss"], loss_kwargs=copy.deepcopy(section["lossKwargs"]), metrics_test=entries("metricsTest"),
        batch_size=section["batchSize"], test_batch_size=section["testBatchSize"], optimizer=section["optimizer"],
        optimizer_kwargs=copy.deepcopy(section["optimizerKwargs"]), num_epochs=section["numEpochs"],
        early_stop_epoch=section["earlyStopEpoch"],
        lr_schedulers=tuple(LRSchedulerSpec(type=entry["type"], kwargs=copy.deepcopy(entry["kwargs"]),
                                            step_kwargs=copy.deepcopy(entry["stepKwargs"]))
                            for entry in section["lrSchedulers"]),
        transforms_train=entries("transformsTrain"), transforms_test=entries("transformsTest"),
        transforms_final=entries("transformsFinal"), start_epoch=section["startEpoch"],
    )


def plotted_keep_ratios_of(experiments: Mapping[str, Any]) -> PlottedKeepRatios:
    """The plotted keep ratios of a resolved `experiments` section."""
    return PlottedKeepRatios(min_val=experiments["plotting"]["minVal"], max_val=experiments["plotting"]["maxVal"])


def _spacing(entry: Mapping[str, Any]) -> Spacing:
    if entry["type"] == "manual":
        return ManualSpacing(values=tuple(float(value) for value in entry["values"]))
    if entry["type"] == "relative":
        return RelativeSpacing(ratio=entry["ratio"], max_steps=entry["maxSteps"])
    return RangeSpacing(type=entry["type"], num_intervals=entry["numIntervals"], max_val=entry["maxVal"],
                        min_val=entry["minVal"])
