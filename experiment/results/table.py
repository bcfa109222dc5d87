"""Reading a results tree back as one tidy table (what the `paper/` scripts consume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiment.results.tree import RunDir, is_failed, read_csv


class ResultsTable:
    """Rows of metrics.csv files, each with `dataset`, `network` and `run_id` columns added."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    @property
    def columns(self) -> list[str]:
        names: list[str] = []
        for row in self.rows:
            names += [name for name in row if name not in names]
        return names

    def column(self, name: str) -> np.ndarray:
        return np.array([row.get(name) for row in self.rows])

    def where(self, **equal) -> "ResultsTable":
        """The rows whose columns equal the given values, e.g. table.where(method="ThresNet", net=0)."""
        return ResultsTable([row for row in self.rows if all(row.get(key) == value for key, value in equal.items())])

    def unique(self, name: str) -> list:
        return list(dict.fromkeys(row.get(name) for row in self.rows))


def run_dirs(path: str | Path) -> list[RunDir]:
    """Every run folder (a folder holding config.yaml) at or below `path`, sorted."""
    root = Path(path)
    if (root / "config.yaml").exists():
        return [RunDir(root)]
    return [RunDir(config.parent) for config in sorted(root.rglob("config.yaml"))]


def load_results(path: str | Path) -> ResultsTable:
    """The metrics rows of the models that finished in the run folder `path`, or in every run folder
    below a results root (rows of failed models, which hold no measurements, are left out; see
    `Run.failures`)."""
    rows = []
    for run in run_dirs(path):
        config = run.load_config()
        for row in read_csv(run.metrics_file):
            if is_failed(row):
                continue
            rows.append({"dataset": config["network"]["dataset"], "network": config["network"]["name"],
                         "run_id": run.path.name, **row})
    return ResultsTable(rows)
