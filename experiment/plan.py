"""What a resolved config asks for: which dense nets, which pruning methods, which ratios; and which
metrics rows of a run folder are of the models it asks for (`Plan.wants`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from experiment.config.identity import RUN_ID_EXCLUDED_KEYS, run_folder, run_id
from experiment.config.schema import CONTROL_METHOD, keep_ratio_sequence
from experiment.config.settings import Settings, settings_of
from experiment.files import numeric
from experiment.stopping import StopRule


def step_prune_ratio(row: dict) -> float:
    """The prune ratio a metrics row's step is scheduled at: its target for the pruning methods;
    the NoPrune control (target 0: it prunes nothing) records the ratio the pruning methods reach at
    the same step in `step_prune_ratio`, so that it is compared at an equal training budget."""
    value = numeric(row.get("step_prune_ratio"))
    return float(row["target_prune_ratio"]) if value is None else value



@dataclass(frozen=True)
class Plan:
    """The work of one resolved config. Prune ratio = 1 − keep ratio. `config` is the resolved dict
    (what the run id hashes and config.yaml records), `settings` its typed view."""

    config: dict
    settings: Settings
    run_id: str
    run_folder: Path
    mode: str
    nets: tuple[int, ...]
    repetitions: int
    methods: tuple[str, ...]
    keep_ratios: tuple[float, ...]
    retrain_steps: int  # prune steps that are followed by retraining (the first ones)
    stop_rule: StopRule | None  # None: every chain runs all its steps

    @property
    def prune_ratios(self) -> tuple[float, ...]:
        return tuple(1.0 - keep for keep in self.keep_ratios)

    def wants(self, row: dict) -> bool:
        """Is the metrics row `row` of a model this plan asks for? A run folder may also hold rows of
        other modes, more nets or an earlier ratio list."""
        if row["net"] not in self.nets:
            return False
        if row["method"] == "dense":
            return True
        return (row["mode"] == self.mode and row["method"] in self.methods and row["repetition"] < self.repetitions
                and 1 <= row["step"] <= len(self.prune_ratios)
                and math.isclose(step_prune_ratio(row), self.prune_ratios[row["step"] - 1], abs_tol=1e-9))

    def planned_rows(self, rows: list[dict]) -> list[dict]:
        """The rows of `rows` this plan wants, in their order."""
        return [row for row in rows if self.wants(row)]

    def describe(self) -> str:
        lines = [
            f"run folder: {self.run_folder}",
            f"run id:     {self.run_id}",
            f"network:    {self.settings.network.name} on {self.settings.network.dataset}",
            f"mode:       {self.mode}",
            f"dense nets: {len(self.nets)} (nets {', '.join(map(str, self.nets))}), "
            f"{self.settings.training.num_epochs} epochs each",
        ]
        if self.mode != "train" and self.methods:
            ratios = ", ".join(f"{ratio:.3f}" for ratio in self.prune_ratios)
            lines += [
                f"methods:    {', '.join(self.methods)} x {self.repetitions} repetition(s)",
                f"prune ratios ({len(self.prune_ratios)}): {ratios}",
                f"retraining: {self.settings.retraining.num_epochs} epochs after each of the first "
                f"{self.retrain_steps} prune step(s)",
            ]
            if self.stop_rule is not None:
                lines.append(f"stop rule:  a pruning chain may stop early ({self.stop_rule.describe()}; "
                             f"{CONTROL_METHOD} runs every step)" if CONTROL_METHOD in self.methods else
                             f"stop rule:  a pruning chain may stop early ({self.stop_rule.describe()})")
        return "\n".join(lines)


def make_plan(config: dict) -> Plan:
    settings = settings_of(config)
    experiments = settings.experiments
    ratios = keep_ratio_sequence(config["experiments"]["spacing"])
    methods = experiments.methods if experiments.mode != "train" else ()
    retrain_iterations = experiments.retrain_iterations
    return Plan(
        config=config,
        settings=settings,
        run_id=run_id(config),
        run_folder=run_folder(config),
        mode=experiments.mode,
        nets=tuple(range(experiments.num_nets)),
        repetitions=experiments.num_repetitions,
        methods=methods,
        keep_ratios=tuple(ratios) if methods else (),
        retrain_steps=len(ratios) if retrain_iterations == -1 else min(retrain_iterations, len(ratios)),
        stop_rule=experiments.stop_rule,
    )


# ------------------------------------------------------------------------------ what each config of a sweep sets

KEY_ABBREVIATIONS = {"weight_decay": "wd"}


def flatten(config: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """{key path: leaf value}; lists are leaves."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def name_parts(names: list[str]) -> list[str]:
    """The differing middle of `_`-separated model names: their common leading and trailing tokens
    dropped, each name keeping at least one token (node_l2_h64_tanh_da vs node_l2_h64_tanh_da_autograd
    → da, da_autograd)."""
    tokens = [name.split("_") for name in names]
    shortest = min(len(parts) for parts in tokens)
    prefix = 0
    while prefix < shortest - 1 and len({parts[prefix] for parts in tokens}) == 1:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix - 1 and len({parts[-1 - suffix] for parts in tokens}) == 1:
        suffix += 1
    return ["_".join(parts[prefix:len(parts) - suffix]) for parts in tokens]


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def sweep_labels(configs: list[dict]) -> list[str]:
    """A label per config of a sweep saying what it does differently from the others (its swept
    values): the differing part of the network name, then `key=value` for every other differing key (a `retraining` key that just
    repeats the `training` one is left out; keys are shortened to their last component where that
    stays unambiguous). A single config is labelled by its network name."""
    flat = [flatten({key: value for key, value in config.items() if key not in RUN_ID_EXCLUDED_KEYS})
            for config in configs]
    names = [entries[("network", "name")] for entries in flat]
    if len(configs) == 1:
        return names
    keys = list(dict.fromkeys(key for entries in flat for key in entries))
    missing = object()
    values = {key: [entries.get(key, missing) for entries in flat] for key in keys}
    differing = [key for key in keys
                 if len({json.dumps(value, sort_keys=True, default=str) for value in values[key]}) > 1]
    differing = [key for key in differing
                 if not (key[0] == "retraining" and ("training",) + key[1:] in differing
                         and values[("training",) + key[1:]] == values[key])]
    parts: list[list[str]] = [[] for _ in configs]
    if ("network", "name") in differing:
        for index, part in enumerate(name_parts(names)):
            parts[index].append(part)
    others = [key for key in differing if key != ("network", "name")]
    for key in others:
        short = key[-1]
        if sum(other[-1] == short for other in others) > 1:
            short = ".".join(key)
        short = KEY_ABBREVIATIONS.get(short, short)
        for index, value in enumerate(values[key]):
            parts[index].append(f"{short}={'–' if value is missing else _format_value(value)}")
    return [", ".join(part) or name for part, name in zip(parts, names)]
