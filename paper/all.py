"""Every figure and table the runs of TARGET support, in one command.

    python -m paper.all TARGET [key.path=value ...] [--out DIR] [--style screen|paper]

TARGET is a run folder, a results root or a config file. Per run (into --out, default
`<run folder>/paper`):

* prune curves (`paper.prune_curves`), for every run;
* sample densities / decision boundaries, vector fields and trajectories (`paper.samples_2d`) and
  loss-surface flatness (`paper.flatness`), for runs on 2-D toy sets (for flows only at the prune
  ratios of `--flow-flatness-ratios`: their iterative Hessian takes minutes per model on a CPU; the
  Hessian of the large tabular and image flows is left to an explicit `python -m paper.flatness RUN`);
* mode collapse (`paper.mode_collapse`), for flows on ToyGaussians and ToyGaussiansSpiral.

Over runs (into --out, default `<TARGET>/paper` for a folder, else `paper/` next to the runs):

* sweeps (`paper.sweeps`): prune potential and error vs parameters, over the runs of every dataset
  that has at least two runs;
* tables (`paper.tables`), over the runs on tabular and image datasets.

`--style` applies to every figure (it is passed on to the scripts). A run a script does not fit
is skipped with a note. Exit status 1 if any step failed (the others
still run).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from experiment.analysis.mode_collapse import unmeasurable_reason
from experiment.analysis.two_dimensional import two_d_family
from experiment.data import DATASETS
from experiment.results import Run
from paper import flatness, mode_collapse, samples_2d
from paper.common import command, collection_folder, find_runs, output_folder, parse_arguments
from paper.prune_curves import write_prune_curve
from paper.sweeps import write_sweeps
from paper.tables import write_tables


def is_tabular_or_image(run: Run) -> bool:
    info = DATASETS.get(run.settings.network.dataset)
    return info is not None and (info.image_shape is not None or info.dim > 2)


class Steps:
    """Runs the steps, reporting each; remembers failures."""

    def __init__(self):
        self.failed: list[str] = []

    def note(self, text: str) -> None:
        print(f"note: {text}")

    def call(self, what: str, function, *arguments) -> None:
        try:
            result = function(*arguments)
        except SystemExit as stop:  # a script's own refusal, e.g. "no results yet"
            if isinstance(stop.code, str):
                self.note(f"{what} skipped: {stop.code}")
            elif stop.code not in (0, None):
                self.failed.append(what)
                print(f"error: {what} exited with status {stop.code}", file=sys.stderr)
            return
        except Exception:  # noqa: BLE001 - report and go on with the other figures
            self.failed.append(what)
            print(f"error: {what} failed:\n{traceback.format_exc()}", file=sys.stderr)
            return
        if isinstance(result, int) and result != 0:
            self.failed.append(what)
            print(f"error: {what} returned status {result}", file=sys.stderr)
        elif isinstance(result, list):
            for path in result:
                print(path)

    def script(self, module, run: Run, folder: Path, style: str, *options: str) -> None:
        """`module.main([run folder, --out, folder, --style, style, *options])` of one of the paper scripts."""
        self.call(f"{module.__name__} on {run.path}", module.main,
                  [str(run.path), "--out", str(folder), "--style", style, *options])


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(__doc__.split("\n\n")[0], argv, **{
        "--flow-flatness-ratios": dict(type=float, nargs="*", default=[],
                                       help="prune ratios whose Hessian is analysed for 2-D flows (default: none; "
                                            "the iterative Hessian of a toy flow takes several minutes per model on a CPU)")})
    runs = find_runs(arguments.target, arguments.overrides)
    steps = Steps()

    for run in runs:
        folder = output_folder(arguments.out, run)
        network = run.settings.network
        print(f"== {network.name} on {network.dataset} ({run.path})")
        steps.call(f"prune curve of {run.path}", write_prune_curve, run, folder)
        family = two_d_family(run)
        if family is not None:
            steps.script(samples_2d, run, folder, arguments.style)
            if family == "node":  # a classifier: its Hessian is formed in full, seconds per model
                steps.script(flatness, run, folder, arguments.style)
            elif arguments.flow_flatness_ratios:  # the iterative Hessian of a flow takes minutes per model
                steps.script(flatness, run, folder, arguments.style, "--ratios", *map(str, arguments.flow_flatness_ratios))
            else:
                steps.note(f"flatness of flows is opt-in (--flow-flatness-ratios 0.6 0.92): skipped for {run.path}")
        else:
            steps.note(f"{network.dataset} is not a 2-D toy set: no 2-D figures; flatness left to "
                       f"python -m paper.flatness {run.path}")
        if unmeasurable_reason(run) is None:
            steps.script(mode_collapse, run, folder, arguments.style)

    by_dataset: dict[str, list[Run]] = {}
    for run in runs:
        by_dataset.setdefault(run.settings.network.dataset, []).append(run)
    sweep_runs = [run for members in by_dataset.values() if len(members) >= 2 for run in members]
    if sweep_runs:
        print(f"== sweeps over {len(sweep_runs)} runs")
        steps.call("sweeps", write_sweeps, sweep_runs, collection_folder(arguments.out, arguments.target, runs))
    else:
        steps.note("no dataset with two or more runs: no sweep figures")
    table_runs = [run for run in runs if is_tabular_or_image(run)]
    if table_runs:
        print(f"== tables over {len(table_runs)} runs")
        steps.call("tables", write_tables, table_runs, collection_folder(arguments.out, arguments.target, runs))
    else:
        steps.note("no tabular or image runs: no results table (python -m paper.tables TARGET makes one anyway)")

    if steps.failed:
        print(f"{len(steps.failed)} step(s) failed: {'; '.join(steps.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(command(main))
