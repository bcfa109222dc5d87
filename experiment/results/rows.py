"""One line of metrics.csv: what identifies its model (`ModelKey`), the row of a finished model
(`MetricsRow`) and of a failed one (`failed_row`), each with its columns in the file's order, and how a
row's step prune ratio is read back (`step_prune_ratio`).

The column order is part of the results tree's format: a run made earlier resumes with rows written
in the same order, so a change here is a change of format. A stop rule later adds `selected` to the
rows of a chain it judged (experiment/stopping.py, `RunDir.update_metrics`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, astuple, dataclass

from experiment.pruning.sparsity import Sparsity
from experiment.results.tree import model_name
from experiment.training.evaluate import Evaluation


@dataclass(frozen=True)
class ModelKey:
    """What identifies a trained model: the METRIC_KEY columns (experiment/results/tree.py) and the
    prune ratio its step aims at (0 for dense nets and the NoPrune control)."""

    mode: str
    method: str
    net: int
    repetition: int
    step: int
    target_prune_ratio: float

    @classmethod
    def dense(cls, net: int) -> "ModelKey":
        return cls(mode="train", method="dense", net=net, repetition=0, step=0, target_prune_ratio=0.0)

    @property
    def name(self) -> str:
        """The file stem of the model's checkpoint, curve and progress files."""
        return model_name(self.columns())

    def columns(self) -> dict[str, str | int | float]:
        """The key's columns of a metrics row, in the file's order."""
        return asdict(self)

    def seed_path(self) -> tuple[str | int | float, ...]:
        """The values in column order, the path the model's seeds are derived with (experiment/seeds.py):
        never reorder the fields, or a run made before would not resume with the same numbers."""
        return astuple(self)


@dataclass(frozen=True)
class MetricsRow:
    """The row of a model that finished: its key, sparsity, test and validation measurements (the
    `valid_*` columns a stop rule judges by) and training effort."""

    key: ModelKey
    step_prune_ratio: float | None  # a prune step's scheduled ratio; None (no such column) for a dense net
    sparsity: Sparsity
    test: Evaluation
    valid: Evaluation
    train_seconds: float
    epochs: int
    backend: str  # the solver backend that trained and evaluated it (experiment.models.solvers)

    def columns(self) -> dict[str, str | int | float]:
        """The row as metrics.csv holds it, in the file's column order."""
        return {
            **self.key.columns(),
            **step_column(self.step_prune_ratio),
            "prune_ratio": self.sparsity.prune_ratio,
            "weight_prune_ratio": self.sparsity.weight_prune_ratio,
            "num_params": self.sparsity.num_params,
            "nonzero_params": self.sparsity.nonzero_params,
            "test_loss": self.test.loss,
            **self.test.metrics,
            "trace_estimator": self.test.trace_estimator,
            "backend": self.backend,
            "nfe_forward": self.test.nfe_forward,
            "flops": self.sparsity.nonzero_weights * self.test.nfe_forward,
            "train_seconds": self.train_seconds,
            "epochs": self.epochs,
            **validation_columns(self.valid),
            "status": "ok",
            "error": "",
        }


def failed_row(key: ModelKey, step_prune_ratio: float | None, reason: str) -> dict[str, str | int | float]:
    """The row of a model that failed: its key, status "failed" and `reason` as its error; no
    measurements."""
    return {**key.columns(), **step_column(step_prune_ratio), "status": "failed", "error": reason}


def step_column(step_prune_ratio: float | None) -> dict[str, float]:
    return {} if step_prune_ratio is None else {"step_prune_ratio": step_prune_ratio}


def validation_columns(valid: Evaluation) -> dict[str, float]:
    return {"valid_loss": valid.loss, **{f"valid_{name}": value for name, value in valid.metrics.items()}}


def non_finite_measurements(test: Evaluation, valid: Evaluation) -> dict[str, float]:
    """{column: value} of the test and validation numbers that are not finite (a model that diverged)."""
    measured = {"test_loss": test.loss, **test.metrics, **validation_columns(valid)}
    return {name: value for name, value in measured.items() if not math.isfinite(value)}
