"""What a resolved config asks for: which dense nets, which pruning methods, which ratios; and which
metrics rows of a run folder are of the models it asks for (`Plan.wants`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment.config.settings import RangeSpacing, RelativeSpacing, Settings, Spacing, settings_of
from experiment.pruning.rules import CONTROL_METHOD
from experiment.results.rows import step_prune_ratio
from experiment.results.tree import run_folder, run_id
from experiment.stopping import StopRule


def keep_ratios(spacing: Sequence[Spacing]) -> list[float]:
    """The keep ratios of `experiments.spacing`, its entries concatenated in order:
    geometric → geomspace(max_val, min_val, num_intervals), linear → linspace(...), manual → values,
    relative → each of max_steps steps prunes `ratio` of what the previous keep ratio k left:
    k·(1 − ratio), starting from the last ratio before the entry (1 at first)."""
    ratios: list[float] = []
    for entry in spacing:
        if isinstance(entry, RangeSpacing):
            space = np.geomspace if entry.type == "geometric" else np.linspace
            ratios += space(entry.max_val, entry.min_val, entry.num_intervals).tolist()
        elif isinstance(entry, RelativeSpacing):
            start = ratios[-1] if ratios else 1.0
            ratios += [start * (1.0 - entry.ratio) ** step for step in range(1, entry.max_steps + 1)]
        else:
            ratios += list(entry.values)
    return ratios


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
    ratios = keep_ratios(experiments.spacing)
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
