"""Carries the paper-schedule runs of `param/reproduction/` between machines through git: their
results, and what resuming them and the analyses of paper/ need.

    python -m paper.reproduction_state save [--results-only] [NAME ...]  # data/reproduction/... → paper/reproduction/NAME/
    python -m paper.reproduction_state restore [NAME ...]                # paper/reproduction/NAME/ → data/reproduction/...

NAME: a config of param/reproduction/ without `.yaml` (default: all of them); run from the repository
root, where the configs put their results (`./data/reproduction`). Configs whose run folder is the
same (they differ only in `experiments`, e.g. one that adds nets to another's run) share one
committed folder, named after the first of them in name order; the run counts as unfinished while
any of them has jobs left.

`save` copies the run folder's config.yaml, requests.yaml (what was asked of it, and by which
command), metrics.csv, curves/ and log.txt, and into `state/`:
data_split.npz and the checkpoints the analyses read — the dense nets, every net's models at the
steps `paper.flatness` measures by default and net 0's that `paper.samples_2d` shows — and, while
some of the run's jobs are unfinished, what resuming needs besides: every progress file (models
mid-training) and each chain's last recorded step checkpoint (the chain goes on from it:
`experiment.chain.resume_step`). A megabyte or two instead of every checkpoint. The other step
checkpoints are left out, so run `python -m paper.mode_collapse` (every model) and `python -m
paper.flatness` (models of other steps, if asked for) on the run before saving: their caches
(committed beside their tables) keep each model's measurements, keyed by checkpoint contents.
`--results-only` leaves `state/` out (once the analyses are committed).

`restore` copies both back into a run folder that has no metrics.csv yet (a fresh clone), after which
`python -m experiment.main param/reproduction/NAME.yaml` resumes the run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from experiment.analysis.flatness import select_rows
from experiment.analysis.two_dimensional import GRID_RATIOS, spread_ratios
from experiment.config import load_configs
from experiment.plan import Plan, make_plan
from experiment.report import is_plotted
from experiment.plan import step_prune_ratio
from experiment.results.tree import RunDir, is_failed, model_name
from experiment.config.identity import run_folder
from experiment.progress import is_finished
from paper.common import command

CONFIGS = Path("param/reproduction")
COMMITTED = Path("paper/reproduction")
RESULTS = ("config.yaml", "requests.yaml", "metrics.csv", "log.txt")


def sample_grid_steps(plan: Plan, rows: list[dict]) -> set[str]:
    """The models of net 0 that `paper.samples_2d`'s default grid will show once the run is finished:
    those at GRID_RATIOS of the plan's plotted step ratios, spread evenly."""
    plotted = [ratio for ratio in plan.prune_ratios if is_plotted(plan.settings.experiments.plotting, ratio)]
    shown = {round(ratio, 9) for ratio in spread_ratios(plotted, GRID_RATIOS)}
    return {model_name(row) for row in rows
            if row["method"] != "dense" and int(row["net"]) == 0 and round(step_prune_ratio(row), 9) in shown}


def kept_checkpoints(run: RunDir, plan: Plan, resuming: bool) -> list[str]:
    """The models whose checkpoints the analyses need and, if `resuming`, those the chains go on from
    (see the module docstring)."""
    rows = [row for row in run.read_metrics() if not is_failed(row)]
    names = {model_name(row) for row in rows if row["method"] == "dense"}
    names |= {model_name(row) for net in {int(row["net"]) for row in rows} for row in select_rows(rows, net=net)}
    names |= sample_grid_steps(plan, rows)
    chains: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["method"] != "dense" and run.checkpoint(model_name(row)).exists():
            chains.setdefault((row["mode"], row["method"], row["net"], row["repetition"]), []).append(row)
    if resuming:
        names |= {model_name(max(chain, key=lambda row: int(row["step"]))) for chain in chains.values()}
    return sorted(name for name in names if run.checkpoint(name).exists())


def save(configs: Sequence[dict], target: Path, results_only: bool = False) -> None:
    """The run of the resolved `configs` (one run folder): its results and (unless `results_only`) its
    state into `target`."""
    run, name = RunDir(run_folder(configs[0])), target.name
    if not run.metrics_file.exists():
        print(f"{name}: no run in {run.path} here; nothing saved")
        return
    target.mkdir(parents=True, exist_ok=True)
    for file in RESULTS:
        if (run.path / file).exists():
            shutil.copy2(run.path / file, target / file)
    shutil.rmtree(target / "curves", ignore_errors=True)  # the run's curves, not also those of an earlier copy
    shutil.copytree(run.path / "curves", target / "curves")
    state = target / "state"
    shutil.rmtree(state, ignore_errors=True)
    plans = [make_plan(config) for config in configs]
    resuming = not all(is_finished(plan, run) for plan in plans)
    if results_only:
        print(f"{name}: results copied to {target} ({'unfinished' if resuming else 'finished'})")
        return
    (state / "checkpoints").mkdir(parents=True)
    if run.split_file.exists():
        shutil.copy2(run.split_file, state / run.split_file.name)
    else:
        print(f"{name}: {run.split_file} is missing; the state is saved without it (the split is drawn again from the "
              "config's seed when the run goes on)")
    checkpoints = kept_checkpoints(run, plans[0], resuming)
    for model in checkpoints:
        shutil.copy2(run.checkpoint(model), state / "checkpoints" / run.checkpoint(model).name)
    progress = sorted((run.path / "progress").glob("*.pt")) if resuming and (run.path / "progress").exists() else []
    if progress:
        (state / "progress").mkdir()
        for path in progress:
            shutil.copy2(path, state / "progress" / path.name)
    size = sum(path.stat().st_size for path in state.rglob("*") if path.is_file())
    print(f"{name}: results and state ({'unfinished' if resuming else 'finished'}: {len(checkpoints)} checkpoints, "
          f"{len(progress)} progress files, {size / 1e6:.1f} MB) copied to {target}")


def restore(config: dict, source: Path) -> None:
    """What `save` put into `source` copied into the run folder of the resolved `config`."""
    run, name = RunDir(run_folder(config)), source.name
    if run.metrics_file.exists():
        print(f"{name}: {run.metrics_file} exists; nothing restored (move the run folder aside to restore)")
        return
    run.path.mkdir(parents=True, exist_ok=True)
    for file in RESULTS:
        if (source / file).exists():
            shutil.copy2(source / file, run.path / file)
    shutil.copytree(source / "curves", run.path / "curves", dirs_exist_ok=True)
    if (source / "state").exists():
        shutil.copytree(source / "state", run.path, dirs_exist_ok=True)
    print(f"{name}: restored into {run.path}")


def runs_of(names: Sequence[str]) -> dict[str, list[dict]]:
    """The runs that the configs `names` of param/reproduction/ make: each run's committed name (the
    first, in name order, of all the configs there whose run folder it is) → those configs."""
    groups: dict[Path, tuple[str, list[dict]]] = {}
    asked = set()
    for name in sorted(path.stem for path in CONFIGS.glob("*.yaml")):
        config = load_configs(CONFIGS / f"{name}.yaml", [])[0]
        group = groups.setdefault(run_folder(config), (name, []))
        group[1].append(config)
        if name in names:
            asked.add(group[0])
    return {name: configs for name, configs in groups.values() if name in asked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("names", nargs="*", help="configs of param/reproduction/ without .yaml (default: all)")
    parser.add_argument("--results-only", action="store_true", help="save: leave the checkpoints and progress files out")
    arguments = parser.parse_args(argv)
    known = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    unknown = [name for name in arguments.names if name not in known]
    if unknown:
        parser.error(f"no config {', '.join(unknown)} in {CONFIGS} (there are: {', '.join(known)})")
    for name, configs in runs_of(arguments.names or known).items():
        if arguments.action == "save":
            save(configs, COMMITTED / name, arguments.results_only)
        else:
            restore(configs[0], COMMITTED / name)
    return 0


if __name__ == "__main__":
    sys.exit(command(main))
