"""Validation and defaults for a loaded config (every key is documented in docs/CONFIG.md).

`validate_config` turns a plain mapping (includes, customizations and overrides already applied) into
a fully resolved config: every key present with its default, values normalised (ints accepted where
floats are expected, numeric strings such as "5e-3" turned into floats), `retraining` resolved over a
copy of `training`. Any problem raises a ConfigError naming the file that set the offending key.
Keys of the original framework's configs that mean nothing here are removed before validation by
`remove_ignored_original_keys`, which returns a warning for each.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.optim import lr_scheduler

from experiment.data import DATASET_NAMES, DATASETS
from experiment.data.transforms import TRANSFORM_NAMES, TRANSFORMS
from experiment.config.defaults import DEFAULT_MAX_STEPS, DEFAULT_SOLVER_BACKEND
from experiment.models.names import parse_model_name
from experiment.training.losses import FLOW_LOSSES, LOSS_ARGUMENTS, LOSSES, build_loss
from experiment.training.metrics import METRICS

KeyPath = tuple[str | int, ...]

# Bounds on counts that multiply into jobs, files and memory: far above any real experiment, low enough
# that a typo (numNets: 1000000000) is an error rather than hours of planning or an exhausted memory.
MAX_NETS = 10_000
MAX_REPETITIONS = 1_000
MAX_KEEP_RATIOS = 10_000  # per spacing entry and in all
DEFAULT_MAX_PARAMETERS = 100_000_000

CONTROL_METHOD = "NoPrune"  # the equal-training control: the chain of retrainings, nothing pruned (docs/PRUNING.md)
METHODS = ("ThresNet", "FilterThresNet", CONTROL_METHOD)
MODES = ("cascade", "retrain", "train")
DEVICES = ("cpu", "cuda", "auto")  # and "cuda:N", GPU number N
_CUDA_INDEX = re.compile(r"cuda:\d+")
SPACING_TYPES = ("geometric", "linear", "manual", "relative")
SOLVER_BACKENDS = (DEFAULT_SOLVER_BACKEND, "fused", "torchdiffeq", "backprop")  # experiment.models.solvers.options
STOP_REFERENCES = ("dense", "best")
STOP_MEASURES = ("loss", "error")

# A float literal PyYAML leaves as a string: an exponent without a dot ("5e-3") or without a sign ("1.0e3").
_FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)[eE][+-]?\d+|[+-]?(?:\d+\.\d*|\.\d+)")


class ConfigError(ValueError):
    """A config problem. str(err) == f"{file}: {key}: {message}"; `key` is a dotted key path such as
    'training.optimizerKwargs.lr' or 'experiments.spacing[1].maxVal', '<root>' for the whole document."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(file, key, message)  # keeps the error picklable
        self.file = file
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


def format_key_path(path: KeyPath) -> str:
    """'a.b[2].c' for ('a', 'b', 2, 'c'); '<root>' for the empty path."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


@dataclass(frozen=True)
class Sources:
    """Which file set each key path last, so an error names the file the bad value came from."""

    files: Mapping[KeyPath, str]
    default_file: str

    def file_of(self, path: KeyPath) -> str:
        """The file that set `path`, or its nearest ancestor (a missing key: the file of its mapping)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.files:
                return self.files[path[:end]]
        return self.default_file

    def error(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(self.file_of(path), format_key_path(path), message)

    def warning(self, path: KeyPath, message: str) -> str:
        """A warning's text, 'FILE: KEY.PATH: message', naming the file as `error` does."""
        return f"{self.file_of(path)}: {format_key_path(path)}: {message}"


Checker = Callable[[Any, KeyPath, Sources], Any]
"""Validates the value at a key path and returns it normalised; raises ConfigError."""

_REQUIRED = object()  # Field default of a key that must be given


class Field(NamedTuple):
    """One key of a mapping: how to check it and its default (validated like a given value)."""

    check: Checker
    default: Any = _REQUIRED


def _describe(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def numbers_from_strings(value: Any) -> Any:
    """Copy of `value` with float literals PyYAML left as strings ("5e-3") turned into floats, in
    nested mappings and lists too: free-form kwargs end up in torch, which needs numbers."""
    if isinstance(value, dict):
        return {key: numbers_from_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [numbers_from_strings(item) for item in value]
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


# ----------------------------------------------------------------------------------------- checkers


def _of_type(kind: type, expected: str) -> Checker:
    """The checker of values of type `kind`, which passes them on as they are; `expected` names the
    type in its error."""
    def check(value: Any, path: KeyPath, sources: Sources) -> Any:
        if not isinstance(value, kind):
            raise sources.error(path, f"expected {expected}, got {_describe(value)}")
        return value

    return check


def _string(value: Any, path: KeyPath, sources: Sources) -> str:
    """A string without control characters: every config string may end up in a file name, a log
    line or a line of a generated job script, where a newline would start a new line of its own
    (e.g. a shell command after an `#SBATCH` line)."""
    if not isinstance(value, str):
        raise sources.error(path, f"expected a string, got {_describe(value)}")
    control = next((character for character in value if unicodedata.category(character) == "Cc"), None)
    if control is not None:
        raise sources.error(path, f"must not contain control characters such as newlines or tabs, got {value!r}")
    return value


def _folder(value: Any, path: KeyPath, sources: Sources) -> str:
    """A folder path: a non-empty string (the working directory is '.')."""
    if not _string(value, path, sources):
        raise sources.error(path, "must not be empty; write '.' for the folder you run from")
    return value


_boolean = _of_type(bool, "true or false")
_mapping = _of_type(dict, "a mapping")
_any_list = _of_type(list, "a list")


def _kwargs(value: Any, path: KeyPath, sources: Sources) -> dict:
    """Free-form keyword arguments: a mapping with string keys; numeric strings become floats."""
    for key in _mapping(value, path, sources):
        if not isinstance(key, str):
            raise sources.error(path + (key,), f"argument names must be strings, got {_describe(key)}")
    return numbers_from_strings(value)


def _integer(minimum: int, maximum: int | None = None, why: str = "") -> Checker:
    """An int (bool is not one) of at least `minimum` and, if given, at most `maximum` (`why` says
    what the bound guards)."""

    def check(value: Any, path: KeyPath, sources: Sources) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise sources.error(path, f"expected an integer, got {_describe(value)}")
        if value < minimum:
            raise sources.error(path, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise sources.error(path, f"must be at most {maximum:,}, got {value:,}{f' ({why})' if why else ''}")
        return value

    return check


def _number(is_allowed: Callable[[float], bool], complaint: str) -> Checker:
    """A float (ints and float literals in strings accepted) passing `is_allowed`; `complaint` is the
    message for one that does not, with {value} in it."""

    def check(value: Any, path: KeyPath, sources: Sources) -> float:
        number = numbers_from_strings(value)
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise sources.error(path, f"expected a number, got {_describe(value)}")
        if not math.isfinite(number):
            raise sources.error(path, f"must be a finite number, got {number}")
        if not is_allowed(float(number)):
            raise sources.error(path, complaint.format(value=number))
        return float(number)

    return check


def _optional(check: Checker) -> Checker:
    """`check`, or null."""
    return lambda value, path, sources: None if value is None else check(value, path, sources)


def _choice(options: Sequence[str], what: str) -> Checker:
    """One of `options`; the error lists them."""

    def check(value: Any, path: KeyPath, sources: Sources) -> str:
        if _string(value, path, sources) not in options:
            raise sources.error(path, f"unknown {what} {value!r}; expected one of: {', '.join(options)}")
        return value

    return check


def _device(value: Any, path: KeyPath, sources: Sources) -> str:
    """One of DEVICES, or `cuda:N` for GPU number N (whether it exists is checked when the run starts)."""
    if _string(value, path, sources) not in DEVICES and not _CUDA_INDEX.fullmatch(value):
        raise sources.error(path, f"unknown device {value!r}; expected one of: {', '.join(DEVICES)}, cuda:N")
    return value


def _list_of(check_item: Checker, non_empty: bool = False, maximum: int | None = None) -> Checker:
    """A list (of at most `maximum` entries, if given) whose entries each pass `check_item`."""

    def check(value: Any, path: KeyPath, sources: Sources) -> list:
        items = _any_list(value, path, sources)
        if non_empty and not items:
            raise sources.error(path, "must not be empty")
        if maximum is not None and len(items) > maximum:
            raise sources.error(path, f"{len(items):,} entries; at most {maximum:,}")
        return [check_item(item, path + (index,), sources) for index, item in enumerate(items)]

    return check


def _section(fields: Mapping[str, Field]) -> Checker:
    """A mapping with exactly the keys of `fields`, defaults filled in."""
    return lambda value, path, sources: _fields(value, path, sources, fields)


def _fields(
    value: Any, path: KeyPath, sources: Sources, fields: Mapping[str, Field], fill_defaults: bool = True
) -> dict:
    """Checks a mapping against `fields`: unknown keys are errors; with `fill_defaults` missing keys
    take their default (and required ones are errors), without it only the given keys are returned."""
    mapping = _mapping(value, path, sources)
    for key in mapping:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise sources.error(path + (key,), f"unknown key{hint}; expected one of: {', '.join(fields)}")
    result = {}
    for key, field in fields.items():
        if key in mapping:
            result[key] = field.check(mapping[key], path + (key,), sources)
        elif not fill_defaults:
            continue
        elif field.default is _REQUIRED:
            raise sources.error(path + (key,), "required key is missing")
        else:
            result[key] = field.check(copy.deepcopy(field.default), path + (key,), sources)
    return result


def _check_order(section: dict, low: str, high: str, path: KeyPath, sources: Sources) -> None:
    if section[low] > section[high]:
        raise sources.error(path + (low,), f"{low} {section[low]} exceeds {high} {section[high]}")


def _check_arguments(target: type, given: Mapping[str, KeyPath], at: KeyPath, sources: Sources, skip: int = 1) -> None:
    """Whether `target(first, **kwargs)` would accept the keyword arguments named in `given` (each
    mapped to the key path that set it): catches misspelt or missing arguments before any run."""
    parameters = list(inspect.signature(target).parameters.values())[skip:]  # by default the first: params/optimizer
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [parameter.name for parameter in parameters if parameter.kind in keyword_kinds]
    for name, path in given.items():
        if name not in names:
            raise sources.error(path, f"{target.__name__} takes no argument {name!r}; it takes: {', '.join(names) or 'none'}")
    missing = [p.name for p in parameters if p.kind in keyword_kinds and p.default is p.empty and p.name not in given]
    if missing:
        raise sources.error(at, f"{target.__name__} needs argument(s): {', '.join(missing)}")


def _subclass_names(module: Any, base: type) -> tuple[str, ...]:
    """Public names in `module` of proper subclasses of `base`."""
    return tuple(
        name
        for name, member in vars(module).items()
        if inspect.isclass(member) and issubclass(member, base) and member is not base and not name.startswith("_")
    )


OPTIMIZERS = _subclass_names(torch.optim, torch.optim.Optimizer)
LR_SCHEDULERS = _subclass_names(lr_scheduler, lr_scheduler.LRScheduler)


# ------------------------------------------------------------------------------------------ sections


def _model_name(value: Any, path: KeyPath, sources: Sources) -> str:
    try:
        parse_model_name(_string(value, path, sources))
    except ValueError as error:
        raise sources.error(path, str(error)) from None
    return value


_POSITIVE = _number(lambda number: number > 0, "must be > 0, got {value}")

TOLERANCE_FIELDS = {"atol": Field(_optional(_POSITIVE), None), "rtol": Field(_optional(_POSITIVE), None)}

NETWORK_FIELDS = {
    "name": Field(_model_name),
    "dataset": Field(_choice(DATASET_NAMES, "dataset")),
    "outputSize": Field(_integer(1)),
    "tolerances": Field(_section(TOLERANCE_FIELDS), {}),
    "maxSteps": Field(_integer(1), DEFAULT_MAX_STEPS),
    "solverBackend": Field(_choice(SOLVER_BACKENDS, "solver backend"), DEFAULT_SOLVER_BACKEND),
}

METRIC_FIELDS = {"type": Field(_choice(tuple(METRICS), "metric")), "kwargs": Field(_kwargs, {})}


def _metric(value: Any, path: KeyPath, sources: Sources) -> dict:
    """One `metricsTest` entry: its kwargs must be the metric's (TopK: `topk`, an integer >= 1)."""
    entry = _fields(value, path, sources, METRIC_FIELDS)
    metric = METRICS[entry["type"]]
    accepted = metric.arguments if metric is not None else tuple(entry["kwargs"])  # Dummy ignores everything
    for name, argument in entry["kwargs"].items():
        if name not in accepted:
            raise sources.error(path + ("kwargs", name), f"{entry['type']} takes no argument {name!r}; "
                                                         f"it takes: {', '.join(accepted) or 'none'}")
        if name == "topk":
            _integer(1)(argument, path + ("kwargs", name), sources)
    return entry

SCHEDULER_FIELDS = {
    "type": Field(_choice(LR_SCHEDULERS, "learning-rate scheduler")),
    "kwargs": Field(_kwargs, {}),
    "stepKwargs": Field(_kwargs, {}),
}


def _lr_scheduler(value: Any, path: KeyPath, sources: Sources) -> dict:
    """One `lrSchedulers` entry; kwargs and stepKwargs together must fit the scheduler's arguments."""
    entry = _fields(value, path, sources, SCHEDULER_FIELDS)
    both = sorted(entry["kwargs"].keys() & entry["stepKwargs"].keys())
    if both:
        raise sources.error(path + ("stepKwargs", both[0]), f"{both[0]!r} is given in both kwargs and stepKwargs")
    given = {name: path + ("kwargs", name) for name in entry["kwargs"]}
    given |= {name: path + ("stepKwargs", name) for name in entry["stepKwargs"]}
    scheduler = getattr(lr_scheduler, entry["type"])
    _check_arguments(scheduler, given, path + ("kwargs",), sources)
    _check_finite(entry["kwargs"], path + ("kwargs",), sources)
    _check_finite(entry["stepKwargs"], path + ("stepKwargs",), sources)
    _check_scheduler_values(scheduler, {**entry["kwargs"], **entry["stepKwargs"]}, path, sources)
    return entry


SCHEDULER_TRIAL_STEPS = 3  # epochs a scheduler is stepped on a dummy optimizer to find bad values


def _check_scheduler_values(scheduler: type, kwargs: dict, path: KeyPath, sources: Sources) -> None:
    """Values the scheduler would only meet in training (StepLR `step_size: 0` divides by zero at the
    first epoch; a `gamma` of 0 or below turns the learning rate to 0 or negative): `gamma` must be
    > 0, and the scheduler must build and step a few epochs on a dummy optimizer."""
    if "gamma" in kwargs and isinstance(kwargs["gamma"], (int, float)) and kwargs["gamma"] <= 0:
        raise sources.error(path + ("kwargs", "gamma"), f"must be > 0, got {kwargs['gamma']}")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        built = scheduler(optimizer, **kwargs)
        for _ in range(SCHEDULER_TRIAL_STEPS):
            optimizer.step()
            built.step(1.0) if isinstance(built, lr_scheduler.ReduceLROnPlateau) else built.step()
    except (TypeError, ValueError, ZeroDivisionError, IndexError, KeyError) as error:
        raise sources.error(path, f"{scheduler.__name__}: {type(error).__name__}: {error}") from None


TRANSFORM_FIELDS = {"type": Field(_choice(TRANSFORM_NAMES, "transform")), "kwargs": Field(_kwargs, {})}


def _transform(value: Any, path: KeyPath, sources: Sources) -> dict:
    """One `transforms*` entry: kwargs must fit the transform's arguments and values."""
    entry = _fields(value, path, sources, TRANSFORM_FIELDS)
    given = {name: path + ("kwargs", name) for name in entry["kwargs"]}
    _check_arguments(TRANSFORMS[entry["type"]], given, path + ("kwargs",), sources, skip=0)
    try:
        TRANSFORMS[entry["type"]](**entry["kwargs"])
    except (TypeError, ValueError) as error:
        raise sources.error(path + ("kwargs",), f"{entry['type']}: {error}") from None
    return entry


TRAINING_FIELDS = {
    "loss": Field(_choice(LOSSES, "loss")),
    "lossKwargs": Field(_kwargs, {}),
    "metricsTest": Field(_list_of(_metric, non_empty=True)),
    "batchSize": Field(_integer(1)),
    "testBatchSize": Field(_optional(_integer(1)), None),  # null: same as batchSize
    "optimizer": Field(_choice(OPTIMIZERS, "optimizer")),
    "optimizerKwargs": Field(_kwargs, {}),
    "numEpochs": Field(_integer(0)),
    "earlyStopEpoch": Field(_optional(_integer(0)), None),
    "lrSchedulers": Field(_list_of(_lr_scheduler), []),
    "transformsTrain": Field(_list_of(_transform), []),
    "transformsTest": Field(_list_of(_transform), []),
    "transformsFinal": Field(_list_of(_transform), []),
    "enableAMP": Field(_boolean, False),
    "startEpoch": Field(_integer(0), 0),
}


def _complete_training(schedule: dict, path: KeyPath, sources: Sources) -> dict:
    """Checks that need several keys of a (re)training schedule, and the batch-size default."""
    if schedule["testBatchSize"] is None:
        schedule["testBatchSize"] = schedule["batchSize"]
    optimizer = getattr(torch.optim, schedule["optimizer"])
    given = {name: path + ("optimizerKwargs", name) for name in schedule["optimizerKwargs"]}
    _check_arguments(optimizer, given, path + ("optimizerKwargs",), sources)
    _check_optimizer_values(optimizer, schedule["optimizerKwargs"], path + ("optimizerKwargs",), sources)
    if schedule["startEpoch"] > schedule["numEpochs"]:
        raise sources.error(
            path + ("startEpoch",), f"startEpoch {schedule['startEpoch']} exceeds numEpochs {schedule['numEpochs']}"
        )
    if schedule["enableAMP"]:
        raise sources.error(path + ("enableAMP",), "mixed precision is not supported: adaptive ODE solvers need float32")
    _check_loss_arguments(schedule["loss"], schedule["lossKwargs"], path + ("lossKwargs",), sources)
    for index, entry in enumerate(schedule["lrSchedulers"]):
        if entry["type"] == "ReduceLROnPlateau" and schedule["startEpoch"] > 0:
            raise sources.error(path + ("lrSchedulers", index, "type"),
                                "ReduceLROnPlateau steps on the validation loss of each epoch, which a schedule that "
                                f"starts at epoch {schedule['startEpoch']} (startEpoch) does not have for its first epochs")
    return schedule


def _check_loss_arguments(loss: str, kwargs: dict, path: KeyPath, sources: Sources) -> None:
    """lossKwargs must be arguments the loss takes (LOSS_ARGUMENTS) with values it accepts (tried on
    a dummy batch of two classes)."""
    for name in kwargs:
        if name not in LOSS_ARGUMENTS[loss]:
            raise sources.error(path + (name,), f"{loss} takes no argument {name!r}; it takes: "
                                                f"{', '.join(LOSS_ARGUMENTS[loss]) or 'none'}")
    _check_finite(kwargs, path, sources)
    if kwargs:
        try:
            value = build_loss(loss, kwargs, 2)(torch.zeros(2, 2), torch.tensor([0, 1]))
        except (TypeError, ValueError, RuntimeError) as error:
            raise sources.error(path, f"{loss}: {str(error).splitlines()[0]}") from None
        if value.ndim != 0:
            raise sources.error(path, f"{loss} with these arguments gives a loss per sample; training needs one "
                                      "number per batch (reduction: mean or sum)")


# Optimizer arguments that are rates, factors or offsets of the update: negative values make no sense.
NON_NEGATIVE_OPTIMIZER_ARGUMENTS = ("lr", "weight_decay", "momentum", "dampening", "eps")


def _check_optimizer_values(optimizer: type, kwargs: dict, path: KeyPath, sources: Sources) -> None:
    """Rejects values the optimizer would only meet when the first model is built, after the run
    folder is written, or never (an infinite `lr` or a NaN `momentum` pass torch's checks and turn the
    weights into NaN): every number must be finite, the arguments in NON_NEGATIVE_OPTIMIZER_ARGUMENTS
    >= 0, and the class must accept the rest (betas in [0, 1), ...) when built on one dummy parameter."""
    for name, value in kwargs.items():
        _check_finite(value, path + (name,), sources)
        if name in NON_NEGATIVE_OPTIMIZER_ARGUMENTS and isinstance(value, (int, float)) and value < 0:
            raise sources.error(path + (name,), f"must be >= 0, got {value}")
    try:
        optimizer([torch.zeros(1, 1, requires_grad=True)], **kwargs)  # 2-D: Muon takes only matrices
    except (TypeError, ValueError) as error:
        raise sources.error(path, f"{optimizer.__name__}: {error}") from None


def _check_finite(value: Any, path: KeyPath, sources: Sources) -> None:
    """Every float in `value` (a number, or lists and mappings of them) is neither infinite nor NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        raise sources.error(path, f"must be a finite number, got {value}")
    if isinstance(value, (list, dict)):
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            _check_finite(item, path + (key,), sources)


def _training(value: Any, path: KeyPath, sources: Sources) -> dict:
    return _complete_training(_fields(value, path, sources, TRAINING_FIELDS), path, sources)


def _retraining_keys(value: Any, path: KeyPath, sources: Sources) -> dict:
    """Only the retraining keys that are given (the rest is inherited from training later)."""
    return _fields(value, path, sources, TRAINING_FIELDS, fill_defaults=False)


_KEEP_RATIO = _number(lambda number: 0 < number <= 1, "keep ratio {value} outside (0, 1]")

_RATIO_COUNT = _integer(1, MAX_KEEP_RATIOS, "keep ratios of one run")

RANGE_SPACING_FIELDS = {
    "type": Field(_choice(SPACING_TYPES, "spacing type")),
    "numIntervals": Field(_RATIO_COUNT),
    "maxVal": Field(_KEEP_RATIO),
    "minVal": Field(_KEEP_RATIO),
}
MANUAL_SPACING_FIELDS = {
    "type": Field(_choice(SPACING_TYPES, "spacing type")),
    "values": Field(_list_of(_KEEP_RATIO, non_empty=True, maximum=MAX_KEEP_RATIOS)),
}


RELATIVE_SPACING_FIELDS = {
    "type": Field(_choice(SPACING_TYPES, "spacing type")),
    "ratio": Field(_number(lambda number: 0 < number < 1, "must lie in (0, 1), got {value}")),
    "maxSteps": Field(_RATIO_COUNT),
}


def _spacing(value: Any, path: KeyPath, sources: Sources) -> dict:
    """One `spacing` entry: a geometric/linear range of keep ratios, a manual list, or relative steps
    (each prunes `ratio` of what is left)."""
    if "type" not in _mapping(value, path, sources):
        raise sources.error(path + ("type",), "required key is missing")
    kind = _choice(SPACING_TYPES, "spacing type")(value["type"], path + ("type",), sources)
    if kind == "manual":
        return _fields(value, path, sources, MANUAL_SPACING_FIELDS)
    if kind == "relative":
        return _fields(value, path, sources, RELATIVE_SPACING_FIELDS)
    entry = _fields(value, path, sources, RANGE_SPACING_FIELDS)
    _check_order(entry, "minVal", "maxVal", path, sources)
    return entry


_UNIT = _number(lambda number: 0 <= number <= 1, "must lie in [0, 1], got {value}")

PLOTTING_FIELDS = {"minVal": Field(_UNIT, 0.02), "maxVal": Field(_UNIT, 0.85)}


def _plotting(value: Any, path: KeyPath, sources: Sources) -> dict:
    plotting = _fields(value, path, sources, PLOTTING_FIELDS)
    _check_order(plotting, "minVal", "maxVal", path, sources)
    return plotting


def _methods(value: Any, path: KeyPath, sources: Sources) -> list:
    methods = _list_of(_choice(METHODS, "method"))(value, path, sources)
    for index, method in enumerate(methods):
        if method in methods[:index]:
            raise sources.error(path + (index,), f"duplicate method {method!r}")
    return methods


STOP_RULE_FIELDS = {
    "tolerance": Field(_number(lambda number: number >= 0, "must be >= 0, got {value}")),
    "reference": Field(_choice(STOP_REFERENCES, "stop-rule reference"), "dense"),
    "measure": Field(_choice(STOP_MEASURES, "stop-rule measure"), "loss"),
    "patience": Field(_integer(0), 0),
}

EXPERIMENT_FIELDS = {
    "methods": Field(_methods, []),
    "mode": Field(_choice(MODES, "mode"), "cascade"),
    "numNets": Field(_integer(1, MAX_NETS, "dense nets of one run"), 1),
    "numRepetitions": Field(_integer(1, MAX_REPETITIONS, "repetitions of one prune chain"), 1),
    "spacing": Field(_list_of(_spacing), []),
    "retrainIterations": Field(_integer(-1), -1),
    "plotting": Field(_plotting, {}),
    "stopRule": Field(_optional(_section(STOP_RULE_FIELDS)), None),
}


def keep_ratio_sequence(spacing: Sequence[Mapping]) -> list[float]:
    """The keep ratios of a validated `experiments.spacing`, its entries concatenated in order:
    geometric → geomspace(maxVal, minVal, numIntervals), linear → linspace(...), manual → values,
    relative → each of maxSteps steps prunes `ratio` of what the previous keep ratio k left:
    k·(1 − ratio), starting from the last ratio before the entry (1 at first)."""
    ratios: list[float] = []
    for entry in spacing:
        if entry["type"] in ("geometric", "linear"):
            space = np.geomspace if entry["type"] == "geometric" else np.linspace
            ratios += space(entry["maxVal"], entry["minVal"], entry["numIntervals"]).tolist()
        elif entry["type"] == "relative":
            start = ratios[-1] if ratios else 1.0
            ratios += [start * (1.0 - entry["ratio"]) ** step for step in range(1, entry["maxSteps"] + 1)]
        else:
            ratios += list(entry["values"])
    return ratios


def _experiments(value: Any, path: KeyPath, sources: Sources) -> dict:
    experiments = _fields(value, path, sources, EXPERIMENT_FIELDS)
    if experiments["mode"] != "train" and experiments["methods"] and not experiments["spacing"]:
        raise sources.error(path + ("spacing",), f"mode {experiments['mode']!r} with methods needs keep ratios")
    counts = [len(entry["values"]) if entry["type"] == "manual" else entry.get("numIntervals", entry.get("maxSteps"))
              for entry in experiments["spacing"]]
    if sum(counts) > MAX_KEEP_RATIOS:
        raise sources.error(path + ("spacing",), f"{sum(counts):,} keep ratios in all; at most {MAX_KEEP_RATIOS:,}")
    if experiments["mode"] == "cascade" and experiments["methods"]:
        ratios = keep_ratio_sequence(experiments["spacing"])
        rising = next((index for index in range(1, len(ratios)) if ratios[index] >= ratios[index - 1]), None)
        if rising is not None:
            raise sources.error(path + ("spacing",), f"keep ratio {ratios[rising]:.4g} (step {rising + 1}) is not below "
                                                     f"the one before it, {ratios[rising - 1]:.4g}: a cascade prunes "
                                                     "further at every step (mode retrain starts each step from dense)")
    return experiments


DIRECTORY_FIELDS = {
    "results": Field(_folder, "./data/results"),
    "training_data": Field(_folder, "./data/training"),
}


def _name(value: Any, path: KeyPath, sources: Sources) -> str:
    """A non-empty string without whitespace (a SLURM partition, account or job name)."""
    if not _string(value, path, sources) or any(character.isspace() for character in value):
        raise sources.error(path, f"expected a non-empty name without spaces, got {value!r}")
    return value


# How `--launcher` submits the jobs as a job array (experiment/launcher.py); not part of the run id.
LAUNCHER_FIELDS = {
    "tasks": Field(_optional(_integer(1)), None),  # null: one per dense net, at most one per unfinished job
    "partition": Field(_optional(_name), None),
    "account": Field(_optional(_name), None),
    "timeMin": Field(_integer(1), 240),
    "timeoutRequeues": Field(_integer(0), 3),
    "gpusPerTask": Field(_optional(_integer(0)), None),  # null: as many as the devices and --gpus-per-job need
    "cpusPerTask": Field(_optional(_integer(1)), None),  # null: --workers x --threads
    "memGb": Field(_optional(_POSITIVE), None),
    "arrayParallelism": Field(_optional(_integer(1)), None),  # null: every task at once
    "jobName": Field(_name, "sparse-flows"),
    "logs": Field(_optional(_folder), None),  # null: {directories.results}/submitit/%j
}

# Safety bounds a config may raise; not part of the run id (experiment/results/tree.py).
LIMIT_FIELDS = {
    "maxParameters": Field(_integer(1), DEFAULT_MAX_PARAMETERS),
}

TOP_FIELDS = {
    "network": Field(_section(NETWORK_FIELDS)),
    "training": Field(_training),
    "retraining": Field(_retraining_keys, {}),
    "experiments": Field(_experiments, {}),
    "directories": Field(_section(DIRECTORY_FIELDS), {}),
    "seed": Field(_integer(0), 0),
    "device": Field(_device, "auto"),
    "tf32": Field(_boolean, False),  # False: full float32 on GPUs, as on the CPU (experiment/process.py set_tf32)
    "launcher": Field(_section(LAUNCHER_FIELDS), {}),
    "limits": Field(_section(LIMIT_FIELDS), {}),
}

# Keys of the original framework's configs (its src/experiment/experiment/param/default.yaml, which it
# merged under every config, and its paper/*/param files) that no model here reads, each with why.
# They are accepted, so such a file loads unchanged, but reported and dropped before validation, so
# they reach neither the resolved config nor the run id (docs/CONFIG.md, "Configs from the original
# framework"). A mapping's whole subtree goes with it.
IGNORED_ORIGINAL_KEYS: dict[KeyPath, str] = {
    ("blacklist",): "the original's keys to skip when it matched a results folder; run ids here cover the whole config",
    ("network_names",): "the original's plot labels for its methods",
    ("network_colors",): "the original's plot colours for its methods",
    ("coresets",): "settings of the original's coreset-based pruning methods (SiPP, PFP, ...), not implemented here",
    ("description",): "free text, never read by the original either",
    ("experiments", "datasetsToEvaluate"): "never read by the original either",
    ("directories", "local_data"): "the original's scratch folder; nothing here writes scratch files",
    ("directories", "trained_networks"): "the original's folder of nets to start from; dense nets are always trained here",
}

# Keys of the original's configs that would change what a run measures: errors, not warnings.
UNSUPPORTED_ORIGINAL_KEYS: dict[KeyPath, str] = {
    ("experiments", "datasetTest"): "a test dataset other than network.dataset; the test metrics here "
                                    "always come from network.dataset",
}


def remove_ignored_original_keys(raw: Any, sources: Sources) -> list[str]:
    """Deletes from `raw` (a plain mapping, before validation) every key of IGNORED_ORIGINAL_KEYS and
    returns one warning ('FILE: KEY: ignored: why') per key deleted; a key of
    UNSUPPORTED_ORIGINAL_KEYS raises ConfigError."""
    for path, reason in UNSUPPORTED_ORIGINAL_KEYS.items():
        if _mapping_holding(raw, path) is not None:
            raise sources.error(path, f"not supported: {reason}")
    warnings = []
    for path, reason in IGNORED_ORIGINAL_KEYS.items():
        mapping = _mapping_holding(raw, path)
        if mapping is not None:
            del mapping[path[-1]]
            warnings.append(sources.warning(path, f"ignored: {reason}"))
    return warnings + _ignore_flow_output_size(raw, sources)


def _ignore_flow_output_size(raw: Any, sources: Sources) -> list[str]:
    """A flow's `network.outputSize` other than its data dimension (the original's image-flow configs
    say 10, a leftover of its classifiers that it never read) is replaced by the data dimension, with
    a warning. Values of the wrong type are left for validation to report."""
    network = raw.get("network") if isinstance(raw, dict) else None
    if not isinstance(network, dict) or network.get("dataset") not in DATASETS or not isinstance(network.get("name"), str):
        return []
    try:
        is_flow = parse_model_name(network["name"]).is_flow
    except ValueError:
        return []
    size, dim = network.get("outputSize"), DATASETS[network["dataset"]].dim
    if not is_flow or not isinstance(size, int) or isinstance(size, bool) or size == dim:
        return []
    network["outputSize"] = dim
    return [sources.warning(("network", "outputSize"), f"{size} ignored: a flow's output is its data dimension, "
                                                       f"{dim} for {network['dataset']}")]


def _mapping_holding(raw: Any, path: KeyPath) -> dict | None:
    """The mapping at path[:-1] in `raw` when it holds the key path[-1]; None otherwise (a wrong
    type on the way is left for validation to report)."""
    node = raw
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) and path[-1] in node else None


def validate_config(raw: Any, sources: Sources) -> dict:
    """The fully resolved config for `raw` (a plain mapping without includes or customizations).
    `retraining` becomes a copy of the resolved `training` with the given keys replaced."""
    config = _fields(raw, (), sources, TOP_FIELDS)
    retraining = copy.deepcopy(config["training"]) | config["retraining"]
    config["retraining"] = _complete_training(retraining, ("retraining",), sources)
    _check_network_fits_data(config, sources)
    _check_solver_backend(config, sources)
    _check_stop_rule(config, sources)
    return config


def _check_solver_backend(config: dict, sources: Sources) -> None:
    """A backend asked for by name must fit the model name: `fused` takes the MLP fields (node_,
    cnf_, ffjord_l{L}_h{H}) with dopri5 and the adjoint; `torchdiffeq` uses the adjoint, which an
    `_autograd` name declines (`backprop` fits every model)."""
    backend, name = config["network"]["solverBackend"], config["network"]["name"]
    spec = parse_model_name(name)
    if backend == "fused" and not (spec.family in ("node", "cnf") and spec.solver == "dopri5" and spec.adjoint):
        raise sources.error(("network", "solverBackend"), f"the fused solver takes MLP fields with dopri5 and the "
                                                          f"adjoint (node_, cnf_, ffjord_l{{L}}_h{{H}} with _da); {name} is not one")
    if backend == "torchdiffeq" and not spec.adjoint:
        raise sources.error(("network", "solverBackend"), f"{name} asks for backpropagation through the solver "
                                                          "(_autograd); torchdiffeq would use the adjoint: use backprop")


def _check_stop_rule(config: dict, sources: Sources) -> None:
    """A stop rule judging by validation error needs a classifier whose first metric is a top-k accuracy."""
    rule = config["experiments"]["stopRule"]
    if rule is None or rule["measure"] != "error":
        return
    first = [spec["type"] for spec in config["retraining"]["metricsTest"] if spec["type"] != "Dummy"][:1]
    if first != ["TopK"]:
        raise sources.error(("experiments", "stopRule", "measure"),
                            f"'error' needs a classifier whose first test metric is TopK (got {first or 'none'}); use 'loss'")


def _check_network_fits_data(config: dict, sources: Sources) -> None:
    """Network, dataset and losses must agree: image flows need image data and vector models vector
    data; a flow's outputSize is the data dimension (C·H·W for images), a classifier's the number of
    classes (and a node_ classifier's input dimension too)."""
    network = config["network"]
    data = DATASETS[network["dataset"]]
    spec = parse_model_name(network["name"])
    if (spec.family == "multiscale") != (data.image_shape is not None):
        kind = "images" if spec.family == "multiscale" else "vectors"
        raise sources.error(("network", "dataset"), f"{network['name']} models {kind}; {network['dataset']} does not hold {kind}")
    is_flow = spec.is_flow
    expected, what = (data.dim, "data dimension") if is_flow else (data.num_classes, "number of classes")
    if network["outputSize"] != expected:
        raise sources.error(("network", "outputSize"),
                            f"{network['outputSize']} does not match the {what} {expected} of {network['dataset']}")
    if not is_flow and data.dim != data.num_classes:
        raise sources.error(("network", "name"), f"a node_ classifier needs input dimension = number of classes; "
                                                 f"{network['dataset']} has {data.dim} and {data.num_classes}")
    for section in ("training", "retraining"):
        loss = config[section]["loss"]
        if (loss in FLOW_LOSSES) != is_flow:
            raise sources.error((section, "loss"), f"{loss} does not fit {'a flow' if is_flow else 'a classifier'} ({network['name']})")
        for index, spec in enumerate(config[section]["metricsTest"]):
            metric = METRICS[spec["type"]]
            if metric is not None and metric.for_flows != is_flow:
                raise sources.error((section, "metricsTest", index, "type"),
                                    f"{spec['type']} does not fit {'a flow' if is_flow else 'a classifier'} ({network['name']})")
            topk = spec["kwargs"].get("topk", 1)
            if spec["type"] == "TopK" and topk >= data.num_classes:
                raise sources.error((section, "metricsTest", index, "kwargs", "topk"),
                                    f"the top {topk} of {data.num_classes} classes ({network['dataset']}) always hold the "
                                    f"label; topk must be below {data.num_classes}")
