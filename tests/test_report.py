"""The end-of-run summary only shows the models the current plan asks for, averaged over nets, in the
quantity the paper/ figures show (top-1 error in % for classifiers, NLL for flows)."""

from pathlib import Path

import pytest

from experiment.config import load_configs
from experiment.config.settings import PlottedKeepRatios
from experiment.plan import make_plan
from conftest import tiny_config
from experiment.report import (dense_label, dense_point, format_table, plotted_lines, plotted_prune_ratios, pruned_points,
                               quantity_of)
from experiment.results import RunDir
from experiment.report import report

QUICKSTART = Path(__file__).resolve().parents[1] / "param" / "quickstart.yaml"


def row(mode, method, net, step, target, nll, repetition=0):
    return dict(mode=mode, method=method, net=net, repetition=repetition, step=step, target_prune_ratio=target,
                prune_ratio=target, nll=nll, nonzero_params=100, num_params=100)


@pytest.fixture
def plan():
    config = load_configs(QUICKSTART, ["experiments.numNets=2", "experiments.methods=[ThresNet]",
                                       "experiments.spacing=[{type: manual, values: [0.5, 0.25]}]"])[0]
    return make_plan(config)


def test_rows_of_other_modes_nets_methods_and_ratio_lists_are_left_out(plan):
    wanted = [row("train", "dense", 0, 0, 0.0, 1.0), row("train", "dense", 1, 0, 0.0, 1.2),
              row("cascade", "ThresNet", 0, 1, 0.5, 1.1), row("cascade", "ThresNet", 1, 1, 0.5, 1.3),
              row("cascade", "ThresNet", 0, 2, 0.75, 1.4)]
    others = [row("train", "dense", 2, 0, 0.0, 9.0),  # a net beyond numNets
              row("retrain", "ThresNet", 0, 1, 0.5, 9.0),  # another mode in the same run folder
              row("cascade", "FilterThresNet", 0, 1, 0.5, 9.0),  # a method not asked for
              row("cascade", "ThresNet", 0, 3, 0.9, 9.0),  # a step beyond the ratio list
              row("cascade", "ThresNet", 1, 2, 0.6, 9.0),  # an earlier ratio list
              row("cascade", "ThresNet", 0, 1, 0.5, 9.0, repetition=1)]  # a repetition not asked for
    assert plan.planned_rows(wanted + others) == wanted


def test_summary_averages_over_nets_with_dense_as_step_zero(plan):
    rows = [row("train", "dense", 0, 0, 0.0, 1.0), row("train", "dense", 1, 0, 0.0, 1.2),
            row("cascade", "ThresNet", 0, 1, 0.5, 1.1), row("cascade", "ThresNet", 1, 1, 0.5, 1.3)]
    rows = plan.planned_rows(rows)
    dense, lines = dense_point(rows, "nll"), pruned_points(rows, "nll")
    assert (dense.prune_ratio_mean, dense.value_mean, dense.value_std) == pytest.approx((0.0, 1.1, 0.1))
    (first,) = lines[("cascade", "ThresNet")]
    assert (first.target_prune_ratio, first.prune_ratio_mean, first.value_mean, first.value_std) == pytest.approx((0.5, 0.5, 1.2, 0.1))
    assert first.num_nets == 2
    table = format_table(dense, lines, quantity_of("nll")[0])
    assert "1.2000 ± 0.1000" in table and "ThresNet test NLL (nats)" in table


def test_a_dense_only_run_gets_a_dense_column():
    rows = [row("train", "dense", 0, 0, 0.0, 1.0), row("train", "dense", 1, 0, 0.0, 1.2)]
    table = format_table(dense_point(rows, "nll"), pruned_points(rows, "nll"), quantity_of("nll")[0]).splitlines()
    assert len(table) == 2 and "dense test NLL (nats)" in table[0]
    assert "1.1000 ± 0.1000" in table[1]


def test_a_classifiers_end_of_run_table_shows_top1_error_in_percent(tmp_path, capsys):
    """As the figures do (paper.common.quantity): 100 · (1 − top1_acc), the columns aligned under a
    header naming the quantity."""
    config = load_configs(tiny_config(tmp_path / "moons.yaml", tmp_path / "results", nets=2),
                          ["experiments.mode=cascade", "experiments.methods=[ThresNet, FilterThresNet]",
                           "experiments.spacing=[{type: manual, values: [0.5]}]"])[0]
    plan = make_plan(config)
    run = RunDir(plan.run_folder)
    for net, accuracy in enumerate((0.9, 0.8)):
        run.upsert_metrics(row("train", "dense", net, 0, 0.0, None) | {"top1_acc": accuracy})
        for method in ("ThresNet", "FilterThresNet"):
            run.upsert_metrics(row("cascade", method, net, 1, 0.5, None) | {"top1_acc": accuracy - 0.2})
    report(plan, run)
    title, caption, header, dense, pruned = capsys.readouterr().out.strip().splitlines()
    assert title.startswith("node_l2_h4_tanh_da on ToyMoons, run /")
    assert caption == "test top-1 error (%): mean ± std over nets, the achieved prune ratio as PR:"
    assert header.split() == ["target", "PR", *"FilterThresNet test top-1 error (%) ThresNet test top-1 error (%)".split()]
    assert dense.count("15.0000 ± 5.0000") == 2 and pruned.count("35.0000 ± 5.0000") == 2
    assert len({len(header), len(dense), len(pruned)}) == 1  # columns aligned


def test_plotting_bounds_keep_ratios_of_the_figures():
    """`experiments.plotting` bounds keep ratios, like `spacing`: keep 0.02 … 0.85 shows prune ratios 15 % … 98 %."""
    plotting = PlottedKeepRatios(min_val=0.02, max_val=0.85)
    assert plotted_prune_ratios(plotting) == pytest.approx((0.15, 0.98))
    rows = [row("cascade", "ThresNet", 0, step, target, 1.0) for step, target in enumerate([0.1, 0.15, 0.5, 0.98, 0.99], 1)]
    lines = plotted_lines(plotting, pruned_points(rows, "nll"))
    assert [point.target_prune_ratio for point in lines[("cascade", "ThresNet")]] == [0.15, 0.5, 0.98]
    assert plotted_lines(PlottedKeepRatios(min_val=0.6, max_val=0.7), pruned_points(rows, "nll")) == {}  # PR 30–40 %


def test_the_dense_line_says_how_many_nets_and_epochs():
    two = dense_point([row("train", "dense", 0, 0, 0.0, 1.0), row("train", "dense", 1, 0, 0.0, 1.2)], "nll")
    one = dense_point([row("train", "dense", 0, 0, 0.0, 1.0)], "nll")
    assert dense_label(two, 500) == "dense, 500 epochs (2 nets)"
    assert dense_label(one) == "dense (1 net)"  # the end-of-run plot, which does not say
