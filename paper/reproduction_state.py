"""Carries the paper-schedule runs of `param/reproduction/` between machines through git: their
results, and while a run is unfinished, what resuming it and the analyses of paper/ need.

    python -m paper.reproduction_state save [NAME ...]     # data/reproduction/... → paper/reproduction/NAME/
    python -m paper.reproduction_state restore [NAME ...]  # paper/reproduction/NAME/ → data/reproduction/...

NAME: a config of param/reproduction/ without `.yaml` (default: all of them); run from the repository
root, where the configs put their results (`./data/reproduction`).

`save` copies the run folder's config.yaml, metrics.csv, curves/ and log.txt, and, while some of its
jobs are unfinished, the resume state into `resume/`: data_split.npz, the dense checkpoints, every
progress file (models mid-training), each chain's last recorded step checkpoint (the chain goes on from
it: `experiment.runner.resume_step`) and net 0's checkpoints at the steps `paper.flatness` measures by
default — a few hundred kB instead of every checkpoint. The other step checkpoints are left out, so run
`python -m paper.mode_collapse` on the run before saving: its cache keeps each model's mode shares,
keyed by checkpoint contents. Once the run is finished, `resume/` is removed.

`restore` copies both back into a run folder that has no metrics.csv yet (a fresh clone), after which
`python -m experiment.main param/reproduction/NAME.yaml` resumes the run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from experiment.analysis.flatness import select_rows
from experiment.config import load_configs
from experiment.plan import make_plan
from experiment.results.tree import RunDir, is_failed, model_name, run_folder
from experiment.runner import is_finished

CONFIGS = Path("param/reproduction")
COMMITTED = Path("paper/reproduction")
RESULTS = ("config.yaml", "metrics.csv", "log.txt")


def resume_checkpoints(run: RunDir) -> list[str]:
    """The models whose checkpoints resuming and the analyses need (see the module docstring)."""
    rows = [row for row in run.read_metrics() if not is_failed(row)]
    names = {model_name(row) for row in rows if row["method"] == "dense"}
    chains: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["method"] != "dense":
            chains.setdefault((row["mode"], row["method"], row["net"], row["repetition"]), []).append(row)
    for chain in chains.values():
        kept = [row for row in chain if run.checkpoint(model_name(row)).exists()]
        if kept:
            names.add(model_name(max(kept, key=lambda row: int(row["step"]))))
    names |= {model_name(row) for row in select_rows(rows, net=0)}
    return sorted(name for name in names if run.checkpoint(name).exists())


def save(config: dict, target: Path) -> None:
    """The run of the resolved `config`: its results and, while unfinished, its resume state into `target`."""
    run, name = RunDir(run_folder(config)), target.name
    if not run.metrics_file.exists():
        print(f"{name}: no run in {run.path} here; nothing saved")
        return
    target.mkdir(parents=True, exist_ok=True)
    for file in RESULTS:
        shutil.copy2(run.path / file, target / file)
    shutil.copytree(run.path / "curves", target / "curves", dirs_exist_ok=True)
    resume = target / "resume"
    shutil.rmtree(resume, ignore_errors=True)
    if is_finished(make_plan(config), run):
        print(f"{name}: finished; results copied to {target}")
        return
    (resume / "checkpoints").mkdir(parents=True)
    shutil.copy2(run.split_file, resume / run.split_file.name)
    checkpoints = resume_checkpoints(run)
    for model in checkpoints:
        shutil.copy2(run.checkpoint(model), resume / "checkpoints" / run.checkpoint(model).name)
    progress = sorted((run.path / "progress").glob("*.pt")) if (run.path / "progress").exists() else []
    if progress:
        (resume / "progress").mkdir()
        for path in progress:
            shutil.copy2(path, resume / "progress" / path.name)
    size = sum(path.stat().st_size for path in resume.rglob("*") if path.is_file())
    print(f"{name}: results and resume state ({len(checkpoints)} checkpoints, {len(progress)} progress files, "
          f"{size / 1e6:.1f} MB) copied to {target}")


def restore(config: dict, source: Path) -> None:
    """What `save` put into `source` copied into the run folder of the resolved `config`."""
    run, name = RunDir(run_folder(config)), source.name
    if run.metrics_file.exists():
        print(f"{name}: {run.metrics_file} exists; nothing restored (move the run folder aside to restore)")
        return
    run.path.mkdir(parents=True, exist_ok=True)
    for file in RESULTS:
        shutil.copy2(source / file, run.path / file)
    shutil.copytree(source / "curves", run.path / "curves", dirs_exist_ok=True)
    if (source / "resume").exists():
        shutil.copytree(source / "resume", run.path, dirs_exist_ok=True)
    print(f"{name}: restored into {run.path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("names", nargs="*", help="configs of param/reproduction/ without .yaml (default: all)")
    arguments = parser.parse_args(argv)
    names = arguments.names or sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    for name in names:
        config = load_configs(CONFIGS / f"{name}.yaml", [])[0]
        (save if arguments.action == "save" else restore)(config, COMMITTED / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
