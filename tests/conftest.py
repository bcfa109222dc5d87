"""Shared helpers for the end-to-end tests: tiny configs, running the CLI in a subprocess, and looking
at results trees."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PARAM = REPO / "param"
NODE_BASE = PARAM / "toy" / "node" / "base.yaml"

# A node classifier small enough that an epoch on ToyMoons takes a fraction of a second.
TINY_NETWORK = "node_l2_h4_tanh_da"

# How long a test waits for a subprocess (or for it to reach a point) before it calls it hung. Not a
# speed requirement: generous enough for a machine busy with other work; the tests bound their work
# by epochs and steps instead.
HANG_TIMEOUT = 3600.0


def hang_message(what: str) -> str:
    """The failure text of a wait that ran past HANG_TIMEOUT."""
    return (f"{what} did not finish within {HANG_TIMEOUT:.0f} s: it hangs, or this machine is far more loaded "
            "than any test needs")


def write_yaml(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def tiny_config(path: Path, results: Path, *, epochs: int = 3, nets: int = 2, name: str = TINY_NETWORK,
                dataset: str = "ToyMoons", training: dict | None = None, **sections: dict) -> Path:
    """Writes a config that includes the repository's node base (by absolute path) and makes it tiny:
    dense training only, `nets` nets of `epochs` epochs, results under `results`."""
    content = {
        "file": str(NODE_BASE),
        "network": {"name": name, "dataset": dataset},
        "training": {"numEpochs": epochs, "batchSize": 128, **(training or {})},
        "experiments": {"mode": "train", "numNets": nets},
        "directories": {"results": str(results), "training_data": str(results.parent / "training_data")},
    }
    for section, values in sections.items():
        content.setdefault(section, {}).update(values)
    return write_yaml(path, content)


def cli_env() -> dict[str, str]:
    """Environment for a CLI subprocess: the repository importable, one intra-op thread (on a loaded
    2-core machine OpenMP's spinning threads make tiny models 10-100x slower)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli_command(config: Path | str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "experiment.main", str(config), *arguments]


def run_cli(config: Path | str, *arguments: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Runs `python -m experiment.main CONFIG ARGUMENTS...` to completion (output captured as text)."""
    return run_process(cli_command(config, *arguments), cwd=cwd)


def run_process(command: list[str], **options) -> subprocess.CompletedProcess:
    """`subprocess.run(command)` with output captured as text and the environment of `cli_env`; a
    process still running after HANG_TIMEOUT fails the test as hung."""
    try:
        return subprocess.run(command, env=options.pop("env", cli_env()), capture_output=True, text=True,
                              timeout=HANG_TIMEOUT, **options)
    except subprocess.TimeoutExpired:
        pytest.fail(hang_message(" ".join(map(str, command))))


def describe(process: subprocess.CompletedProcess) -> str:
    """The tail of a finished process's output, for assertion messages."""
    return f"exit {process.returncode}\n--- stdout ---\n{process.stdout[-3000:]}\n--- stderr ---\n{process.stderr[-3000:]}"


def run_folders(results: Path) -> list[Path]:
    return sorted(config.parent for config in Path(results).glob("*/*/*/config.yaml"))


def the_run_folder(results: Path) -> Path:
    folders = run_folders(results)
    assert len(folders) == 1, f"expected one run folder under {results}, found {folders}"
    return folders[0]


def file_states(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file below `folder` → (mtime_ns, sha256 of its bytes)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(Path(folder).rglob("*")) if path.is_file()
    }


def load_weights(path: Path) -> dict:
    """A checkpoint loaded the way docs/RESULTS.md promises it can be: plain tensors and builtins only."""
    return torch.load(path, map_location="cpu", weights_only=True)


# Under pytest-xdist (pytest.ini) each test file runs on one worker, the files in collection order:
# the longest file goes first, so that no worker is left running it alone at the end.
LONGEST_FIRST = "test_digits_end_to_end.py"


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name != LONGEST_FIRST)  # a stable sort: the rest keep their order


def pytest_configure(config):
    """One intra-op thread for every test that computes in-process (see cli_env for subprocesses)."""
    torch.set_num_threads(1)
