"""The claims (`experiment.analysis.claims`, written by `paper.claims`) are decided from the numbers:
metrics rows with known values give the known per-net effects, intervals and verdicts, and the rule
says "holds" on data without an effect no more often than it promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from experiment.analysis.claims import (Measure, converged_claim, decide, flatness_claim, improvement_claim, improvement_noise,
                                        mode_collapse_claim, potential_claim, recorded_plan, simulate_improvement_claim)
from experiment.analysis.statistics import Interval, variance_components
from experiment.config import load_configs
from experiment.results import Run
from experiment.files import rows_to_csv
from paper import claims

STEPS = (0.2, 0.5, 0.9)  # two moderate steps (PR <= 0.8) and one beyond


def flow_run(folder: Path, nll: dict[str, tuple[float, ...]], nets: int = 2, spread: float = 0.0, epochs: int | None = None,
             mode: str = "cascade") -> Path:
    """A finished run folder of the Gaussians flow config with the ratios STEPS whose nets have the
    test NLLs `nll`: 'dense' per net, and per method the value at each of STEPS, plus the net's offset
    (0.02 per net, the same for every method) and, with `spread`, a per-(method, net) shift drawn from
    a seeded generator, so that the nets disagree by about `spread`. `mode` "train": dense nets only."""
    overrides = [f"experiments.spacing=[{{type: manual, values: {[round(1 - ratio, 9) for ratio in STEPS]}}}]",
                 f"experiments.numNets={nets}"]
    overrides += [f"training.numEpochs={epochs}"] if epochs else []
    overrides += ["experiments.mode=train"] if mode == "train" else []
    (config,) = load_configs(REPO / "param" / "reproduction" / "flow_gaussians.yaml", overrides)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    generator = np.random.default_rng(0)
    rows = []
    for net in range(nets):
        offset = 0.02 * net
        base = {"mode": "cascade", "net": net, "repetition": 0, "num_params": 8642}
        rows.append({**base, "mode": "train", "method": "dense", "step": 0, "target_prune_ratio": 0.0, "prune_ratio": 0.0,
                     "nonzero_params": 8642, "nll": nll["dense"][net % len(nll["dense"])] + offset, "step_prune_ratio": ""})
        for method, values in nll.items():
            if method == "dense" or mode == "train":
                continue
            shift = generator.normal(0.0, spread) if spread else 0.0
            for step, (ratio, value) in enumerate(zip(STEPS, values), start=1):
                achieved = 0.0 if method == "NoPrune" else ratio
                rows.append({**base, "method": method, "step": step, "target_prune_ratio": 0.0 if method == "NoPrune" else ratio,
                             "prune_ratio": achieved, "nonzero_params": round(8642 * (1 - achieved)), "nll": value + offset + shift,
                             "step_prune_ratio": ratio if method == "NoPrune" else ""})
    (folder / "metrics.csv").write_text(rows_to_csv(rows))
    return folder


def measured(measures: list[Measure], method: str, start: str) -> Measure:
    (found,) = [m for m in measures if m.method == method and m.measure.startswith(start)]
    return found


def interval(mean: float, half: float, count: int = 6) -> Interval:
    return Interval(mean, mean - half, mean + half, count)


def test_the_rule_reads_the_interval_against_no_effect_and_delta():
    delta = 0.005
    assert decide(interval(-0.02, 0.01), delta) == "holds"  # excludes 0 on the claimed side
    assert decide(interval(0.02, 0.01), delta) == "does not hold"  # excludes 0 on the other side
    assert decide(interval(-0.002, 0.001), delta) == "does not hold"  # within ±δ: too small to matter, though below 0
    assert decide(interval(-0.004, 0.005), delta) == "inconclusive"  # spans 0 and reaches beyond δ
    assert decide(interval(0.02, 0.01), delta, "higher") == "holds"
    assert decide(Interval(-0.5, float("nan"), float("nan"), 1), delta) == "inconclusive"  # one net: no interval


def test_intervals_are_t_intervals_over_nets_and_welch_between_sets_of_nets():
    effect = Interval.across([1.0, 2.0, 3.0])
    assert effect.mean == 2.0 and effect.count == 3
    assert effect.high - effect.mean == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)  # t(2) = 4.3027, s = 1
    welch = Interval.difference([1.0, 2.0, 3.0], [0.0, 0.0, 1.0, 1.0])
    spread = np.sqrt(1.0 / 3 + (1.0 / 3) / 4)
    freedom = spread ** 4 / ((1.0 / 3) ** 2 / 2 + (1.0 / 12) ** 2 / 3)
    from scipy import stats
    assert welch.mean == pytest.approx(1.5) and welch.high - welch.mean == pytest.approx(stats.t.ppf(0.975, freedom) * spread)


def test_pruning_that_beats_dense_and_the_control_in_every_net_holds(tmp_path):
    run = Run(flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.40),
                                          "ThresNet": (1.25, 1.26, 1.50), "NoPrune": (1.18, 1.18, 1.18)}, nets=4, spread=0.002))
    measures, verdict = improvement_claim(run)
    versus_dense, versus_control = measured(measures, "FT", "NLL − dense"), measured(measures, "FT", "NLL − NoPrune")
    assert versus_dense.effect.mean == pytest.approx(-0.04, abs=0.004) and versus_dense.effect.count == 4  # (1.15 + 1.17) / 2 - 1.20
    assert versus_dense.effect.values == pytest.approx(versus_dense.effect.values)  # one value per net
    assert len(versus_control.effect.values) == 4 and versus_control.effect.mean == pytest.approx(-0.02, abs=0.004)
    assert versus_dense.verdict == versus_control.verdict == "holds"
    assert measured(measures, "WT", "NLL − dense").verdict == "does not hold"  # 0.055 above dense in every net
    assert verdict.verdict == "holds" and verdict.why.startswith("FT: holds")

    measures, verdict = potential_claim(run)
    assert measured(measures, "FT", "prune potential").effect.mean == pytest.approx(0.5)  # 1.17 <= 1.20 + 0.005 < 1.40
    assert measured(measures, "WT", "prune potential").effect.mean == 0.0
    assert verdict.verdict == "does not hold"


def test_a_chain_short_of_the_last_step_has_no_prune_potential(tmp_path):
    """A net still being pruned (or pruned only to moderate ratios) would report the potential of the
    steps it has: it is left out until its chain reaches the run's last step."""
    folder = flow_run(tmp_path / "run", {"dense": (1.20,), "ThresNet": (1.15, 1.16, 1.17)}, nets=3)
    metrics = folder / "metrics.csv"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(line for line in lines if not line.startswith("cascade,2,0,8642,ThresNet,3,")))  # net 2, step 3
    measures, _ = potential_claim(Run(folder))
    potential = measured(measures, "WT", "prune potential")
    assert potential.effect.count == 2 and potential.effect.mean == pytest.approx(0.9)


def test_two_nets_that_disagree_are_inconclusive(tmp_path):
    """The committed Gaussians run's case: lower than NoPrune in both nets, but with 2 nets the
    t interval (t(1) = 12.7) spans no effect."""
    run = Run(flow_run(tmp_path / "run", {"dense": (1.20,), "ThresNet": (1.15, 1.15, 1.40), "NoPrune": (1.156, 1.156, 1.18)},
                       nets=2, spread=0.003))
    measures, verdict = improvement_claim(run)
    assert measured(measures, "WT", "NLL − NoPrune").effect.high > 0 > measured(measures, "WT", "NLL − NoPrune").effect.mean
    assert verdict.verdict == "inconclusive"


def test_pruning_that_only_matches_the_extra_training_does_not_hold(tmp_path):
    run = Run(flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.19),
                                          "ThresNet": (1.16, 1.16, 1.2), "NoPrune": (1.10, 1.10, 1.10)}))
    measures, verdict = improvement_claim(run)
    assert measured(measures, "WT", "NLL − NoPrune").effect.mean == pytest.approx(0.06)
    assert verdict.verdict == "does not hold"
    _, verdict = potential_claim(run)
    assert verdict.verdict == "does not hold"  # PR 0.9 is within δ, but the schedule goes to 0.98


def test_an_effect_within_delta_does_not_hold(tmp_path):
    run = Run(flow_run(tmp_path / "run", {"dense": (1.20,), "ThresNet": (1.158, 1.158, 1.30), "NoPrune": (1.16, 1.16, 1.16)},
                       nets=6, spread=0.0005))
    measures, verdict = improvement_claim(run)
    effect = measured(measures, "WT", "NLL − NoPrune").effect
    assert -0.005 < effect.low < effect.high < 0.005
    assert verdict.verdict == "does not hold"


def test_the_rule_says_holds_without_an_effect_in_at_most_5_percent_of_runs():
    """Null simulation at the noise level of the committed Gaussians run (WT − NoPrune over the
    moderate steps: between-net and within-net standard deviations), both methods without an effect:
    the run-level verdict "holds" comes in at most 5 % of simulated runs (the rule's promise: 2.5 % per
    method), with 2 nets as committed and 6 as planned; an effect of 0.01 nats is found."""
    noise = improvement_noise(Run(REPO / "paper" / "reproduction" / "flow_gaussians"))
    between, within = max(noise.values(), key=lambda pair: pair[0] ** 2 + pair[1] ** 2 / 20)
    assert 0 <= between < 0.02 and 0.001 < within < 0.05  # nats: the committed run's noise
    generator = np.random.default_rng(0)
    for nets in (2, 6):
        holds, _ = simulate_improvement_claim(between, within, nets, 20, 0.0, 1500, generator)
        assert holds <= 0.05
    _, found = simulate_improvement_claim(between, within, 6, 20, -0.01, 300, generator)
    assert found >= 0.8


def test_variance_components_recover_the_simulated_spreads():
    generator = np.random.default_rng(1)
    table = generator.normal(0, 0.003, (400, 1)) + generator.normal(0, 0.008, (400, 20))
    between, within = variance_components(table)
    assert between == pytest.approx(0.003, rel=0.15) and within == pytest.approx(0.008, rel=0.05)


def test_pruning_against_a_converged_dense_baseline(tmp_path):
    """The pruned nets' per-net means against dense nets trained longer (Welch): better than the
    paper-schedule dense nets, not better than converged ones."""
    run = Run(flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.15, 1.40),
                                          "ThresNet": (1.13, 1.13, 1.40), "NoPrune": (1.15, 1.15, 1.15)}, nets=3, spread=0.002))
    baseline = Run(flow_run(tmp_path / "converged", {"dense": (1.1015, 1.1000, 1.1030)}, nets=3, epochs=500, mode="train"))
    measures, verdict = converged_claim(run, baseline)
    assert verdict.run.endswith("vs 500-epoch dense")
    converged = measured(measures, "dense", "converged dense NLL")
    assert converged.effect.count == 3 and converged.effect.mean == pytest.approx(1.1215)  # (1.1015 + 1.12 + 1.143) / 3
    assert measured(measures, "FT", "NLL − converged").effect.mean == pytest.approx(1.15 + 0.02 - 1.1215, abs=0.003)
    assert measured(measures, "NoPrune", "NLL − converged").verdict == ""  # shown, not judged
    assert verdict.verdict in ("does not hold", "inconclusive") and "holds" not in verdict.why.split(":")[1]


def test_claims_command_writes_markdown_and_csv(tmp_path):
    folder = flow_run(tmp_path / "run", {"dense": (1.20,), "FilterThresNet": (1.15, 1.17, 1.40),
                                         "ThresNet": (1.25, 1.26, 1.50), "NoPrune": (1.18, 1.18, 1.18)})
    assert claims.main([str(folder), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "claims.md").read_text()
    assert "| (a) | ToyGaussians ffjord_l4_h64_sigmoid_da |" in table and "| holds |" in table
    assert "FT NLL − dense, per-net mean over PR ≤ 0.8: -0.0400 [-0.0400, -0.0400] (n = 2) → holds" in table
    csv = (tmp_path / "out" / "claims.csv").read_text()
    assert csv.count("\n") == 1 + 4 + 4  # (d): dense, FT's potential and NLL there, WT's potential (0: no NLL there)
    assert "0.0200;0.0200" not in csv and "-0.04;-0.04" in csv  # the per-net values
    assert "so far" not in table  # the run has every row of its config


RUN = "ToyGaussians_ffjord_l4_h64_sigmoid_da_84d8a919273b"


def mode_collapse_csv(path: Path, passes: dict[str, tuple[tuple[int, ...], ...]]) -> Path:
    """A `paper.mode_collapse` table: per method, per net, whether its models at steps 8 and 9 (PR
    0.5 and 0.6) pass (two k rows per model, as the script writes several); dense nets one model each.
    Plus one FT model at PR 0.9, beyond the moderate range, that fails."""
    rows = []
    for method, per_net in passes.items():
        for net, verdicts in enumerate(per_net):
            for offset, verdict in enumerate(verdicts):
                for k in (2.0, 3.0):
                    rows.append({"run": RUN, "method": method, "mode": "train" if method == "dense" else "cascade", "net": net,
                                 "repetition": 0, "step": 0 if method == "dense" else 8 + offset, "k": k, "passes": verdict,
                                 "step_prune_ratio": 0.0 if method == "dense" else 0.5 + 0.1 * offset})
    rows += [{"run": RUN, "method": "FilterThresNet", "mode": "cascade", "net": 0, "repetition": 0, "step": 25, "k": 2.0,
              "passes": 0, "step_prune_ratio": 0.9}]
    path.write_text(rows_to_csv(rows))
    return path


def test_mode_collapse_claim_compares_per_net_pass_shares_with_dense_and_the_control(tmp_path):
    nets = 6
    table = mode_collapse_csv(tmp_path / "modes.csv", {"dense": ((0,),) * nets, "FilterThresNet": ((1, 1),) * nets,
                                                        "ThresNet": ((1, 0), (0, 0)) * 3, "NoPrune": ((0, 0),) * nets})
    measures, verdict = mode_collapse_claim(table)
    share = measured(measures, "FT", "share of moderate")
    assert share.effect.mean == 1.0 and share.effect.count == nets  # the FT model at PR 0.9 is left out
    assert measured(measures, "FT", "pass share − NoPrune").verdict == "holds"
    assert measured(measures, "WT", "pass share − dense").effect.mean == pytest.approx(0.25)
    assert verdict.verdict == "holds" and verdict.why.startswith("FT: holds") and verdict.run == "ToyGaussians ffjord_l4_h64_sigmoid_da"

    table = mode_collapse_csv(tmp_path / "modes.csv", {"dense": ((0,),) * nets, "FilterThresNet": ((1, 1),) * nets,
                                                        "NoPrune": ((1, 1),) * nets})
    assert mode_collapse_claim(table)[1].verdict == "does not hold"  # the control passes as often: extra training
    table = mode_collapse_csv(tmp_path / "modes.csv", {"dense": ((1,),) * nets, "FilterThresNet": ((1, 1),) * nets,
                                                        "NoPrune": ((1, 1),) * nets})
    measures, verdict = mode_collapse_claim(table)
    assert verdict.verdict == "does not apply" and not any(m.verdict for m in measures)


def flatness_csv(path: Path, models: dict[str, tuple[tuple[float, float], ...]], nets: int = 1,
                 ratios: tuple[float, ...] = (0.26, 0.48, 0.75, 0.9)) -> Path:
    """A `paper.flatness` table: for each of `nets` nets (net n scaling every λ_max by 1 + n/10, so
    the nets differ), per method, per step (1, 2, ... at `ratios`), (λ_max, mean λ_max of the
    random-subset control); NoPrune rows give λ_max only."""
    rows = []
    for net in range(nets):
        scale = 1 + net / 10
        for method, values in models.items():
            for step, (lambda_max, subset) in enumerate(values, start=1):
                rows.append({"run": RUN, "mode": "cascade", "method": method, "net": net, "step": step,
                             "step_prune_ratio": ratios[step - 1], "lambda_max": lambda_max * scale,
                             "control_lambda_max_mean": subset * scale if subset != "" else ""})
    path.write_text(rows_to_csv(rows))
    return path


def test_flatness_claim_takes_per_net_medians_of_log_ratios_over_moderate_models(tmp_path):
    table = flatness_csv(tmp_path / "flat.csv", {"FilterThresNet": ((1.0, 2.0), (1.0, 4.0), (3.0, 2.0), (50.0, 1.0)),
                                                  "ThresNet": ((2.0, 1.0), (2.0, 1.0), (2.0, 1.0), (2.0, 1.0)),
                                                  "NoPrune": ((2.0, ""), (2.0, ""), (2.0, ""), (2.0, ""))}, nets=3)
    measures, verdict = flatness_claim(table)
    random_subset = measured(measures, "FT", "λ_max / random-subset")
    assert random_subset.effect.mean == pytest.approx(0.5)  # the median of 0.5, 0.25, 1.5; PR 0.9 (50×) left out
    assert random_subset.effect.count == 3 and random_subset.verdict == "holds"  # the same in every net: a zero-width interval
    assert measured(measures, "FT", "λ_max / NoPrune").effect.mean == pytest.approx(0.5)
    assert measured(measures, "WT", "λ_max / random-subset").verdict == "does not hold"  # twice as sharp
    assert verdict.verdict == "holds" and verdict.why.startswith("FT: holds")

    # flatter than its random subsets, but not than the equally trained control: not flatter by pruning
    table = flatness_csv(tmp_path / "flat.csv", {"FilterThresNet": ((1.0, 2.0), (1.0, 2.0)), "NoPrune": ((0.5, ""), (0.5, ""))}, nets=3)
    assert flatness_claim(table)[1].verdict == "does not hold"
    table = flatness_csv(tmp_path / "flat.csv", {"FilterThresNet": ((1.0, 2.0), (3.0, 2.0), (3.0, 2.0)),
                                                  "NoPrune": ((2.0, ""), (2.0, ""), (2.0, ""))}, nets=1)
    assert flatness_claim(table)[1].verdict == "inconclusive"  # one net: no interval


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
    mode_collapse_csv(own[0], {"dense": ((1,), (1,)), "FilterThresNet": ((1,), (1,)), "NoPrune": ((1,), (1,))})
    flatness_csv(own[1], {"FilterThresNet": ((1.0, 2.0), (1.0, 2.0)), "NoPrune": ((0.5, ""), (0.5, ""))}, nets=2)
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
