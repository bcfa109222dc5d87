"""The paper's stopping rule (Algorithm 1: prune and retrain while the validation loss allows it), as a
plain function over a chain's metrics rows.

A step is *bad* when its validation value v (the validation loss, in the loss's own units, or for
classifiers the validation top-k error in %) exceeds the reference r by more than the tolerance τ:

    bad(k)  ⇔  v_k > r_k + τ,    r_k = v_dense (reference "dense")  or  min(v_dense, v_1, …, v_{k−1}) ("best").

The chain stops after `patience + 1` bad steps in a row (a good step resets the count); the *selected*
step is the last good one, the sparsest net within tolerance (0: none, the dense net). The decision
reads only recorded rows, so a resumed or rerun chain makes the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from experiment.config.schema import CONTROL_METHOD


@dataclass(frozen=True)
class StopRule:
    """`experiments.stopRule`: `tolerance` in the measure's units, `reference` "dense" or "best",
    `measure` "loss" (validation loss) or "error" (validation top-k error in percentage points),
    `patience` bad steps allowed before stopping."""

    tolerance: float
    reference: str = "dense"
    measure: str = "loss"
    patience: int = 0

    def applies_to(self, method: str) -> bool:
        """The NoPrune control always runs its whole chain: it measures the extra training at every step."""
        return method != CONTROL_METHOD

    def describe(self) -> str:
        what = "validation loss" if self.measure == "loss" else "validation error (%)"
        reference = "the dense net's" if self.reference == "dense" else "the best so far (dense net included)"
        after = "the first bad step" if self.patience == 0 else f"{self.patience + 1} bad steps in a row"
        return f"stop after {after}: {what} above {reference} by more than {self.tolerance:g}"

    def value(self, row: dict, accuracy_column: str) -> float | None:
        """The row's judged value: `valid_loss`, or 100 · (1 − valid accuracy); None if not recorded."""
        if self.measure == "loss":
            value = row.get("valid_loss")
            return None if value in (None, "") else float(value)
        accuracy = row.get(f"valid_{accuracy_column}")
        return None if accuracy in (None, "") else 100.0 * (1.0 - float(accuracy))


@dataclass(frozen=True)
class ChainDecision:
    """`stopped`: the chain has ended early after step `last_step`; `selected`: the last step within
    tolerance (0: the dense net); `judged`: how many steps the rule could look at."""

    stopped: bool
    selected: int
    last_step: int
    judged: int


def decide(rule: StopRule, dense_value: float, step_values: Sequence[float | None]) -> ChainDecision:
    """The rule applied to a chain's validation values (step 1 first, None where not recorded, which
    ends what can be judged)."""
    reference, bad_in_a_row, selected, judged = dense_value, 0, 0, 0
    for step, value in enumerate(step_values, start=1):
        if value is None:
            break
        judged = step
        if value > reference + rule.tolerance:
            bad_in_a_row += 1
            if bad_in_a_row > rule.patience:
                return ChainDecision(stopped=True, selected=selected, last_step=step, judged=judged)
        else:
            bad_in_a_row, selected = 0, step
        if rule.reference == "best":
            reference = min(reference, value)
    return ChainDecision(stopped=False, selected=selected, last_step=judged, judged=judged)


def chain_decision(rule: StopRule, rows: Sequence[dict], dense_row: dict | None, accuracy_column: str,
                   num_steps: int) -> ChainDecision | None:
    """The decision for one chain from its metrics rows (any order; failed rows count as not
    recorded) and its dense net's row; None when the dense net's validation value is not recorded."""
    dense_value = None if dense_row is None else rule.value(dense_row, accuracy_column)
    if dense_value is None:
        return None
    by_step = {int(row["step"]): row for row in rows if row.get("status", "ok") != "failed"}
    values = [rule.value(by_step[step], accuracy_column) if step in by_step else None for step in range(1, num_steps + 1)]
    return decide(rule, dense_value, values)
