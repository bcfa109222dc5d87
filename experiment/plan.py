"""What a resolved config asks for: which dense nets, which pruning methods, which ratios; and which
metrics rows of a run folder are of the models it asks for (`Plan.wants`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment.pruning.rules import CONTROL_METHOD
from experiment.results.rows import step_prune_ratio
from experiment.results.tree import run_folder, run_id
from experiment.stopping import StopRule


def keep_ratios(spacing: list[dict]) -> list[float]:
    """The keep ratios of `experiments.spacing`, its entries concatenated in order:
    geometric → geomspace(maxVal, minVal, numIntervals), linear → linspace(...), manual → values,
    relative → each of maxSteps steps prunes `ratio` of what the previous keep ratio k left:
    k·(1 − ratio), starting from the last ratio before the entry (1 at first)."""
    ratios: list[float] = []
    for entry in spacing:
        if entry["type"] == "geometric":
            ratios += np.geomspace(entry["maxVal"], entry["minVal"], entry["numIntervals"]).tolist()
        elif entry["type"] == "linear":
            ratios += np.linspace(entry["maxVal"], entry["minVal"], entry["numIntervals"]).tolist()
        elif entry["type"] == "relative":
            start = ratios[-1] if ratios else 1.0
            ratios += [start * (1.0 - entry["ratio"]) ** step for step in range(1, entry["maxSteps"] + 1)]
        else:
            ratios += [float(value) for value in entry["values"]]
    return ratios


@dataclass(frozen=True)
class Plan:
    """The work of one resolved config. Prune ratio = 1 − keep ratio."""

    config: dict
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
            f"network:    {self.config['network']['name']} on {self.config['network']['dataset']}",
            f"mode:       {self.mode}",
            f"dense nets: {len(self.nets)} (nets {', '.join(map(str, self.nets))}), "
            f"{self.config['training']['numEpochs']} epochs each",
        ]
        if self.mode != "train" and self.methods:
            ratios = ", ".join(f"{ratio:.3f}" for ratio in self.prune_ratios)
            lines += [
                f"methods:    {', '.join(self.methods)} x {self.repetitions} repetition(s)",
                f"prune ratios ({len(self.prune_ratios)}): {ratios}",
                f"retraining: {self.config['retraining']['numEpochs']} epochs after each of the first "
                f"{self.retrain_steps} prune step(s)",
            ]
            if self.stop_rule is not None:
                lines.append(f"stop rule:  a pruning chain may stop early ({self.stop_rule.describe()}; "
                             f"{CONTROL_METHOD} runs every step)" if CONTROL_METHOD in self.methods else
                             f"stop rule:  a pruning chain may stop early ({self.stop_rule.describe()})")
        return "\n".join(lines)


def make_plan(config: dict) -> Plan:
    experiments = config["experiments"]
    ratios = keep_ratios(experiments["spacing"])
    methods = tuple(experiments["methods"]) if experiments["mode"] != "train" else ()
    retrain_iterations = experiments["retrainIterations"]
    return Plan(
        config=config,
        run_id=run_id(config),
        run_folder=run_folder(config),
        mode=experiments["mode"],
        nets=tuple(range(experiments["numNets"])),
        repetitions=experiments["numRepetitions"],
        methods=methods,
        keep_ratios=tuple(ratios) if methods else (),
        retrain_steps=len(ratios) if retrain_iterations == -1 else min(retrain_iterations, len(ratios)),
        stop_rule=StopRule.of(config),
    )
