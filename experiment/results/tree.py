"""The results tree (docs/RESULTS.md): one folder per resolved experiment,

    {directories.results}/{dataset}/{network name}/{run id}/
        config.yaml             the resolved config of the run (see "Many writers" for `experiments`)
        requests.yaml           every request made of the run, oldest first (see "Many writers")
        data_split.npz          train/validation indices (kept so resumed runs use the same split)
        metrics.csv             one row per evaluated or failed model (see METRIC_KEY for what identifies
                                a row; `status` "ok" or "failed", and for a failed one the reason in `error`)
        curves/{model}.csv      per-epoch training curves (rewritten after every epoch while training)
        checkpoints/{model}.pt  final weights (+ masks for pruned models)
        progress/{model}.pt     the in-progress training state of a model (deleted when it finishes)
        log.txt                 what the run did, one line per event: time, host:pid, message
        prune_curve.png         the end-of-run plot
        *.corrupt-{time}        a damaged checkpoint or progress file, set aside (its model recomputed)
    {directories.results}/{dataset}/{network name}/{run id}.locks/
        config.lock, metrics.lock, data_split.lock   held while config.yaml + requests.yaml, metrics.csv
                                                     or data_split.npz are read and rewritten
        report.lock             held while prune_curve.png is written
        jobs/{job name}.lock    held by the process training a job (experiment/jobs.py)
        *.holder                who took the lock beside it last (host:pid, since, command): named by a
                                process that waits for it (`RunLock`)

The run id is a hash of the resolved config without the keys that only say *which* or *how many*
models to compute, where to put them, how to submit them or what to refuse (`experiments`,
`directories`, `device`, `launcher`, `limits`), so adding a method, a net or a ratio to a finished run, or running it elsewhere, reuses
everything already computed.

Many writers. Any number of processes, on one machine or on several sharing the file system, may work
on one run folder at once. Every file is written atomically (experiment/files.py), and every
read-modify-write of a shared file happens under a `filelock.FileLock` (flock), which the operating
system releases when its holder dies, so a killed process never leaves a lock behind. The locks live
beside the run folder, not in it, so the run folder holds results only. (flock needs a file system
that supports it; on NFS, Linux emulates it with byte-range locks that work across machines; a file
system without it is an error rather than a silent fall-back to lock files a dead owner would leave.)

* metrics.csv: `upsert_metrics` reads, changes and rewrites it under metrics.lock, so rows written
  concurrently are all kept.
* config.yaml and requests.yaml: each request (one run of `python -m experiment.main` or one call of
  `run_experiment`, not each worker) goes through `RunDir.record_request` under config.lock. The
  run-defining part of config.yaml is the same for every request (it is what the run id hashes);
  `directories`, `device` and `launcher` are the latest request's; `experiments` is the union of
  everything asked so far: the methods in first-seen order, the largest `numNets` and
  `numRepetitions`, the other keys (mode, spacing, ...) from the latest request. requests.yaml is a
  YAML list that gets one entry per request: `time` (UTC, ISO 8601), `host`, `pid`, `cwd`, `command`
  (the process's command line) and `experiments` (the section as that request resolved it), the
  run's record of what was asked.
* data_split.npz is created under data_split.lock by the first process that needs it; the others
  wait and read it.
* Leftovers: a process killed between writing an atomic write's temporary file and renaming it
  leaves `.{name}.XXXXXXXX.tmp` beside the file (experiment/files.py). Whoever next holds the lock
  under which that file is written removes it: `record_request`, `data_split` and `upsert_metrics`
  their own files' ones, the runner's `report` the plot's, and the runner a job's (checkpoints, curves and progress files of its
  models, `remove_model_temporaries`) when it takes the job's lock. The lock proves that no live
  process is writing that file, so no age threshold or guess is needed.

Damaged files (a disk fault, a copy cut short: atomic writes rule out a crash of ours) are errors
that name the file and say what to do (`DamagedFileError`): metrics.csv and data_split.npz are never
recomputed behind the researcher's back, but a metrics.csv whose last line is torn is read without
that line (with a warning; the next update rewrites the file without it, and the row's model is
evaluated again). Damaged checkpoints and progress files are set aside and recomputed
(experiment/results/checkpoints.py, experiment/training/loop.py).
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from filelock import FileLock, Timeout

from experiment.jobs import chain_name, dense_name
from experiment.files import (DamagedFileError, atomic_write_bytes, atomic_write_text, read_csv, remove_temporaries,
                              rows_to_csv, write_curve)
from experiment.config.identity import run_folder

log = logging.getLogger("experiment")

METRIC_KEY = ("mode", "method", "net", "repetition", "step")


def model_name(key: dict) -> str:
    """The file stem of the model a metrics row (or its METRIC_KEY values) describes:
    `dense_net{n}` or `{mode}_{method}_net{n}_rep{r}_step{k}`."""
    if key["method"] == "dense":
        return dense_name(key["net"])
    return f"{chain_name(key['mode'], key['method'], key['net'], key['repetition'])}_step{key['step']}"


def is_failed(row: dict) -> bool:
    """Does a metrics row stand for a model that failed (`status` "failed": it holds the reason in
    `error` and no measurements)? Rows written before the column existed are models that finished."""
    return row.get("status") == "failed"


class RunDir:
    """Paths and crash-safe reads/writes inside one run folder."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def record_request(cls, asked: dict) -> "RunDir":
        """The run folder of the resolved config `asked`, with this process's request of it recorded:
        config.yaml merged (`merged_config`) and an entry appended to requests.yaml, both under
        config.lock. config.yaml is only rewritten when the merge changes it."""
        run = cls(run_folder(asked))
        with run.lock("config"):
            remove_temporaries(run.path, lambda name: name in (run.config_file.name, run.requests_file.name))
            recorded = run.load_config() if run.config_file.exists() else None
            earlier = run.load_requests()  # both read first: a damaged one is an error naming it, before any write
            text = yaml.safe_dump(merged_config(recorded, asked), sort_keys=False)
            if not run.config_file.exists() or run.config_file.read_text() != text:
                atomic_write_text(run.config_file, text)
            entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
                     "pid": os.getpid(), "cwd": os.getcwd(), "command": shlex.join(sys.orig_argv),
                     "experiments": asked["experiments"]}
            atomic_write_text(run.requests_file, yaml.safe_dump([*earlier, entry], sort_keys=False))
        return run

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def requests_file(self) -> Path:
        return self.path / "requests.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def log_file(self) -> Path:
        return self.path / "log.txt"

    @property
    def split_file(self) -> Path:
        return self.path / "data_split.npz"

    def checkpoint(self, model: str) -> Path:
        return self.path / "checkpoints" / f"{model}.pt"

    def progress(self, model: str) -> Path:
        return self.path / "progress" / f"{model}.pt"

    def curve(self, model: str) -> Path:
        return self.path / "curves" / f"{model}.csv"

    @property
    def locks(self) -> Path:
        """The folder of the run's lock files, beside the run folder."""
        return self.path.with_name(f"{self.path.name}.locks")

    def lock(self, name: str) -> "RunLock":
        """The lock `{run id}.locks/{name}.lock` (`name` may contain a folder, e.g. `jobs/dense_net0`)."""
        path = self.locks / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return RunLock(path)

    def job_lock(self, job_name: str) -> "RunLock":
        return self.lock(f"jobs/{job_name}")

    def load_config(self) -> dict:
        """config.yaml: a mapping with the config's sections; DamagedFileError naming it otherwise."""
        config = _load_yaml(self.config_file, CONFIG_ADVICE)
        if not isinstance(config, dict) or not all(isinstance(config.get(key), dict) for key in ("network", "experiments")):
            raise DamagedFileError(self.config_file, "does not hold a resolved config (a mapping with network, training, "
                                                     "experiments, ...)", CONFIG_ADVICE)
        return config

    def load_requests(self) -> list[dict]:
        """The entries of requests.yaml, oldest first; DamagedFileError naming it when it is not a
        list of requests."""
        if not self.requests_file.exists():
            return []
        requests = _load_yaml(self.requests_file, REQUESTS_ADVICE)
        if not isinstance(requests, list) or not all(isinstance(entry, dict) and isinstance(entry.get("experiments"), dict)
                                                     for entry in requests):
            raise DamagedFileError(self.requests_file, "is not a list of requests", REQUESTS_ADVICE)
        return requests

    def data_split(self, make_split: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The persisted (train, valid) indices, created with `make_split()` on first use."""
        path = self.split_file
        with self.lock("data_split"):
            remove_temporaries(self.path, lambda name: name == path.name)
            if not path.exists():
                train, valid = make_split()
                buffer = io.BytesIO()
                np.savez(buffer, train=train, valid=valid)
                atomic_write_bytes(path, buffer.getvalue())
        return read_split(path)

    def remove_model_temporaries(self, owns: Callable[[str], bool]) -> list[Path]:
        """Removes what killed atomic writes left of the checkpoints, curves and progress files of the
        models whose name (file stem) `owns` accepts; only under the lock of the job those models
        belong to (see "Leftovers")."""
        return [path for folder in ("checkpoints", "curves", "progress")
                for path in remove_temporaries(self.path / folder, lambda name: owns(name.rsplit(".", 1)[0]))]

    def write_curve(self, model: str, rows: list[dict]) -> None:
        write_curve(self.curve(model), rows)

    def read_metrics(self) -> list[dict]:
        """metrics.csv's rows (`read_csv`), each checked: the key columns there and of their types, every
        measurement a number (or empty); DamagedFileError naming the file, line and column otherwise."""
        rows = read_csv(self.metrics_file, METRICS_ADVICE)
        check_metrics_rows(self.metrics_file, rows)
        return rows

    def upsert_metrics(self, row: dict) -> None:
        """Adds `row` to metrics.csv, replacing a row with the same METRIC_KEY (under metrics.lock, so
        that concurrent writers never lose each other's rows)."""
        key = metric_key(row)
        with self.lock("metrics"):
            remove_temporaries(self.path, lambda name: name == self.metrics_file.name)
            rows = [old for old in self.read_metrics() if metric_key(old) != key]
            rows.append(row)
            rows.sort(key=lambda r: (r["method"] != "dense", r["mode"], r["method"], int(r["net"]), int(r["repetition"]), int(r["step"])))
            atomic_write_text(self.metrics_file, rows_to_csv(rows))

    def has_metrics(self, key: dict) -> bool:
        """Is there a row with these METRIC_KEY values?"""
        return self.metrics_row(key) is not None

    def metrics_row(self, key: dict) -> dict | None:
        """The row with these METRIC_KEY values, if there is one."""
        wanted = metric_key(key)
        return next((row for row in self.read_metrics() if metric_key(row) == wanted), None)

    def update_metrics(self, changes: dict[tuple[str, ...], dict]) -> None:
        """Sets columns of existing rows in one write (under metrics.lock): `changes` maps a row's
        METRIC_KEY values (`metric_key`) to the columns to set."""
        with self.lock("metrics"):
            remove_temporaries(self.path, lambda name: name == self.metrics_file.name)
            rows = [{**row, **changes.get(metric_key(row), {})} for row in self.read_metrics()]
            atomic_write_text(self.metrics_file, rows_to_csv(rows))


class RunLock:
    """A `filelock.FileLock` (flock, without a soft fall-back: a lock file, unlike flock, would outlive
    a killed owner) that says whom it waits for. Its holder records itself in `{name}.holder` beside
    the lock (host, pid, command, since when); a process that waits more than WAIT_NOTICE_SECONDS
    logs that record, and again every WAIT_REPEAT_SECONDS, so a holder that is stopped (SIGSTOP, a
    suspended terminal) or stuck is named rather than waited for in silence."""

    WAIT_NOTICE_SECONDS = 10.0
    WAIT_REPEAT_SECONDS = 600.0

    def __init__(self, path: Path):
        self.path = path
        self.file_lock = FileLock(path, fallback_to_soft=False)

    @property
    def holder_file(self) -> Path:
        return self.path.with_suffix(".holder")

    def holder(self) -> str:
        """Who holds (or last held) the lock, as its holder recorded it."""
        try:
            return self.holder_file.read_text().strip() or "a process that recorded nothing"
        except OSError:
            return "a process that recorded nothing"

    def acquire(self, blocking: bool = True) -> "RunLock":
        """Takes the lock (Timeout when not `blocking` and it is held); `with lock.acquire(...):`
        releases it at the end."""
        if not blocking:
            self.file_lock.acquire(blocking=False)
        else:
            waited = 0.0
            wait = self.WAIT_NOTICE_SECONDS
            while True:
                try:
                    self.file_lock.acquire(timeout=wait)
                    break
                except Timeout:
                    waited += wait
                    log.warning("waiting %.0f s for %s, held by %s", waited, self.path, self.holder())
                    wait = self.WAIT_REPEAT_SECONDS
        try:
            record = f"{socket.gethostname()}:{os.getpid()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')} " \
                     f"({shlex.join(sys.orig_argv)})"
            atomic_write_text(self.holder_file, record + "\n")
        except BaseException:
            self.file_lock.release()
            raise
        return self

    def release(self) -> None:
        self.file_lock.release()

    def __enter__(self) -> "RunLock":
        if not self.file_lock.is_locked:
            self.acquire()
        return self

    def __exit__(self, *exception) -> None:
        self.release()


def metric_key(row: dict) -> tuple[str, ...]:
    """The METRIC_KEY values of a row (or key), as strings: what identifies its model."""
    return tuple(str(row[name]) for name in METRIC_KEY)


def merged_config(recorded: dict | None, asked: dict) -> dict:
    """config.yaml after the request `asked` of a run whose config.yaml holds `recorded` (None: the
    first request): `asked`, with `experiments` asking for everything both ask for (methods in
    first-seen order, the larger numNets and numRepetitions; its other keys as `asked` says)."""
    if recorded is None:
        return asked
    before, now = recorded["experiments"], asked["experiments"]
    experiments = {
        **now,
        "methods": list(dict.fromkeys([*before["methods"], *now["methods"]])),
        "numNets": max(before["numNets"], now["numNets"]),
        "numRepetitions": max(before["numRepetitions"], now["numRepetitions"]),
    }
    return {**asked, "experiments": experiments}


TEXT_COLUMNS = ("mode", "method", "status", "error", "trace_estimator", "backend")  # every other metrics column holds numbers


def check_metrics_rows(path: Path, rows: list[dict]) -> None:
    """Raises DamagedFileError when a metrics row lacks a key column, has a key of the wrong type (net,
    repetition and step integers ≥ 0) or a measurement that is not a number (a hand edit, a renamed
    header, a cell of another file)."""
    for line, row in enumerate(rows, start=2):
        missing = [name for name in METRIC_KEY if name not in row]
        if missing:
            raise DamagedFileError(path, f"has no column {missing[0]!r} (its header: {', '.join(row)})", METRICS_ADVICE)
        for name in ("net", "repetition", "step"):
            if not isinstance(row[name], int) or row[name] < 0:
                raise DamagedFileError(path, f"line {line}: column {name!r} holds {row[name]!r}, not a count", METRICS_ADVICE)
        for name in ("mode", "method"):
            if not isinstance(row[name], str) or not row[name]:
                raise DamagedFileError(path, f"line {line}: column {name!r} holds {row[name]!r}, not a name", METRICS_ADVICE)
        for name, value in row.items():
            if name not in TEXT_COLUMNS and isinstance(value, str) and value != "":
                raise DamagedFileError(path, f"line {line}: column {name!r} holds {value!r}, not a number", METRICS_ADVICE)


def _load_yaml(path: Path, advice: str):
    """The YAML document in `path`; DamagedFileError naming it when it is not readable YAML text."""
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0][:160]
        raise DamagedFileError(path, f"is not readable YAML ({type(error).__name__}: {reason})", advice) from None


CONFIG_ADVICE = ("It records the run's resolved config: restore it from a backup or another copy of the run, or move "
                 "it aside and run the same command again, which records the config anew")
REQUESTS_ADVICE = ("It only records the requests made of the run (nothing is computed from it): restore it from a "
                   "backup, or move it aside and the next request starts a new one")
METRICS_ADVICE = ("Restore it from a backup, or move it aside and run the experiment again: every model's row is "
                  "then evaluated again from its checkpoint")
SPLIT_ADVICE = ("It holds the train/validation split every model of this run was trained with: restore it from a "
                "backup or another copy of the run. Deleting it makes the next run draw the split again from the "
                "config's seed: the same split only while the dataset and experiment/data/splits.py are unchanged "
                "since the run began")


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (train, valid) indices of a data_split.npz; DamagedFileError when they cannot be read."""
    try:
        with np.load(path) as stored:
            train, valid = stored["train"], stored["valid"]
    except FileNotFoundError:
        raise
    except Exception as error:  # BadZipFile, ValueError, OSError, EOFError, KeyError, ...
        raise DamagedFileError(path, f"cannot be read ({type(error).__name__}: {error})", SPLIT_ADVICE) from None
    if any(part.ndim != 1 or part.dtype.kind not in "iu" for part in (train, valid)):
        raise DamagedFileError(path, "does not hold two integer index arrays `train` and `valid`", SPLIT_ADVICE)
    return train, valid
