"""Tests for experiment.config: includes, customizations, overrides, defaults and malformed configs."""

from __future__ import annotations

import copy
import json
import pickle
import time
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from conftest import REPO
from experiment.config import ConfigError, load_configs, recorded_settings, settings_of
from experiment.config.schema import IGNORED_ORIGINAL_KEYS, UNSUPPORTED_ORIGINAL_KEYS, format_key_path
from experiment.config.settings import (LRSchedulerSpec, ManualSpacing, NetworkSettings, PlottedKeepRatios, RangeSpacing,
                                       RelativeSpacing)
from experiment.main import main
from experiment.stopping import StopRule
from experiment.results import run_folder, run_id

VALID: dict[str, Any] = {
    "network": {"name": "node_l2_h64_tanh_da", "dataset": "ToyMoons", "outputSize": 2},
    "training": {
        "loss": "CrossEntropyLoss",
        "metricsTest": [{"type": "TopK", "kwargs": {"topk": 1}}, {"type": "MCorr"}],
        "batchSize": 128,
        "optimizer": "Adam",
        "optimizerKwargs": {"lr": 0.01, "weight_decay": 1.0e-4},
        "numEpochs": 50,
        "lrSchedulers": [{"type": "MultiStepLR", "stepKwargs": {"milestones": [40, 45]}, "kwargs": {"gamma": 0.1}}],
    },
    "experiments": {
        "methods": ["ThresNet", "FilterThresNet"],
        "spacing": [{"type": "geometric", "numIntervals": 3, "maxVal": 0.8, "minVal": 0.2}],
    },
}

VALID_TEXT = yaml.safe_dump(VALID, sort_keys=False)  # for faults that only YAML text can hold


def config_with(changes: dict[str, Any]) -> dict[str, Any]:
    """VALID with `changes` ({'a.b.c': value}) applied; a value of `...` deletes the key."""
    config = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        mapping = config
        for key in parents:
            mapping = mapping.setdefault(key, {})
        if value is ...:
            del mapping[last]
        else:
            mapping[last] = value
    return config


def ratio_range(kind: str, max_val: float, min_val: float) -> dict[str, Any]:
    """A geometric/linear `spacing` entry of two keep ratios."""
    return {"type": kind, "numIntervals": 2, "maxVal": max_val, "minVal": min_val}


def write(folder: Path, name: str, content: dict | str) -> Path:
    """Writes a YAML file (a dict is dumped, a string written as is) and returns its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def load_one(path: Path, overrides: tuple[str, ...] = ()) -> dict:
    (config,) = load_configs(path, overrides)
    return config


# ------------------------------------------------------------------------------------- valid configs


def test_defaults_are_filled(tmp_path: Path) -> None:
    config = load_one(write(tmp_path, "main.yaml", VALID))
    assert config["network"]["tolerances"] == {"atol": None, "rtol": None}
    training = config["training"]
    assert training["testBatchSize"] == 128
    assert training["lossKwargs"] == {} and training["earlyStopEpoch"] is None
    assert training["metricsTest"][1] == {"type": "MCorr", "kwargs": {}}
    assert training["lrSchedulers"][0]["stepKwargs"] == {"milestones": [40, 45]}
    assert training["transformsTrain"] == training["transformsTest"] == training["transformsFinal"] == []
    assert training["enableAMP"] is False and training["startEpoch"] == 0
    experiments = config["experiments"]
    assert experiments["mode"] == "cascade"
    assert (experiments["numNets"], experiments["numRepetitions"], experiments["retrainIterations"]) == (1, 1, -1)
    assert experiments["plotting"] == {"minVal": 0.02, "maxVal": 0.85}
    assert experiments["spacing"][0]["maxVal"] == 0.8
    assert config["directories"] == {
        "results": "./data/results",
        "training_data": "./data/training",
    }
    assert (config["seed"], config["device"], config["tf32"]) == (0, "auto", False)
    assert config["retraining"] == training


def test_resolved_config_is_plain_and_serialisable(tmp_path: Path) -> None:
    write(tmp_path, "training.yaml", VALID["training"])
    config = load_one(write(tmp_path, "main.yaml", config_with({"training": {"file": "training.yaml"}})))
    assert json.loads(json.dumps(config)) == config
    assert "file" not in json.dumps(config)


def test_retraining_inherits_training_and_replaces_given_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "main.yaml",
        config_with({"retraining": {"numEpochs": 30, "optimizerKwargs": {"lr": 0.5}, "startEpoch": 0}}),
    )
    config = load_one(path)
    retraining, training = config["retraining"], config["training"]
    assert retraining["numEpochs"] == 30 and training["numEpochs"] == 50
    assert retraining["optimizerKwargs"] == {"lr": 0.5}
    assert retraining["optimizer"] == "Adam" and retraining["metricsTest"] == training["metricsTest"]
    assert retraining["lrSchedulers"] == training["lrSchedulers"]
    assert retraining["lrSchedulers"] is not training["lrSchedulers"]


def test_settings_are_the_resolved_config_typed(tmp_path: Path) -> None:
    config = load_one(write(tmp_path, "main.yaml", config_with({
        "retraining": {"numEpochs": 30}, "experiments.stopRule": {"tolerance": 0.5},
        "experiments.spacing": [ratio_range("linear", 0.8, 0.2), {"type": "manual", "values": [0.1]},
                                {"type": "relative", "ratio": 0.5, "maxSteps": 2}]})))
    settings = settings_of(config)
    assert settings.network == NetworkSettings(name="node_l2_h64_tanh_da", dataset="ToyMoons", output_size=2,
                                               atol=None, rtol=None, max_steps=config["network"]["maxSteps"],
                                               solver_backend="auto")
    assert (settings.training.num_epochs, settings.retraining.num_epochs) == (50, 30)
    assert settings.training.test_batch_size == 128 and settings.training.optimizer_kwargs == {"lr": 0.01, "weight_decay": 1.0e-4}
    assert settings.training.lr_schedulers == (LRSchedulerSpec("MultiStepLR", {"gamma": 0.1}, {"milestones": [40, 45]}),)
    assert settings.experiments.spacing == (RangeSpacing("linear", 2, 0.8, 0.2), ManualSpacing((0.1,)), RelativeSpacing(0.5, 2))
    assert settings.experiments.stop_rule == StopRule(tolerance=0.5)
    assert settings.experiments.plotting == PlottedKeepRatios(min_val=0.02, max_val=0.85)
    assert (settings.seed, settings.device, settings.tf32, settings.directories.results) == (0, "auto", False, "./data/results")
    with pytest.raises(FrozenInstanceError):
        settings.training.num_epochs = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(settings)) == settings  # settings travel to worker processes with their plans


def test_recorded_settings_fill_keys_added_since_and_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run's config.yaml from before a key existed reads with the key's default, one with a key
    dropped since reads without it; a bad value names the file."""
    recorded = load_one(write(tmp_path, "main.yaml", VALID))
    del recorded["network"]["maxSteps"], recorded["tf32"]
    settings = recorded_settings(recorded, "run/config.yaml")
    assert settings.network.max_steps == settings_of(load_one(tmp_path / "main.yaml")).network.max_steps
    assert settings.tf32 is False
    # keys dropped since (run folders made before recorded the original's scratch folders): no error, no warning
    recorded["directories"].update({"local_data": "./local", "trained_networks": None})
    assert recorded_settings(recorded, "run/config.yaml").directories == settings.directories
    assert capsys.readouterr().err == ""
    recorded["training"]["batchSize"] = 0
    with pytest.raises(ConfigError) as error:
        recorded_settings(recorded, "run/config.yaml")
    assert (error.value.file, error.value.key) == ("run/config.yaml", "training.batchSize")


def test_include_inside_a_section_resolves_relative_to_including_file(tmp_path: Path) -> None:
    write(tmp_path, "sub/training.yaml", VALID["training"])
    path = write(tmp_path, "sub/main.yaml", config_with({"training": {"file": "training.yaml", "numEpochs": 7}}))
    training = load_one(path)["training"]
    assert training["numEpochs"] == 7 and training["optimizer"] == "Adam"


def test_include_falls_back_to_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "param/shared/network.yaml", VALID["network"])
    path = write(tmp_path, "param/toy/main.yaml", config_with({"network": {"file": "param/shared/network.yaml"}}))
    monkeypatch.chdir(tmp_path)
    assert load_one(path)["network"]["name"] == "node_l2_h64_tanh_da"


def test_include_merges_recursively_current_file_wins_and_replaces_lists(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", VALID)
    path = write(
        tmp_path,
        "main.yaml",
        {
            "file": "base.yaml",
            "training": {"optimizerKwargs": {"lr": 0.2}, "metricsTest": [{"type": "Dummy"}]},
            "experiments": {"methods": ["ThresNet"]},
        },
    )
    config = load_one(path)
    assert config["training"]["optimizerKwargs"] == {"lr": 0.2, "weight_decay": 1.0e-4}
    assert config["training"]["metricsTest"] == [{"type": "Dummy", "kwargs": {}}]
    assert config["experiments"]["methods"] == ["ThresNet"]
    assert config["training"]["batchSize"] == 128


def test_nested_includes(tmp_path: Path) -> None:
    write(tmp_path, "a/network.yaml", VALID["network"])
    write(tmp_path, "a/base.yaml", config_with({"network": {"file": "network.yaml", "dataset": "ToyConcentric"}}))
    path = write(tmp_path, "main.yaml", {"file": "a/base.yaml", "seed": 4})
    config = load_one(path)
    assert (config["network"]["name"], config["network"]["dataset"], config["seed"]) == ("node_l2_h64_tanh_da", "ToyConcentric", 4)


def test_customizations_give_one_config_per_entry(tmp_path: Path) -> None:
    names = ["node_l2_h3_tanh_da", "node_l2_h32_tanh_da", "node_l2_h128_tanh_da"]
    customizations = [{"key": ["network", "name"], "value": name} for name in names]
    customizations.append({"key": ["training", "lossKwargs", "label_smoothing"], "value": 0.1})
    configs = load_configs(write(tmp_path, "sweep.yaml", {**VALID, "customizations": customizations}))
    assert [config["network"]["name"] for config in configs] == [*names, "node_l2_h64_tanh_da"]
    assert configs[3]["training"]["lossKwargs"] == {"label_smoothing": 0.1}
    assert all("customizations" not in config for config in configs)


def test_overrides_apply_to_every_config_and_parse_yaml(tmp_path: Path) -> None:
    customizations = [{"key": ["seed"], "value": seed} for seed in (1, 2)]
    path = write(tmp_path, "sweep.yaml", {**VALID, "customizations": customizations})
    configs = load_configs(path, ["training.numEpochs=2", "experiments.methods=[ThresNet]", "device=cpu"])
    assert [config["seed"] for config in configs] == [1, 2]
    for config in configs:
        assert config["training"]["numEpochs"] == 2 and config["retraining"]["numEpochs"] == 2
        assert config["experiments"]["methods"] == ["ThresNet"]
        assert config["device"] == "cpu"


def test_grid_customization_is_the_product_of_its_value_lists(tmp_path: Path) -> None:
    grid = {"training.optimizerKwargs.lr": [0.01, 0.05], "training.optimizerKwargs.weight_decay": [0.0, 1e-4, 1e-3]}
    customizations = [{"grid": grid}, {"key": ["seed"], "value": 7}]
    configs = load_configs(write(tmp_path, "sweep.yaml", {**VALID, "customizations": customizations}))
    pairs = [(config["training"]["optimizerKwargs"]["lr"], config["training"]["optimizerKwargs"]["weight_decay"]) for config in configs]
    assert pairs == [(0.01, 0.0), (0.01, 1e-4), (0.01, 1e-3), (0.05, 0.0), (0.05, 1e-4), (0.05, 1e-3), (0.01, 1e-4)]
    assert [config["seed"] for config in configs] == [0] * 6 + [7]
    assert len({run_folder(config) for config in configs}) == 7


def test_comma_separated_overrides_give_one_config_per_combination(tmp_path: Path) -> None:
    customizations = [{"key": ["seed"], "value": seed} for seed in (1, 2)]
    path = write(tmp_path, "sweep.yaml", {**VALID, "customizations": customizations})
    configs = load_configs(path, ["training.optimizerKwargs.lr=0.01,0.05", "experiments.methods=[ThresNet, FilterThresNet]",
                                  "training.numEpochs=2,3,4"])
    combinations = [(config["seed"], config["training"]["optimizerKwargs"]["lr"], config["training"]["numEpochs"]) for config in configs]
    assert combinations == [(seed, lr, epochs) for seed in (1, 2) for lr in (0.01, 0.05) for epochs in (2, 3, 4)]
    assert all(config["experiments"]["methods"] == ["ThresNet", "FilterThresNet"] for config in configs)  # commas in brackets
    assert len({run_folder(config) for config in configs}) == 12
    quoted = load_one(write(tmp_path, "one.yaml", VALID), ("launcher.logs='a,b'",))
    assert quoted["launcher"]["logs"] == "a,b"


def test_float_literals_left_as_strings_become_numbers(tmp_path: Path) -> None:
    text = yaml.safe_dump(VALID).replace("weight_decay: 0.0001", "weight_decay: 5e-3")
    assert "5e-3" in text
    path = write(tmp_path, "main.yaml", text)
    config = load_one(path, ["experiments.spacing=[{type: manual, values: [1, 5e-1]}]", "network.tolerances.atol=1e-6"])
    assert config["training"]["optimizerKwargs"]["weight_decay"] == 5e-3
    assert config["experiments"]["spacing"][0]["values"] == [1.0, 0.5]
    assert config["network"]["tolerances"]["atol"] == 1e-6


# ---------------------------------------------------------------------------------- malformed configs


class Bad(NamedTuple):
    """A malformed config: files to write (main.yaml is loaded), overrides, and the expected error."""

    files: dict[str, dict | str]
    file: str  # basename of the file the error must name ("command line" for overrides)
    key: str
    fragment: str  # a piece of the message
    overrides: tuple[str, ...] = ()


BAD_CONFIGS = {
    "outputSize not the number of classes": Bad(
        {"main.yaml": config_with({"network.outputSize": 3})}, "main.yaml", "network.outputSize", "number of classes 2"
    ),
    "flow loss for a classifier": Bad(
        {"main.yaml": config_with({"retraining": {"loss": "NLLPriorLoss"}})}, "main.yaml", "retraining.loss", "classifier"
    ),
    "enableAMP": Bad(
        {"main.yaml": config_with({"training.enableAMP": True})}, "main.yaml", "training.enableAMP", "not supported"
    ),
    "unknown top-level key": Bad({"main.yaml": config_with({"bogus": 1})}, "main.yaml", "bogus", "unknown key"),
    "unknown nested key": Bad(
        {"main.yaml": config_with({"training.optimizerKwarg": {}})},
        "main.yaml",
        "training.optimizerKwarg",
        "did you mean 'optimizerKwargs'",
    ),
    "string for int": Bad(
        {"main.yaml": config_with({"training.batchSize": "many"})}, "main.yaml", "training.batchSize", "integer"
    ),
    "bool for int": Bad(
        {"main.yaml": config_with({"training.numEpochs": True})}, "main.yaml", "training.numEpochs", "integer"
    ),
    "float for int": Bad(
        {"main.yaml": config_with({"experiments.numNets": 2.0})}, "main.yaml", "experiments.numNets", "integer"
    ),
    "missing required key": Bad(
        {"main.yaml": config_with({"network.dataset": ...})}, "main.yaml", "network.dataset", "missing"
    ),
    "missing include": Bad(
        {"main.yaml": config_with({"training": {"file": "nowhere.yaml"}})},
        "main.yaml",
        "training.file",
        "nowhere.yaml",
    ),
    "include cycle": Bad(
        {"main.yaml": {"file": "a.yaml"}, "a.yaml": {"file": "b.yaml"}, "b.yaml": {"file": "a.yaml"}},
        "b.yaml",
        "file",
        "include cycle",
    ),
    "bad value in included file": Bad(
        {
            "main.yaml": config_with({"training": {"file": "sub/training.yaml"}}),
            "sub/training.yaml": {**VALID["training"], "numEpochs": -3},
        },
        "training.yaml",
        "training.numEpochs",
        "at least 0",
    ),
    "unknown model name": Bad(
        {"main.yaml": config_with({"network.name": "resnet18"})}, "main.yaml", "network.name", "unknown model name"
    ),
    "unknown activation": Bad(
        {"main.yaml": config_with({"network.name": "node_l2_h64_gelu_da"})}, "main.yaml", "network.name", "activation"
    ),
    "unknown dataset": Bad(
        {"main.yaml": config_with({"network.dataset": "ToyBananas"})}, "main.yaml", "network.dataset", "ToyMoons"
    ),
    "negative numEpochs": Bad(
        {"main.yaml": config_with({"training.numEpochs": -1})}, "main.yaml", "training.numEpochs", "at least 0"
    ),
    "keep ratio above 1": Bad(
        {"main.yaml": config_with({"experiments.spacing": [ratio_range("linear", 1.5, 0.5)]})},
        "main.yaml",
        "experiments.spacing[0].maxVal",
        "outside (0, 1]",
    ),
    "keep ratio 0": Bad(
        {"main.yaml": config_with({"experiments.spacing": [ratio_range("linear", 1, r) for r in (0.5, 0)]})},
        "main.yaml",
        "experiments.spacing[1].minVal",
        "outside (0, 1]",
    ),
    "minVal above maxVal": Bad(
        {"main.yaml": config_with({"experiments.spacing": [ratio_range("linear", 0.2, 0.5)]})},
        "main.yaml",
        "experiments.spacing[0].minVal",
        "exceeds maxVal",
    ),
    "cascade without spacing": Bad(
        {"main.yaml": config_with({"experiments.spacing": []})}, "main.yaml", "experiments.spacing", "keep ratios"
    ),
    "unknown optimizer": Bad(
        {"main.yaml": config_with({"training.optimizer": "Adamm"})}, "main.yaml", "training.optimizer", "AdamW"
    ),
    "unknown optimizer argument": Bad(
        {"main.yaml": config_with({"training.optimizerKwargs": {"learning_rate": 0.1}})},
        "main.yaml",
        "training.optimizerKwargs.learning_rate",
        "takes no argument",
    ),
    "unknown scheduler": Bad(
        {"main.yaml": config_with({"training.lrSchedulers": [{"type": "StepLRR"}]})},
        "main.yaml",
        "training.lrSchedulers[0].type",
        "unknown learning-rate scheduler",
    ),
    "scheduler missing argument": Bad(
        {"main.yaml": config_with({"training.lrSchedulers": [{"type": "MultiStepLR"}]})},
        "main.yaml",
        "training.lrSchedulers[0].kwargs",
        "milestones",
    ),
    "unknown loss": Bad(
        {"main.yaml": config_with({"training.loss": "L2"})}, "main.yaml", "training.loss", "unknown loss"
    ),
    "unknown metric": Bad(
        {"main.yaml": config_with({"training.metricsTest": [{"type": "Top5"}]})},
        "main.yaml",
        "training.metricsTest[0].type",
        "unknown metric",
    ),
    "empty metricsTest": Bad(
        {"main.yaml": config_with({"training.metricsTest": []})}, "main.yaml", "training.metricsTest", "empty"
    ),
    "unknown method": Bad(
        {"main.yaml": config_with({"experiments.methods": ["ThresNet", "SiPP"]})},
        "main.yaml",
        "experiments.methods[1]",
        "unknown method",
    ),
    "duplicate method": Bad(
        {"main.yaml": config_with({"experiments.methods": ["ThresNet", "ThresNet"]})},
        "main.yaml",
        "experiments.methods[1]",
        "duplicate",
    ),
    "bad mode": Bad(
        {"main.yaml": config_with({"experiments.mode": "oneshot"})}, "main.yaml", "experiments.mode", "unknown mode"
    ),
    "batchSize 0": Bad(
        {"main.yaml": config_with({"training.batchSize": 0})}, "main.yaml", "training.batchSize", "at least 1"
    ),
    "startEpoch beyond numEpochs": Bad(
        {"main.yaml": config_with({"retraining": {"startEpoch": 60}})},
        "main.yaml",
        "retraining.startEpoch",
        "exceeds numEpochs",
    ),
    "bad retraining key in included file": Bad(
        {"main.yaml": config_with({"retraining": {"file": "re.yaml"}}), "re.yaml": {"enableAMP": "yes"}},
        "re.yaml",
        "retraining.enableAMP",
        "true or false",
    ),
    "malformed override": Bad(
        {"main.yaml": VALID}, "command line", "training.numEpochs", "malformed override", ("training.numEpochs",)
    ),
    "bad override value": Bad(
        {"main.yaml": VALID}, "command line", "training.numEpochs", "integer", ("training.numEpochs=lots",)
    ),
    "bad customization value": Bad(
        {
            "main.yaml": {"file": "base.yaml", "customizations": [{"key": ["seed"], "value": s} for s in (1, "x")]},
            "base.yaml": VALID,
        },
        "main.yaml",
        "seed",
        "made by customizations[1]",
    ),
    "customization without key": Bad(
        {"main.yaml": {**VALID, "customizations": [{"value": 1}]}}, "main.yaml", "customizations[0].key", "missing"
    ),
    "bad value in a grid": Bad(
        {"main.yaml": {**VALID, "customizations": [{"grid": {"seed": [1, 2], "training.numEpochs": [3, "x"]}}]}},
        "main.yaml",
        "training.numEpochs",
        "made by customizations[0] (seed=1, training.numEpochs='x')",
    ),
    "grid values not a list": Bad(
        {"main.yaml": {**VALID, "customizations": [{"grid": {"seed": 1}}]}}, "main.yaml", "customizations[0].grid.seed", "non-empty list"
    ),
    "grid entry with another key": Bad(
        {"main.yaml": {**VALID, "customizations": [{"grid": {"seed": [1]}, "value": 2}]}},
        "main.yaml",
        "customizations[0].value",
        "only 'grid'",
    ),
    "bad value in a comma-separated override": Bad(
        {"main.yaml": VALID}, "command line", "training.numEpochs", "made by training.numEpochs=lots", ("training.numEpochs=2,lots",)
    ),
    "empty value in a comma-separated override": Bad(
        {"main.yaml": VALID}, "command line", "training.numEpochs", "empty value", ("training.numEpochs=2,",)
    ),
    "yaml syntax error": Bad({"main.yaml": "network: {name: [\n"}, "main.yaml", "<root>", "line"),
    "non-mapping top level": Bad({"main.yaml": "- just\n- a list\n"}, "main.yaml", "<root>", "mapping"),
    "bad device": Bad({"main.yaml": config_with({"device": "tpu"})}, "main.yaml", "device", "unknown device"),
    "tf32 not a boolean": Bad({"main.yaml": config_with({"tf32": "yes"})}, "main.yaml", "tf32", "expected true or false"),
    "negative lr": Bad(
        {"main.yaml": config_with({"training.optimizerKwargs.lr": -1})},
        "main.yaml",
        "training.optimizerKwargs.lr",
        ">= 0",
    ),
    "NaN lr": Bad(
        {"main.yaml": config_with({"training.optimizerKwargs.lr": float("nan")})},
        "main.yaml",
        "training.optimizerKwargs.lr",
        "finite number, got nan",
    ),
    "infinite lr": Bad(
        {"main.yaml": config_with({"training.optimizerKwargs.lr": float("inf")})},
        "main.yaml",
        "training.optimizerKwargs.lr",
        "finite number, got inf",
    ),
    "negative retraining lr": Bad(
        {"main.yaml": config_with({"retraining": {"optimizerKwargs": {"lr": -1}}})},
        "main.yaml",
        "retraining.optimizerKwargs.lr",
        ">= 0",
    ),
    "NaN retraining lr from the command line": Bad(
        {"main.yaml": VALID},
        "command line",
        "retraining.optimizerKwargs.lr",
        "finite",
        ("retraining.optimizerKwargs.lr=.nan",),
    ),
    "negative weight_decay": Bad(
        {"main.yaml": config_with({"training.optimizerKwargs.weight_decay": -1e-4})},
        "main.yaml",
        "training.optimizerKwargs.weight_decay",
        ">= 0",
    ),
    "NaN momentum": Bad(
        {"main.yaml": config_with({"training.optimizer": "SGD", "training.optimizerKwargs.momentum": float("nan")})},
        "main.yaml",
        "training.optimizerKwargs.momentum",
        "finite",
    ),
    "infinite beta": Bad(
        {"main.yaml": config_with({"training.optimizerKwargs.betas": [0.9, float("inf")]})},
        "main.yaml",
        "training.optimizerKwargs.betas[1]",
        "finite",
    ),
    "beta the optimizer rejects": Bad(
        {"main.yaml": config_with({"training.optimizerKwargs.betas": [1.5, 0.999]})},
        "main.yaml",
        "training.optimizerKwargs",
        "Adam: Invalid beta parameter",
    ),
    "infinite tolerance": Bad(
        {"main.yaml": config_with({"network.tolerances": {"atol": float("inf")}})},
        "main.yaml",
        "network.tolerances.atol",
        "finite",
    ),
    "key repeated in a mapping": Bad(
        {"main.yaml": VALID_TEXT.replace("    lr: 0.01\n", "    lr: 0.01\n    lr: 0.5\n")},
        "main.yaml",
        "training.optimizerKwargs.lr",
        "given twice in one mapping, at line 15, column 5 and line 16, column 5",
    ),
    "key repeated in a flow mapping in a list": Bad(
        {"main.yaml": VALID_TEXT.replace("  - type: MCorr", "  - {type: MCorr, type: TopK}")},
        "main.yaml",
        "training.metricsTest[1].type",
        "line 11, column 6 and line 11, column 19",
    ),
    "key repeated in an included file": Bad(
        {"main.yaml": {"file": "base.yaml"}, "base.yaml": VALID_TEXT + "seed: 1\nseed: 2\n"},
        "base.yaml",
        "seed",
        "given twice",
    ),
    "key repeated in an override value": Bad(
        {"main.yaml": VALID},
        "command line",
        "network.tolerances",
        "given twice",
        ("network.tolerances={atol: 1, atol: 2}",),
    ),
    "nested too deep": Bad(
        {"main.yaml": VALID_TEXT + "x: " + "[" * 60 + "]" * 60 + "\n"}, "main.yaml", "<root>", "more than 50 levels"
    ),
    "nested too deep through aliases": Bad(
        {"main.yaml": VALID_TEXT + "x: &x " + "[" * 30 + "1" + "]" * 30 + "\ny: " + "[" * 30 + "*x" + "]" * 30 + "\n"},
        "main.yaml",
        "<root>",
        "more than 50 levels",
    ),
    "nested too deep for the YAML parser": Bad(
        {"main.yaml": "seed: " + "[" * 5000 + "]" * 5000 + "\n"}, "main.yaml", "<root>", "nested too deeply to parse"
    ),
    "alias inside its own anchor": Bad(
        {"main.yaml": VALID_TEXT + "loop: &loop [1, *loop]\n"}, "main.yaml", "<root>", "itself"
    ),
    "the original's separate test dataset": Bad(
        {"main.yaml": config_with({"experiments.datasetTest": "ToyMoons"})},
        "main.yaml",
        "experiments.datasetTest",
        "not supported: a test dataset other than network.dataset",
    ),
    "misspelt original key (a typo, not ignored)": Bad(
        {"main.yaml": config_with({"coreset": {"deltaS": 1.0e-16}})}, "main.yaml", "coreset", "unknown key"
    ),
    "original key in the wrong section": Bad(
        {"main.yaml": config_with({"training.coresets": {"deltaS": 1.0e-16}})},
        "main.yaml",
        "training.coresets",
        "unknown key",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_malformed_config_names_file_and_key(case: Bad, tmp_path: Path) -> None:
    for name, content in case.files.items():
        write(tmp_path, name, content)
    with pytest.raises(ConfigError) as caught:
        load_configs(tmp_path / "main.yaml", case.overrides)
    error = caught.value
    assert Path(error.file).name == case.file
    assert error.key == case.key
    assert case.fragment in error.message
    assert str(error) == f"{error.file}: {error.key}: {error.message}"


def test_missing_include_names_tried_path(tmp_path: Path) -> None:
    path = write(tmp_path, "main.yaml", config_with({"training": {"file": "nowhere.yaml"}}))
    with pytest.raises(ConfigError, match=r"nowhere\.yaml") as caught:
        load_configs(path)
    assert str(tmp_path / "nowhere.yaml") in caught.value.message


def test_config_error_is_a_picklable_value_error() -> None:
    error = pickle.loads(pickle.dumps(ConfigError("a.yaml", "training.lr", "bad")))
    assert isinstance(error, ValueError)
    assert str(error) == "a.yaml: training.lr: bad"


def test_bad_config_writes_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    config = config_with({"directories": {"results": str(results)}, "training.numEpochs": -1})
    with pytest.raises(ConfigError):
        load_configs(write(tmp_path, "main.yaml", config))
    assert not results.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["main.yaml"]



def test_anchors_aliases_and_merge_keys_still_load(tmp_path: Path) -> None:
    """The repeated-key and alias checks leave ordinary YAML sharing alone: an alias used twice, and
    `<<: *base` followed by a key of base, which overrides it."""
    text = """
network: {name: node_l2_h64_tanh_da, dataset: ToyMoons, outputSize: 2}
training:
  loss: CrossEntropyLoss
  metricsTest: &metrics [{type: TopK, kwargs: {topk: 1}}]
  batchSize: 128
  optimizer: Adam
  optimizerKwargs: &adam {lr: 0.01, weight_decay: 1.0e-4}
  numEpochs: 5
retraining:
  metricsTest: *metrics
  optimizerKwargs:
    <<: *adam
    lr: 0.5
experiments: {mode: train}
"""
    config = load_one(write(tmp_path, "main.yaml", text))
    assert config["retraining"]["optimizerKwargs"] == {"lr": 0.5, "weight_decay": 1.0e-4}
    assert config["retraining"]["metricsTest"] == config["training"]["metricsTest"]


def alias_bomb(levels: int) -> str:
    """YAML of a few hundred bytes whose last list expands, alias by alias, to 10**levels values."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]" for level in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """10**8 values in 600 bytes: refused from the composed (shared) nodes, before any is copied."""
    path = write(tmp_path, "main.yaml", VALID_TEXT + alias_bomb(8))
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_configs(path)
    assert time.perf_counter() - started < 0.5
    assert (caught.value.file, caught.value.key) == (str(path), "<root>")
    assert "stands for more than 100000 nodes once its aliases are copied out" in str(caught.value)


def test_alias_bomb_in_an_override_is_refused(tmp_path: Path) -> None:
    bomb = "{" + alias_bomb(8).replace("\n", ", ").rstrip(", ") + "}"
    with pytest.raises(ConfigError, match="command line: training.lossKwargs: the node at .* stands for more than 100000"):
        load_configs(write(tmp_path, "main.yaml", VALID), [f"training.lossKwargs={bomb}"])


# ------------------------------------------------------------------ configs from the original framework

# The original's keys that mean nothing here, where its configs put them: default.yaml (merged under
# every config) held blacklist, network_names, network_colors and coresets; paper/pfp/param/mnist/
# lenet300_100.yaml has description and experiments.datasetsToEvaluate.
ORIGINAL_DEFAULTS = {
    "blacklist": ["methods", "numRepetitions", "numNets", "directories", "plotting"],
    "coresets": {"deltaS": 1.0e-16, "deltaBest": 1.0e-11, "sizeOfT": 0.1},
    "network_names": {"ThresNet": "WT", "FilterThresNet": "FT"},
    "network_colors": {"ThresNet": "red", "FilterThresNet": "lawngreen"},
}
ORIGINAL_SWEEP = {
    "file": "default.yaml",
    **config_with({"description": "node on moons", "experiments.datasetsToEvaluate": ["ToyMoons"]}),
    "customizations": [
        {"key": ["network", "name"], "value": "node_l2_h32_tanh_da"},
        {"key": ["network", "name"], "value": "node_l2_h64_tanh_da"},
    ],
}
PLAIN_SWEEP = {**VALID, "customizations": ORIGINAL_SWEEP["customizations"]}


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("config warning: ")]


def test_original_keys_load_with_one_warning_each_and_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "default.yaml", ORIGINAL_DEFAULTS)
    original = load_configs(write(tmp_path, "original.yaml", ORIGINAL_SWEEP))
    lines = warning_lines(capsys.readouterr().err)
    plain = load_configs(write(tmp_path, "plain.yaml", PLAIN_SWEEP))
    assert capsys.readouterr().err == ""
    assert original == plain
    assert [run_id(config) for config in original] == [run_id(config) for config in plain]
    named = {(file, key) for file, key, *_ in (line.removeprefix("config warning: ").split(": ") for line in lines)}
    defaults, sweep = str(tmp_path / "default.yaml"), str(tmp_path / "original.yaml")
    assert named == {(defaults, "blacklist"), (defaults, "coresets"), (defaults, "network_names"),
                     (defaults, "network_colors"), (sweep, "description"), (sweep, "experiments.datasetsToEvaluate")}
    assert len(lines) == len(named), "each key is reported once, not once per customization"
    assert all(": ignored: " in line for line in lines)


def test_ignored_original_keys_do_not_reach_the_resolved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Set by an override too (named 'command line'), or by a customization, as the original's sweeps did."""
    sweep = {**VALID, "customizations": [{"key": ["coresets", "deltaS"], "value": 1.0e-2}]}
    (config,) = load_configs(write(tmp_path, "main.yaml", sweep), ["experiments.datasetsToEvaluate=[ToyMoons]"])
    assert "coresets" not in config and "datasetsToEvaluate" not in config["experiments"]
    assert warning_lines(capsys.readouterr().err) == [
        f"config warning: {tmp_path / 'main.yaml'}: coresets: ignored: settings of the original's coreset-based "
        "pruning methods (SiPP, PFP, ...), not implemented here",
        "config warning: command line: experiments.datasetsToEvaluate: ignored: never read by the original either",
    ]


def test_dry_run_of_an_original_config_warns_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "default.yaml", ORIGINAL_DEFAULTS)
    config = write(tmp_path, "original.yaml", ORIGINAL_SWEEP)
    assert main([str(config), "--dry-run", "--show-config", f"directories.results={tmp_path / 'results'}"]) == 0
    captured = capsys.readouterr()
    assert len(warning_lines(captured.err)) == 6
    assert f"config warning: {tmp_path / 'default.yaml'}: network_colors: ignored: " in captured.err
    first = captured.out.split("# experiment 1 of ")[1].split("\n", 1)[1].split("# plan")[0]
    resolved = yaml.safe_load(first)  # the first config, as --dry-run --show-config prints it
    assert "coresets" not in resolved and "datasetsToEvaluate" not in resolved["experiments"]
    assert not (tmp_path / "results").exists()


def test_every_original_key_is_documented() -> None:
    section = (REPO / "docs" / "CONFIG.md").read_text().split("## Configs from the original framework")[1].split("\n## ")[0]
    for path in [*IGNORED_ORIGINAL_KEYS, *UNSUPPORTED_ORIGINAL_KEYS]:
        assert f"| `{format_key_path(path)}`" in section


def test_a_flows_output_size_other_than_its_data_dimension_is_replaced_with_a_warning(tmp_path: Path, capsys) -> None:
    """The original's image-flow configs say `outputSize: 10`, a leftover it never read."""
    text = """
network: {name: ffjord_multiscale_mnist, dataset: Digits, outputSize: 10}
training:
  loss: NLLBitsLoss
  metricsTest: [{type: NLLBits}]
  batchSize: 64
  optimizer: Adam
  numEpochs: 1
experiments: {mode: train}
"""
    plain = load_one(write(tmp_path, "main.yaml", text))
    assert plain["network"]["outputSize"] == 64
    assert ("config warning: " + str(tmp_path / "main.yaml") + ": network.outputSize: 10 ignored: a flow's output is its "
            "data dimension, 64 for Digits") in capsys.readouterr().err
    assert run_folder(plain) == run_folder(load_one(write(tmp_path, "right.yaml", text.replace("outputSize: 10", "outputSize: 64"))))


def test_the_solver_backend_key_fits_the_model_and_stays_out_of_the_run_id_at_auto(tmp_path: Path) -> None:
    path = write(tmp_path, "main.yaml", VALID)
    plain = load_one(path)
    assert plain["network"]["solverBackend"] == "auto"
    assert run_id(plain) == run_id({**plain, "network": {key: value for key, value in plain["network"].items()
                                                        if key != "solverBackend"}})  # runs made before the key
    assert run_id(load_one(path, ("network.solverBackend=backprop",))) != run_id(plain)
    with pytest.raises(ConfigError, match="network.solverBackend: the fused solver takes MLP fields with dopri5"):
        load_one(path, ("network.name=node_l2_h64_tanh_rk4_adjoint", "network.solverBackend=fused"))
    with pytest.raises(ConfigError, match="asks for backpropagation through the solver"):
        load_one(path, ("network.name=node_l2_h64_tanh_da_autograd", "network.solverBackend=torchdiffeq"))
    with pytest.raises(ConfigError, match="unknown solver backend 'jax'"):
        load_one(path, ("network.solverBackend=jax",))
