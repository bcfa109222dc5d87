"""Reading a results tree back as one tidy table (what the `paper/` scripts consume), and as a pandas
DataFrame with each run's config in columns (`ResultsTable.to_pandas`, for sweeps)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from experiment.config import load_configs
from experiment.config.settings import recorded_settings
from experiment.results.tree import RunDir, is_failed
from experiment.files import read_csv
from experiment.config.identity import run_folder

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


class NoResults(ValueError):
    """A config whose runs have no results yet; the message says the command that makes them."""


def config_run_dirs(config_file: str | Path, overrides: Sequence[str] = ()) -> list[RunDir]:
    """The run folders of a config file, one per config it expands to, as `python -m experiment.main
    CONFIG OVERRIDES...` creates them (the overrides change the run id, so give the command's own);
    NoResults when one of them has no results yet, ConfigError for a bad config."""
    folders = [run_folder(config) for config in load_configs(config_file, overrides)]
    missing = [str(folder) for folder in folders if not (folder / "config.yaml").exists()]
    if missing:
        command = " ".join(["python -m experiment.main", str(config_file), *overrides])
        raise NoResults(f"{config_file}: no results yet at {', '.join(missing)}; run {command}")
    return [RunDir(folder) for folder in folders]


def load_results(target: str | Path, overrides: Sequence[str] = ()) -> ResultsTable:
    """The metrics rows of the models that finished in `target`: a config file (the runs it and the
    `key.path=value` `overrides` make, see `config_run_dirs`: exactly those runs, whatever else
    shares their results folder), a run folder, or every run folder below a folder such as a results
    root. Rows of failed models, which hold no measurements, are left out (see `Run.failures`); each
    row comes with its run's resolved config."""
    if Path(target).suffix in (".yaml", ".yml"):
        runs = config_run_dirs(target, overrides)
    elif overrides:
        raise ValueError(f"{target}: key.path=value overrides apply only to a config file, got {' '.join(overrides)}")
    else:
        runs = run_dirs(target)
    rows, configs = [], {}
    for run in runs:
        config = configs[str(run.path)] = run.load_config()
        network = recorded_settings(config, str(run.config_file)).network
        for row in read_csv(run.metrics_file):
            if is_failed(row):
                continue
            rows.append({"dataset": network.dataset, "network": network.name,
                         "run_id": run.path.name, "run_folder": str(run.path), **row})
    return ResultsTable(rows, configs)
