"""The stop rule (experiment/stopping.py): a chain ends at the first step past tolerance (or after
`patience` more bad steps), the sparsest net within tolerance is marked `selected` in metrics.csv,
and a rerun trains nothing; applied to an existing full run it selects without training."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import describe, file_states, run_cli, the_run_folder, tiny_config
from experiment.files import read_csv
from experiment.stopping import StopRule, decide

pytestmark = pytest.mark.slow  # runs prune chains end to end in subprocesses

# A small classifier whose validation error jumps by ~30 percentage points at PR 0.98 (step 3):
# steps 1 and 2 are better than the dense net, steps 3 to 5 are collapsed.
NETWORK = "node_l2_h16_tanh_da"
KEEP_RATIOS = [0.7, 0.4, 0.02, 0.01, 0.005]
TOLERANCE = 5.0  # percentage points of validation error


def config(folder: Path, patience: int | None) -> Path:
    rule = None if patience is None else {"tolerance": TOLERANCE, "measure": "error", "patience": patience}
    return tiny_config(folder / "tiny.yaml", folder / "results", epochs=5, nets=1, name=NETWORK,
                       experiments={"mode": "cascade", "methods": ["ThresNet"], "stopRule": rule,
                                    "spacing": [{"type": "manual", "values": KEEP_RATIOS}]})


def chain_rows(folder: Path) -> list[dict]:
    rows = read_csv(the_run_folder(folder / "results") / "metrics.csv")
    return [row for row in rows if row["method"] == "ThresNet"]


@pytest.mark.parametrize("patience, stop_step", [(0, 3), (1, 4), (2, 5)])
def test_decide_stops_after_patience_plus_one_bad_steps(patience, stop_step):
    decision = decide(StopRule(tolerance=0.1, patience=patience), 1.0, [0.9, 1.05, 1.5, 1.6, 1.7])
    assert (decision.stopped, decision.last_step, decision.selected) == (patience < 3, stop_step, 2)


def test_decide_references_and_resets():
    values = [0.5, 0.65, 0.55, 1.05]
    assert decide(StopRule(tolerance=0.1, reference="dense"), 1.0, values).selected == 4  # 1.05 <= 1.0 + 0.1
    best = decide(StopRule(tolerance=0.1, reference="best"), 1.0, values)
    assert (best.stopped, best.last_step, best.selected) == (True, 2, 1)  # 0.65 > 0.5 + 0.1
    patient = decide(StopRule(tolerance=0.1, reference="best", patience=1), 1.0, values)
    assert (patient.stopped, patient.selected) == (False, 3)  # a good step reset the count: one bad step at the end
    assert decide(StopRule(tolerance=0.0), 1.0, [0.9, None, 2.0]).judged == 1  # nothing judged past a missing value


@pytest.mark.parametrize("patience", [0, 1])
def test_chain_stops_at_the_first_step_past_tolerance_and_a_rerun_trains_nothing(patience, tmp_path):
    path = config(tmp_path, patience)
    process = run_cli(path, *(["--workers", "2"] if patience == 0 else []))
    assert process.returncode == 0, describe(process)
    rows = chain_rows(tmp_path)
    last = 3 + patience
    assert [row["step"] for row in rows] == list(range(1, last + 1))
    assert [row["selected"] for row in rows] == [int(row["step"] == 2) for row in rows]
    errors = [100 * (1 - row["valid_top1_acc"]) for row in rows]
    assert max(errors[:2]) < min(errors[2:]) - TOLERANCE  # the jump the rule found
    if patience:
        return
    before = file_states(the_run_folder(tmp_path / "results"))
    again = run_cli(path)
    assert again.returncode == 0 and "retraining" not in again.stdout, describe(again)
    assert "nothing left to do" in again.stdout
    assert file_states(the_run_folder(tmp_path / "results")) == before


def test_rule_applied_to_a_finished_full_run_selects_without_training(tmp_path):
    full = run_cli(config(tmp_path, None))
    assert full.returncode == 0, describe(full)
    assert len(chain_rows(tmp_path)) == len(KEEP_RATIOS) and "selected" not in chain_rows(tmp_path)[0]
    dry = run_cli(config(tmp_path, 1), "--dry-run")
    assert "stop rule:  a pruning chain may stop early (stop after 2 bad steps in a row" in dry.stdout, describe(dry)
    judged = run_cli(config(tmp_path, 1))
    assert judged.returncode == 0 and "retraining" not in judged.stdout, describe(judged)
    assert "stopped after step 4 of 5; selected step 2" in judged.stdout
    rows = chain_rows(tmp_path)
    assert [row["selected"] for row in rows] == [0, 1, 0, 0, 0]
    error = 100 * (1 - rows[1]["top1_acc"])
    assert (f"stop rule, ThresNet (cascade): the sparsest nets within tolerance have PR {rows[1]['prune_ratio']:.3f}, "
            f"test top-1 error (%) {error:.4f} (n = 1)\n") in judged.stdout
