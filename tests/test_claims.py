"""The claims (`experiment.analysis.claims`, written by `paper.claims`) are decided from the numbers:
metrics rows with known values give the known differences, prune potentials and verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from experiment.analysis.claims import (Measure, flatness_claim, improvement_claim, mode_collapse_claim, potential_claim,
                                        recorded_plan)
from experiment.config import load_configs
from experiment.results import Run
from experiment.results.tree import rows_to_csv
from paper import claims

STEPS = (0.2, 0.5, 0.9)  # two moderate steps (PR <= 0.8) and one beyond


def flow_run(folder: Path, nll: dict[str, tuple[float, ...]]) -> Path:
    """A finished run folder of the Gaussians flow config with the ratios STEPS whose nets have the
    test NLLs `nll`: 'dense' per net, and per method the value at each of STEPS (the same in both
    nets, plus the net's offset)."""
    (config,) = load_configs(REPO / "param" / "reproduction" / "flow_gaussians.yaml",
                             [f"experiments.spacing=[{{type: manual, values: {[round(1 - ratio, 9) for ratio in STEPS]}}}]"])
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


def measured(measures: list[Measure], method: str, start: str) -> Measure:
    (found,) = [m for m in measures if m.method == method and m.measure.startswith(start)]
    return found


def test_pruning_that_beats_dense_and_the_control_holds(tmp_path):
    run = Run(flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.40),
                                                  "ThresNet": (1.25, 1.26, 1.50), "NoPrune": (1.18, 1.18, 1.18)}))
    measures, verdict = improvement_claim(run)
    assert measured(measures, "FT", "NLL − dense").mean == pytest.approx(-0.04)  # (1.15 + 1.17) / 2 - 1.20
    assert measured(measures, "FT", "NLL − NoPrune").mean == pytest.approx(-0.02)
    assert measured(measures, "WT", "NLL − dense").mean == pytest.approx(0.055)
    assert measured(measures, "FT", "NLL − dense").count == 2
    assert verdict.verdict == "holds"

    measures, verdict = potential_claim(run)
    assert measured(measures, "FT", "prune potential").mean == pytest.approx(0.5)  # 1.17 <= 1.20 + 0.005 < 1.40
    assert measured(measures, "WT", "prune potential").mean == 0.0
    assert verdict.verdict == "does not hold"


def test_pruning_that_only_matches_the_extra_training_does_not_hold(tmp_path):
    run = Run(flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.19),
                                                  "ThresNet": (1.16, 1.16, 1.2), "NoPrune": (1.10, 1.10, 1.10)}))
    measures, verdict = improvement_claim(run)
    assert measured(measures, "WT", "NLL − NoPrune").mean == pytest.approx(0.06)
    assert verdict.verdict == "does not hold"
    _, verdict = potential_claim(run)
    assert verdict.verdict == "does not hold"  # PR 0.9 is within δ, but the schedule goes to 0.98


def test_claims_command_writes_markdown_and_csv(tmp_path):
    folder = flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.40),
                                         "ThresNet": (1.25, 1.26, 1.50), "NoPrune": (1.18, 1.18, 1.18)})
    assert claims.main([str(folder), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "claims.md").read_text()
    assert "| (a) | ToyGaussians ffjord_l4_h64_sigmoid_da |" in table and "| holds |" in table
    assert "FT NLL − dense, mean over PR ≤ 0.8: -0.0400 ± 0.0000 (n = 2)" in table
    assert (tmp_path / "out" / "claims.csv").read_text().count("\n") == 1 + 4 + 4  # (d): dense, FT's potential and NLL there, WT's
    assert "so far" not in table  # the run has every row of its config


RUN = "ToyGaussians_ffjord_l4_h64_sigmoid_da_84d8a919273b"


def mode_collapse_csv(path: Path, passes: dict[str, tuple[int, ...]]) -> Path:
    """A `paper.mode_collapse` table: per method, model i (net i) at PR 0.5 passes or not (two k
    rows per model, as the script writes several); one FT model at PR 0.9, beyond the moderate range,
    that fails."""
    rows = []
    for method, verdicts in passes.items():
        for net, verdict in enumerate(verdicts):
            for k in (2.0, 3.0):
                rows.append({"run": RUN, "method": method, "mode": "train" if method == "dense" else "cascade", "net": net,
                             "repetition": 0, "step": 0 if method == "dense" else 8, "k": k, "passes": verdict,
                             "step_prune_ratio": 0.0 if method == "dense" else 0.5})
    rows += [{"run": RUN, "method": "FilterThresNet", "mode": "cascade", "net": 0, "repetition": 0, "step": 25, "k": 2.0,
              "passes": 0, "step_prune_ratio": 0.9}]
    path.write_text(rows_to_csv(rows))
    return path


def test_mode_collapse_claim_compares_pass_shares_with_dense_and_the_control(tmp_path):
    table = mode_collapse_csv(tmp_path / "modes.csv", {"dense": (0, 1), "FilterThresNet": (1, 1), "ThresNet": (1, 0),
                                                        "NoPrune": (1, 0)})
    measures, verdict = mode_collapse_claim(table)
    assert measured(measures, "FT", "share").mean == 1.0 and measured(measures, "FT", "share").count == 2  # PR 0.9 left out
    assert measured(measures, "dense", "share").mean == 0.5 and measured(measures, "WT", "share").mean == 0.5
    assert verdict.verdict == "holds" and "FT above dense and NoPrune" in verdict.why and verdict.run == "ToyGaussians ffjord_l4_h64_sigmoid_da"

    table = mode_collapse_csv(tmp_path / "modes.csv", {"dense": (0, 1), "FilterThresNet": (1, 1), "NoPrune": (1, 1)})
    assert mode_collapse_claim(table)[1].verdict == "does not hold"  # the control passes as often: extra training
    table = mode_collapse_csv(tmp_path / "modes.csv", {"dense": (1, 1), "FilterThresNet": (1, 1), "NoPrune": (1, 1)})
    assert mode_collapse_claim(table)[1].verdict == "does not apply"


def flatness_csv(path: Path, models: dict[str, tuple[tuple[float, float], ...]]) -> Path:
    """A `paper.flatness` table of net 0: per method, per step (1, 2, ...), (λ_max, mean λ_max of
    the random-subset control); NoPrune rows give λ_max only."""
    rows = []
    for method, values in models.items():
        for step, (lambda_max, subset) in enumerate(values, start=1):
            rows.append({"run": RUN, "mode": "cascade", "method": method, "net": 0, "step": step, "lambda_max": lambda_max,
                         "control_lambda_max_mean": subset})
    path.write_text(rows_to_csv(rows))
    return path


def test_flatness_claim_needs_both_the_random_subset_and_the_control_to_be_sharper(tmp_path):
    table = flatness_csv(tmp_path / "flat.csv", {"FilterThresNet": ((1.0, 2.0), (1.0, 4.0), (3.0, 2.0)),
                                                  "ThresNet": ((2.0, 1.0), (2.0, 1.0), (2.0, 1.0)),
                                                  "NoPrune": ((2.0, ""), (2.0, ""), (2.0, ""))})
    measures, verdict = flatness_claim(table)
    assert measured(measures, "FT", "λ_max / random-subset").mean == pytest.approx((0.5 + 0.25 + 1.5) / 3)
    assert measured(measures, "FT", "λ_max / NoPrune").mean == pytest.approx((0.5 + 0.5 + 1.5) / 3)
    assert measured(measures, "WT", "λ_max / random-subset").mean == pytest.approx(2.0)
    assert verdict.verdict == "holds" and "FT: 2 of 3" in verdict.why and "WT: 0 of 3" in verdict.why

    # flatter than its random subsets, but not than the equally trained control: not flatter by pruning
    table = flatness_csv(tmp_path / "flat.csv", {"FilterThresNet": ((1.0, 2.0), (1.0, 2.0)), "NoPrune": ((0.5, ""), (0.5, ""))})
    assert flatness_claim(table)[1].verdict == "does not hold"
    table = flatness_csv(tmp_path / "flat.csv", {"FilterThresNet": ((1.0, 2.0), (3.0, 2.0), (3.0, 2.0)),
                                                  "NoPrune": ((2.0, ""), (2.0, ""), (2.0, ""))})
    assert flatness_claim(table)[1].verdict == "inconclusive"  # 1 of 3


def test_the_claims_table_of_paper_readme_is_made_again_from_the_committed_runs(tmp_path, monkeypatch):
    """paper/README.md's claims block names its command; run on the committed metrics (and analysis
    tables) it makes the same table, number for number."""
    readme = REPO / "paper" / "README.md"
    command = claims.embedded_command(readme.read_text(), readme)
    assert any("paper/reproduction/" in word for word in command)
    copy = tmp_path / "README.md"
    copy.write_text(readme.read_text())
    without_outputs = [word for index, word in enumerate(command)
                       if word not in ("--out", "--into") and (index == 0 or command[index - 1] not in ("--out", "--into"))]
    monkeypatch.chdir(REPO)
    assert claims.main([*without_outputs, "--out", str(tmp_path), "--into", str(copy)]) == 0
    made = claims.BLOCK.search(copy.read_text())
    committed = claims.BLOCK.search(readme.read_text())
    assert made.group(0).partition("-->\n")[2] == committed.group(0).partition("-->\n")[2]
    assert "| (d) | ToyMoons node_l2_h64_tanh_da |" in committed.group(0)


def test_verdicts_on_an_unfinished_run_say_so(tmp_path):
    folder = flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.40), "ThresNet": (1.25, 1.26, 1.50),
                                         "NoPrune": (1.18, 1.18, 1.18)})
    metrics = folder / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))  # net 1's last NoPrune step to go
    _, verdicts = claims.measure_claims([claims.Run(folder)])
    assert [verdict.verdict for verdict in verdicts] == ["holds so far", "does not hold so far"]
    assert all(verdict.why.startswith("run unfinished (19 models, 1 of 8 jobs not done): ") for verdict in verdicts)


def test_claims_from_the_analysis_tables_of_an_unfinished_run_say_so(tmp_path):
    """Mode-collapse and flatness tables are matched to the runs given by the run id that ends their
    `run` column: made from an unfinished run, their verdicts read "... so far"; tables of a run not
    given are taken as they are."""
    folder = flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.40), "ThresNet": (1.25, 1.26, 1.50),
                                         "NoPrune": (1.18, 1.18, 1.18)})
    metrics = folder / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))  # net 1's last NoPrune step to go
    run = claims.Run(folder)
    label = RUN.rpartition("_")[0] + "_" + recorded_plan(run).run_id
    own = [tmp_path / "own_modes.csv", tmp_path / "own_flat.csv"]
    mode_collapse_csv(own[0], {"dense": (1, 1), "FilterThresNet": (1, 1), "NoPrune": (1, 1)})
    flatness_csv(own[1], {"FilterThresNet": ((1.0, 2.0), (1.0, 2.0)), "NoPrune": ((0.5, ""), (0.5, ""))})
    for path in own:
        path.write_text(path.read_text().replace(RUN, label))
    other = [tmp_path / "modes.csv", tmp_path / "flat.csv"]
    for mine, theirs in zip(own, other):
        theirs.write_text(mine.read_text().replace(label, RUN.rpartition("_")[0] + "_0123456789ab"))
    for tables, suffix in ((own, " so far"), (other, "")):
        _, verdicts = claims.measure_claims([run], mode_collapse=tables[:1], flatness=tables[1:])
        by_claim = {verdict.claim: verdict for verdict in verdicts}
        assert by_claim["b"].verdict == "does not apply" + suffix and by_claim["c"].verdict == "does not hold" + suffix
        assert by_claim["c"].why.startswith("run unfinished (19 models, 1 of 8 jobs not done): ") == bool(suffix)
