"""Reading a results tree back as one tidy table (what the `paper/` scripts consume), and as a pandas
DataFrame with each run's config in columns (`ResultsTable.to_pandas`, for sweeps)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from experiment.config.settings import recorded_settings
from experiment.results.tree import RunDir, is_failed, read_csv

if TYPE_CHECKING:  # pandas is an optional extra, imported only by to_pandas
    import pandas


class ResultsTable:
    """Rows of metrics.csv files, each with `dataset`, `network`, `run_id` and `run_folder` (the run
    folder's path, a string) columns added. `configs` maps a run folder to its resolved config, kept
    once per run rather than in every row."""

    def __init__(self, rows: list[dict], configs: Mapping[str, dict] | None = None):
        self.rows = rows
        self.configs = dict(configs or {})

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
        return ResultsTable([row for row in self.rows if all(row.get(key) == value for key, value in equal.items())],
                            self.configs)

    def unique(self, name: str) -> list:
        return list(dict.fromkeys(row.get(name) for row in self.rows))

    def config_of(self, row: dict) -> dict:
        """The resolved config of the run a row comes from ({} if the table does not hold it)."""
        return self.configs.get(row.get("run_folder"), {})

    def to_pandas(self) -> "pandas.DataFrame":
        """One DataFrame row per metrics row: the metrics columns (numbers as numbers, see
        `_numbers_where_possible`), then the run's resolved config flattened into dotted columns
        (`training.optimizerKwargs.lr`, `network.name`, `experiments.numNets`, ...; see
        `flatten_config`), so a sweep's swept keys are columns to group by. Needs pandas
        (`pip install -e ".[pandas]"`)."""
        try:
            import pandas
        except ImportError:
            raise ImportError('ResultsTable.to_pandas needs pandas, an optional extra: pip install -e ".[pandas]"') from None
        frame = pandas.DataFrame([{**row, **flatten_config(self.config_of(row))} for row in self.rows])
        for name in self.columns:
            frame[name] = _numbers_where_possible(frame[name], pandas)
        return frame


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key path: value}. A list is one cell holding its JSON text (e.g.
    `experiments.methods` → '["ThresNet", "FilterThresNet"]'; `json.loads` gives it back): a list may
    hold mappings, and text keeps every cell hashable, so any column can be grouped by or compared.
    An empty mapping gives no column."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value, sort_keys=True)
        else:
            flat[name] = value
    return flat


def _numbers_where_possible(column: "pandas.Series", pandas: ModuleType) -> "pandas.Series":
    """A metrics column as numbers (empty cells NaN) when every non-empty cell is a number; as read
    otherwise. metrics.csv cells are parsed one by one (`read_csv`), so a column of numbers with an
    empty cell would otherwise stay a column of Python objects."""
    blanked = column.where(column != "")  # empty cells: NaN
    if blanked.isna().all():
        return column
    try:
        return pandas.to_numeric(blanked)
    except (ValueError, TypeError):
        return column


def run_dirs(path: str | Path) -> list[RunDir]:
    """Every run folder (a folder holding config.yaml) at or below `path`, sorted."""
    root = Path(path)
    if (root / "config.yaml").exists():
        return [RunDir(root)]
    return [RunDir(config.parent) for config in sorted(root.rglob("config.yaml"))]


def load_results(path: str | Path) -> ResultsTable:
    """The metrics rows of the models that finished in the run folder `path`, or in every run folder
    below a results root (rows of failed models, which hold no measurements, are left out; see
    `Run.failures`), with each run's resolved config."""
    rows, configs = [], {}
    for run in run_dirs(path):
        config = configs[str(run.path)] = run.load_config()
        network = recorded_settings(config, str(run.config_file)).network
        for row in read_csv(run.metrics_file):
            if is_failed(row):
                continue
            rows.append({"dataset": network.dataset, "network": network.name,
                         "run_id": run.path.name, "run_folder": str(run.path), **row})
    return ResultsTable(rows, configs)
