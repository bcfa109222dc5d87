"""The MAF tabular density-estimation benchmarks (Papamakarios et al. 2017; docs/DATASETS.md):
POWER, GAS, HEPMASS, MINIBOONE and BSDS300, with the standard preprocessing and fixed splits.

Files
-----
All five come from one archive, ``data.tar.gz`` of Zenodo record 1161203 ("Preprocessed datasets
for MAF experiments"), whose members lie under ``data/`` (``data/power/data.npy``, ...). The loaders
read the needed file from ``{data_dir}/maf/<member without the data/ prefix>``; when it is missing,
the archive is downloaded to ``{data_dir}/maf/data.tar.gz`` (or taken from there when already
present) and only the needed members are extracted next to it. The archive stays, so later loads of
other datasets extract from it without downloading again; delete it to save disk once all five are
extracted.

==========  ===========================================  =====
name        file(s) under ``{data_dir}/maf/``             dim
==========  ===========================================  =====
Power       ``power/data.npy``                           6
Gas         ``gas/ethylene_CO.pickle``  (needs pandas)   8
Hepmass     ``hepmass/1000_train.csv``, ``1000_test.csv``  21
Miniboone   ``miniboone/data.npy``                       43
Bsds300     ``BSDS300/BSDS300.npz`` or ``BSDS300.hdf5``    63
==========  ===========================================  =====

Optional dependencies (``pip install -e ".[tabular]"``): GAS is a pandas DataFrame pickle, so it
needs pandas. Unpickling can run any code a pickle names, and this file may be placed by hand, so it
is read by a restricted unpickler (``read_frame_pickle``) that builds only the pandas and numpy
objects a DataFrame of numbers is made of (``FRAME_PICKLE_OBJECTS``) and refuses anything else,
naming it; BSDS300 is HDF5, so it needs h5py -- unless a numpy copy ``BSDS300/BSDS300.npz`` with
arrays ``train``, ``validation`` and ``test`` sits next to it, which is read first. Make that copy
once, on any machine with h5py, with::

    python -c "import h5py, numpy as np; f = h5py.File('BSDS300.hdf5', 'r'); np.savez('BSDS300.npz', **{k: f[k][()] for k in ('train', 'validation', 'test')})"

Preprocessing (the MAF paper's, reproduced step by step)
--------------------------------------------------------
* POWER (raw [N, 8], the last column the time): rows shuffled by ``RandomState(42)``; columns 3
  then 1 deleted; uniform noise from the same generator added (gap 0.001·U, voltage 0.01·U, three
  sub-metering columns U, time 0); test = last 10%, validation = last 10% of the rest; standardised
  with the train+validation mean/std (ddof 0).
* GAS: columns Meth, Eth, Time dropped; then, while some column is correlated > 0.98 with another,
  the first such column is dropped; standardised with the whole data's mean/std (ddof 1); test =
  last 10%, validation = last 10% of the rest.
* HEPMASS ("1000" set): signal rows (label 1) only, label dropped, and the test file's extra last
  column dropped; both standardised with the train mean/std (ddof 1); every feature whose smallest
  value occurs more than 5 times in train is dropped (the original counts, per feature, the
  occurrences of each value sorted by value and tests the first count, i.e. the count of the
  minimum); validation = last 10% of train.
* MINIBOONE: test = last 10%, validation = last 10% of the rest; standardised with the
  train+validation mean/std (ddof 0).
* BSDS300: the archive's train/validation/test as given (already preprocessed).

Each builder returns :class:`~experiment.data.splits.Splits` with TensorDatasets of (x float32 [N, D],
y int64 zeros [N]) and ``valid`` set; the seed is unused because the splits are fixed.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiment.data.download import DataMissingError, fetch
from experiment.data.splits import Splits
from experiment.files import process_umask

ARCHIVE_URL = "https://zenodo.org/record/1161203/files/data.tar.gz"
"""The MAF archive (about 860 MB)."""

ARCHIVE_PAGE = "https://zenodo.org/record/1161203"

ARCHIVE_MD5: str | None = "9b9c9b0375315ad270eba4ce80c093ab"
"""md5 of ``data.tar.gz``. Zenodo could not be reached from the machine this was written on, so
the value was not checked against the record itself; it is the value that two independent public
loaders of this archive both pin. A mismatch raises ValueError from ``fetch`` (delete the file to
re-download); set this to None to skip the check."""

ARCHIVE_NAME = "data.tar.gz"
ARCHIVE_PREFIX = "data/"
"""Members of the archive lie under this folder."""

SUBDIR = "maf"
"""Folder under ``data_dir`` that holds the archive and the extracted files."""

DIMS = {"Power": 6, "Gas": 8, "Hepmass": 21, "Miniboone": 43, "Bsds300": 63}
"""Data dimension of each set after preprocessing (the registry, experiment/data/__init__.py, reads it here)."""

TABULAR_INSTALL_HINT = 'pip install -e ".[tabular]"'


# --------------------------------------------------------------------------------------------
# Files: extracted members, or the archive they come from


def maf_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / SUBDIR


def _normalise_member(name: str) -> str:
    """Archive member name → path relative to ``maf/`` (``./data/power/data.npy`` → ``power/data.npy``)."""
    while name.startswith("./"):
        name = name[2:]
    if name.startswith(ARCHIVE_PREFIX):
        name = name[len(ARCHIVE_PREFIX):]
    return name


def _extract_members(archive: Path, root: Path, relatives: list[str]) -> None:
    """Extracts the members ``data/<relative>`` (or ``<relative>``) of ``archive`` to ``root/<relative>``,
    each written under a temporary name and renamed, so an interrupted extraction leaves no torn file.
    Only the named members are read; nothing else is written."""
    wanted = set(relatives)
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            relative = _normalise_member(member.name)
            if relative not in wanted or not member.isfile():
                continue
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as sink, source:
                    shutil.copyfileobj(source, sink, 1 << 20)
                    os.fchmod(sink.fileno(), 0o666 & ~process_umask())  # mkstemp's 0o600 → a plain file's mode
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            wanted.discard(relative)
            if not wanted:
                break
    if wanted:
        names = ", ".join(ARCHIVE_PREFIX + relative for relative in sorted(wanted))
        raise DataMissingError(
            f"{archive} does not contain {names}; it is not the MAF archive from {ARCHIVE_PAGE}. "
            f"Replace it, or place the extracted file(s) under {root.resolve()}."
        )


def ensure_files(data_dir: str | os.PathLike, relatives: list[str]) -> list[Path]:
    """Paths ``{data_dir}/maf/<relative>`` for each relative path, extracting the missing ones from
    ``{data_dir}/maf/data.tar.gz`` (downloaded first when absent). Offline, raises DataMissingError
    that names both ways to provide the data: the archive, or the extracted files."""
    root = maf_dir(data_dir)
    paths = [root / relative for relative in relatives]
    missing = [relative for relative, path in zip(relatives, paths) if not path.exists()]
    if missing:
        archive = root / ARCHIVE_NAME
        try:
            fetch(ARCHIVE_URL, archive, ARCHIVE_MD5)
        except DataMissingError as error:
            extracted = " and ".join(f"its {ARCHIVE_PREFIX}{relative} at {(root / relative).resolve()}"
                                     for relative in missing)
            raise DataMissingError(
                f"MAF tabular data missing: place {ARCHIVE_NAME} from {ARCHIVE_PAGE} ({ARCHIVE_URL}) at "
                f"{archive.resolve()}, or, extracted from it, {extracted}. Download failed: {error}"
            ) from None
        _extract_members(archive, root, missing)
    return paths


# --------------------------------------------------------------------------------------------
# Optional dependencies


def _import_pandas(why: str):
    try:
        import pandas
    except ImportError as error:
        raise ImportError(f"{why} needs pandas: install it with {TABULAR_INSTALL_HINT}") from error
    return pandas


def _import_h5py(why: str):
    try:
        import h5py
    except ImportError as error:
        raise ImportError(f"{why} needs h5py: install it with {TABULAR_INSTALL_HINT}") from error
    return h5py


# --------------------------------------------------------------------------------------------
# Shared steps


def split_tail(data: np.ndarray, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(head, tail)``: the tail is the last ``int(fraction · N)`` rows, the head the rest."""
    num_tail = int(fraction * data.shape[0])
    if num_tail < 1:
        raise ValueError(f"{data.shape[0]} rows are too few to split off {fraction:.0%}")
    return data[:-num_tail], data[-num_tail:]


def maf_split(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MAF fixed split: test = last 10% of the rows, validation = last 10% of the rest.
    Returns ``(train, valid, test)``."""
    rest, test = split_tail(data)
    train, valid = split_tail(rest)
    return train, valid, test


def standardise_with_train_valid(
    train: np.ndarray, valid: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each split standardised per column with the mean and std (ddof 0) of train and validation together."""
    both = np.vstack((train, valid))
    mean, std = both.mean(axis=0), both.std(axis=0)
    return (train - mean) / std, (valid - mean) / std, (test - mean) / std


def _as_dataset(x: np.ndarray) -> TensorDataset:
    features = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return TensorDataset(features, torch.zeros(features.shape[0], dtype=torch.int64))


def _splits(name: str, train: np.ndarray, valid: np.ndarray, test: np.ndarray) -> Splits:
    dim = DIMS[name]
    for split, x in (("train", train), ("validation", valid), ("test", test)):
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(
                f"{name}: the {split} split has shape {tuple(x.shape)} after preprocessing, expected "
                f"[N, {dim}]; the files under the data folder are not the MAF {name.upper()} data"
            )
    return Splits(train=_as_dataset(train), test=_as_dataset(test), valid=_as_dataset(valid), dim=dim,
                  num_classes=1)


# --------------------------------------------------------------------------------------------
# POWER


def preprocess_power(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw household power data [N, 8] → standardised (train, valid, test), each [·, 6].

    After deleting columns 3 and 1, the six remaining columns get (gap, voltage, sub-metering ×3,
    time) noise, so the raw array has 8 columns, the last being the time."""
    data = np.array(data, dtype=np.float64)  # a copy: the shuffle works in place
    if data.ndim != 2 or data.shape[1] != 8:
        raise ValueError(f"POWER: power/data.npy has shape {data.shape}, expected [N, 8]; not the MAF POWER data")
    rng = np.random.RandomState(42)
    rng.shuffle(data)
    num_rows = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(num_rows, 1)
    gap_noise = 0.001 * rng.rand(num_rows, 1)
    sub_metering_noise = rng.rand(num_rows, 3)
    time_noise = np.zeros((num_rows, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sub_metering_noise, time_noise))
    return standardise_with_train_valid(*maf_split(data))


def build_power(data_dir: str | os.PathLike, seed: int) -> Splits:
    (path,) = ensure_files(data_dir, ["power/data.npy"])
    return _splits("Power", *preprocess_power(np.load(path)))


# --------------------------------------------------------------------------------------------
# GAS


def preprocess_gas(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ethylene-CO DataFrame → standardised (train, valid, test) after dropping correlated sensors."""
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    while True:
        correlated = ((frame.corr() > 0.98).to_numpy().sum(axis=1) > 1).nonzero()[0]
        if len(correlated) == 0:
            break
        frame = frame.drop(columns=frame.columns[correlated[0]])
    frame = (frame - frame.mean()) / frame.std()
    return maf_split(frame.to_numpy(dtype=np.float64))


FRAME_PICKLE_MODULES = ("pandas", "numpy", "builtins", "copyreg", "_codecs")
"""The top-level modules a DataFrame pickle's objects come from (Python 2 names are mapped to these
by pickle itself); nothing else is even imported."""


def frame_pickle_objects(pandas) -> list:
    """The callables and classes a pickled DataFrame of numbers (with string column names) is rebuilt
    from, by pandas 0.2x (whose names pandas maps to today's) up to pandas 3 and numpy 1 and 2. Each
    only builds data; none reads files or runs code it is given."""
    import copyreg
    import codecs

    import numpy
    from pandas._libs import arrays as pandas_arrays, internals
    from pandas.core.indexes import base
    from pandas.core.internals import managers

    numpy_core = getattr(numpy, "_core", None) or numpy.core
    return [
        pandas.DataFrame, pandas.Index, pandas.RangeIndex, pandas.StringDtype, pandas.arrays.StringArray,
        base._new_Index, managers.BlockManager, internals._unpickle_block,
        getattr(pandas_arrays, "__pyx_unpickle_NDArrayBacked", None),
        numpy.ndarray, numpy.dtype, numpy_core.multiarray._reconstruct, numpy_core.multiarray.scalar,
        getattr(numpy_core.numeric, "_frombuffer", None),
        slice, object, copyreg._reconstructor, codecs.encode,
    ]


def read_frame_pickle(path: Path):
    """The DataFrame pickled in `path`, read without running code from it: only the objects of
    `frame_pickle_objects` are built (through pandas' own unpickler, which maps the names of older
    pandas versions to today's); any other reference is a pickle.UnpicklingError naming it."""
    pandas = _import_pandas("GAS (a pandas DataFrame pickle)")
    from pandas.compat.pickle_compat import Unpickler

    allowed = [found for found in frame_pickle_objects(pandas) if found is not None]

    class FrameUnpickler(Unpickler):
        def find_class(self, module: str, name: str):
            if module.split(".")[0] in FRAME_PICKLE_MODULES or module in ("__builtin__", "copy_reg"):
                found = super().find_class(module, name)
                if any(found is candidate for candidate in allowed):
                    return found
            raise pickle.UnpicklingError(
                f"{path} refers to {module}.{name}, which a pickled DataFrame of numbers does not need; it is not "
                f"read, since unpickling it could run code. Replace it with ethylene_CO.pickle from {ARCHIVE_PAGE}.")

    with open(path, "rb") as file:
        frame = FrameUnpickler(file).load()
    if not isinstance(frame, pandas.DataFrame):
        raise ValueError(f"{path} holds a {type(frame).__name__}, not a pandas DataFrame; not the MAF GAS data")
    return frame


def build_gas(data_dir: str | os.PathLike, seed: int) -> Splits:
    (path,) = ensure_files(data_dir, ["gas/ethylene_CO.pickle"])
    return _splits("Gas", *preprocess_gas(read_frame_pickle(path)))


# --------------------------------------------------------------------------------------------
# HEPMASS


CSV_CHUNK_ROWS = 500_000
"""Rows parsed at a time when reading the HEPMASS csv files (bounds the text held in memory)."""


def read_csv_rows(
    path: Path, drop_last: bool = False, row_filter: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """A numeric csv with one header row as float64 [rows, columns], read in chunks.

    ``drop_last``: leave out the last column (it is not parsed, so it may be empty or malformed).
    ``row_filter``: keep only the rows of each chunk where it returns True (saves memory when most
    rows are discarded anyway).
    """
    chunks = []
    columns = None
    with open(path) as file:
        file.readline()  # the header
        while lines := list(islice(file, CSV_CHUNK_ROWS)):
            if columns is None:
                num_columns = len(lines[0].rstrip("\r\n").split(","))
                columns = range(num_columns - 1 if drop_last else num_columns)
            block = np.loadtxt(lines, delimiter=",", usecols=columns, dtype=np.float64, comments=None, ndmin=2)
            chunks.append(block if row_filter is None else block[row_filter(block)])
    if not chunks:
        raise ValueError(f"{path} has no data rows")
    return np.concatenate(chunks)


def _is_signal(block: np.ndarray) -> np.ndarray:
    return block[:, 0] == 1


def minimum_count(column: np.ndarray) -> int:
    """How many times the column's smallest value occurs in it."""
    return int(np.count_nonzero(column == column.min()))


def preprocess_hepmass(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw train [rows, 1 + F] and test [rows, 1 + F] (label first; the test's extra last column
    already removed) → (train, valid, test) without the features whose minimum repeats > 5 times."""
    train = train[train[:, 0] == 1, 1:]
    test = test[test[:, 0] == 1, 1:]
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"HEPMASS: train has {train.shape[1]} features but test {test.shape[1]}")
    mean, std = train.mean(axis=0), train.std(axis=0, ddof=1)
    train, test = (train - mean) / std, (test - mean) / std
    keep = [feature for feature in range(train.shape[1]) if minimum_count(train[:, feature]) <= 5]
    train, test = train[:, keep], test[:, keep]
    train, valid = split_tail(train)
    return train, valid, test


def build_hepmass(data_dir: str | os.PathLike, seed: int) -> Splits:
    train_path, test_path = ensure_files(data_dir, ["hepmass/1000_train.csv", "hepmass/1000_test.csv"])
    train = read_csv_rows(train_path, row_filter=_is_signal)
    test = read_csv_rows(test_path, drop_last=True, row_filter=_is_signal)
    return _splits("Hepmass", *preprocess_hepmass(train, test))


# --------------------------------------------------------------------------------------------
# MINIBOONE


def preprocess_miniboone(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return standardise_with_train_valid(*maf_split(np.asarray(data, dtype=np.float64)))


def build_miniboone(data_dir: str | os.PathLike, seed: int) -> Splits:
    (path,) = ensure_files(data_dir, ["miniboone/data.npy"])
    return _splits("Miniboone", *preprocess_miniboone(np.load(path)))


# --------------------------------------------------------------------------------------------
# BSDS300

BSDS300_SPLITS = ("train", "validation", "test")


def build_bsds300(data_dir: str | os.PathLike, seed: int) -> Splits:
    npz = maf_dir(data_dir) / "BSDS300" / "BSDS300.npz"
    if npz.exists():
        with np.load(npz) as arrays:
            train, valid, test = (np.asarray(arrays[split]) for split in BSDS300_SPLITS)
    else:
        try:
            (path,) = ensure_files(data_dir, ["BSDS300/BSDS300.hdf5"])
        except DataMissingError as error:
            raise DataMissingError(
                f"{error} (Or place its numpy copy at {npz.resolve()}: see experiment/data/tabular.py.)"
            ) from None
        h5py = _import_h5py(f"BSDS300 (HDF5; or convert it once to {npz.name}, see experiment/data/tabular.py)")
        with h5py.File(path, "r") as file:
            train, valid, test = (np.asarray(file[split][()]) for split in BSDS300_SPLITS)
    return _splits("Bsds300", train, valid, test)

