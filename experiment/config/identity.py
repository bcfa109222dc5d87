"""A run's identity: the run id, a short hash of the parts of a resolved config that determine its
trained models, and the run folder it names. Two configs with the same id are the same run, so a
run resumes from, and adds to, what is already computed (docs/RESULTS.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from experiment.config.defaults import DEFAULT_MAX_STEPS, DEFAULT_SOLVER_BACKEND
from experiment.config.settings import settings_of
from experiment.data import DATASETS

# Keys that only say which or how many models to compute, where to put them, how to submit them or
# what to refuse: not part of the run id, so adding a method, a net or a ratio to a finished run, or
# running it elsewhere, reuses everything already computed.
RUN_ID_EXCLUDED_KEYS = ("experiments", "directories", "device", "launcher", "limits")


def run_id(config: dict) -> str:
    """A short stable hash of the parts of the resolved config that determine the trained models,
    and of the dataset's revision where it is above 1 (so runs on data that has since changed are
    never reused). `network.maxSteps`, `network.solverBackend` and `tf32` count only when they differ
    from their defaults, so the run ids of results made before these keys existed stay what they were."""
    relevant = {key: value for key, value in config.items() if key not in RUN_ID_EXCLUDED_KEYS}
    network = relevant["network"]
    relevant["network"] = {key: value for key, value in network.items()  # added later: runs made before keep their id
                           if not (key == "maxSteps" and value == DEFAULT_MAX_STEPS)
                           and not (key == "solverBackend" and value == DEFAULT_SOLVER_BACKEND)}
    if relevant.get("tf32") is False:  # added later, likewise; TF32 changes GPU numerics, so `true` is another run
        del relevant["tf32"]
    revision = DATASETS[relevant["network"]["dataset"]].revision
    if revision > 1:
        relevant["datasetRevision"] = revision
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_folder(config: dict) -> Path:
    """{directories.results}/{dataset}/{network name}/{run id} of a resolved config."""
    settings = settings_of(config)
    return Path(settings.directories.results) / settings.network.dataset / settings.network.name / run_id(config)
