"""The results tree (SPEC §7): one folder per resolved experiment,

    {directories.results}/{dataset}/{network name}/{run id}/
        config.yaml             the resolved config of the run
        data_split.npz          train/validation indices (kept so resumed runs use the same split)
        metrics.csv             one row per evaluated model (see METRIC_KEY for what identifies a row)
        curves/{model}.csv      per-epoch training curves
        checkpoints/{model}.pt  final weights (+ masks for pruned models)
        progress/{model}.pt     the in-progress training state of a model (deleted when it finishes)
        log.txt                 what the run did

The run id is a hash of the resolved config without the keys that only say *which* or *how many*
models to compute or where to put them (`experiments`, `directories`, `device`), so adding a method,
a net or a ratio to a finished run reuses everything already computed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import yaml

from experiment.data import DATASETS
from experiment.files import atomic_write_bytes, atomic_write_text

RUN_ID_EXCLUDED_KEYS = ("experiments", "directories", "device")
METRIC_KEY = ("mode", "method", "net", "repetition", "step")


def model_name(key: dict) -> str:
    """The file stem of the model a metrics row (or its METRIC_KEY values) describes:
    `dense_net{n}` or `{mode}_{method}_net{n}_rep{r}_step{k}`."""
    if key["method"] == "dense":
        return f"dense_net{key['net']}"
    return f"{key['mode']}_{key['method']}_net{key['net']}_rep{key['repetition']}_step{key['step']}"


def run_id(config: dict) -> str:
    """A short stable hash of the parts of the resolved config that determine the trained models,
    and of the dataset's revision where it is above 1 (so runs on data that has since changed are
    never reused)."""
    relevant = {key: value for key, value in config.items() if key not in RUN_ID_EXCLUDED_KEYS}
    revision = DATASETS[config["network"]["dataset"]].revision
    if revision > 1:
        relevant["datasetRevision"] = revision
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_folder(config: dict) -> Path:
    network = config["network"]
    return Path(config["directories"]["results"]) / network["dataset"] / network["name"] / run_id(config)


class RunDir:
    """Paths and crash-safe reads/writes inside one run folder."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, config: dict) -> "RunDir":
        """The run folder of `config`, its config.yaml (re)written: the parts that define the run
        are the same every time, `experiments` and `directories` say what the latest call asked for."""
        run = cls(run_folder(config))
        text = yaml.safe_dump(config, sort_keys=False)
        if not run.config_file.exists() or run.config_file.read_text() != text:
            atomic_write_text(run.config_file, text)
        return run

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def log_file(self) -> Path:
        return self.path / "log.txt"

    def checkpoint(self, model: str) -> Path:
        return self.path / "checkpoints" / f"{model}.pt"

    def progress(self, model: str) -> Path:
        return self.path / "progress" / f"{model}.pt"

    def curve(self, model: str) -> Path:
        return self.path / "curves" / f"{model}.csv"

    def load_config(self) -> dict:
        return yaml.safe_load(self.config_file.read_text())

    def data_split(self, make_split) -> tuple[np.ndarray, np.ndarray]:
        """The persisted (train, valid) indices, created with `make_split()` on first use."""
        path = self.path / "data_split.npz"
        if not path.exists():
            train, valid = make_split()
            buffer = io.BytesIO()
            np.savez(buffer, train=train, valid=valid)
            atomic_write_bytes(path, buffer.getvalue())
        with np.load(path) as stored:
            return stored["train"], stored["valid"]

    def write_curve(self, model: str, rows: list[dict]) -> None:
        atomic_write_text(self.curve(model), rows_to_csv(rows))

    def read_metrics(self) -> list[dict]:
        return read_csv(self.metrics_file)

    def upsert_metrics(self, row: dict) -> None:
        """Adds `row` to metrics.csv, replacing a row with the same METRIC_KEY."""
        key = tuple(str(row[name]) for name in METRIC_KEY)
        rows = [old for old in self.read_metrics() if tuple(str(old[name]) for name in METRIC_KEY) != key]
        rows.append(row)
        rows.sort(key=lambda r: (r["method"] != "dense", r["mode"], r["method"], int(r["net"]), int(r["repetition"]), int(r["step"])))
        atomic_write_text(self.metrics_file, rows_to_csv(rows))

    def has_metrics(self, key: dict) -> bool:
        """Is there a row with these METRIC_KEY values?"""
        wanted = tuple(str(key[name]) for name in METRIC_KEY)
        return any(tuple(str(row[name]) for name in METRIC_KEY) == wanted for row in self.read_metrics())


def rows_to_csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file with numbers parsed back into int/float ('' stays a string)."""
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return [{name: _parse_number(value) for name, value in row.items()} for row in csv.DictReader(file)]


def _parse_number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
