"""paper.claims decides each claim from the numbers: metrics rows with known values give the known
differences, prune potentials and verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from experiment.config import load_configs
from experiment.results.tree import rows_to_csv
from paper import claims

STEPS = (0.2, 0.5, 0.9)  # two moderate steps (PR <= 0.8) and one beyond


def flow_run(folder: Path, nll: dict[str, tuple[float, ...]]) -> Path:
    """A run folder of the Gaussians flow config whose nets have the test NLLs `nll`: 'dense' per
    net, and per method the value at each of STEPS (the same in both nets, plus the net's offset)."""
    (config,) = load_configs(REPO / "param" / "reproduction" / "flow_gaussians.yaml")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = []
    for net, offset in enumerate((0.0, 0.02)):
        base = {"mode": "cascade", "net": net, "repetition": 0, "num_params": 8642}
        rows.append({**base, "mode": "train", "method": "dense", "step": 0, "target_prune_ratio": 0.0, "prune_ratio": 0.0,
                     "nonzero_params": 8642, "nll": nll["dense"][0] + offset, "step_prune_ratio": ""})
        for method, values in nll.items():
            if method == "dense":
                continue
            for step, (ratio, value) in enumerate(zip(STEPS, values), start=1):
                achieved = 0.0 if method == "NoPrune" else ratio
                rows.append({**base, "method": method, "step": step, "target_prune_ratio": 0.0 if method == "NoPrune" else ratio,
                             "prune_ratio": achieved, "nonzero_params": round(8642 * (1 - achieved)), "nll": value + offset,
                             "step_prune_ratio": ratio if method == "NoPrune" else ""})
    (folder / "metrics.csv").write_text(rows_to_csv(rows))
    return folder


def measured(measures: list[claims.Measure], method: str, start: str) -> claims.Measure:
    (found,) = [m for m in measures if m.method == method and m.measure.startswith(start)]
    return found


def test_pruning_that_beats_dense_and_the_control_holds(tmp_path):
    run = claims.Run(flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.40),
                                                  "ThresNet": (1.25, 1.26, 1.50), "NoPrune": (1.18, 1.18, 1.18)}))
    measures, verdict = claims.improvement_claim(run)
    assert measured(measures, "FT", "NLL − dense").mean == pytest.approx(-0.04)  # (1.15 + 1.17) / 2 - 1.20
    assert measured(measures, "FT", "NLL − NoPrune").mean == pytest.approx(-0.02)
    assert measured(measures, "WT", "NLL − dense").mean == pytest.approx(0.055)
    assert measured(measures, "FT", "NLL − dense").count == 2
    assert verdict.verdict == "holds"

    measures, verdict = claims.potential_claim(run)
    assert measured(measures, "FT", "prune potential").mean == pytest.approx(0.5)  # 1.17 <= 1.20 + 0.005 < 1.40
    assert measured(measures, "WT", "prune potential").mean == 0.0
    assert verdict.verdict == "does not hold"


def test_pruning_that_only_matches_the_extra_training_does_not_hold(tmp_path):
    run = claims.Run(flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.19),
                                                  "ThresNet": (1.16, 1.16, 1.2), "NoPrune": (1.10, 1.10, 1.10)}))
    measures, verdict = claims.improvement_claim(run)
    assert measured(measures, "WT", "NLL − NoPrune").mean == pytest.approx(0.06)
    assert verdict.verdict == "does not hold"
    _, verdict = claims.potential_claim(run)
    assert verdict.verdict == "does not hold"  # PR 0.9 is within δ, but the schedule goes to 0.98


def test_claims_command_writes_markdown_and_csv(tmp_path):
    folder = flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.40),
                                         "ThresNet": (1.25, 1.26, 1.50), "NoPrune": (1.18, 1.18, 1.18)})
    assert claims.main([str(folder), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "claims.md").read_text()
    assert "| (a) | ToyGaussians ffjord_l4_h64_sigmoid_da |" in table and "| holds |" in table
    assert "FT NLL − dense, mean over PR ≤ 0.8: -0.0400 ± 0.0000 (n = 2)" in table
    assert (tmp_path / "out" / "claims.csv").read_text().count("\n") == 1 + 4 + 2
