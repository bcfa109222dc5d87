"""The MAF tabular datasets (docs/DATASETS.md): small files in the real formats, made here, read
through the registry; preprocessing checked against independent re-implementations."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from experiment.data import DATASETS, load_dataset, tabular
from experiment.data.download import DataMissingError

UNREACHABLE = "http://127.0.0.1:9/data.tar.gz"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Never a real download."""
    monkeypatch.setattr(tabular, "ARCHIVE_URL", UNREACHABLE)


def arrays(splits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = (splits.train, splits.valid, splits.test)
    return tuple(part.tensors[0].numpy().astype(np.float64) for part in parts)


def check_common(splits, dim: int, sizes: tuple[int, int, int]) -> None:
    assert splits.dim == dim and splits.num_classes == 1
    assert splits.valid is not None
    for split, size in zip((splits.train, splits.valid, splits.test), sizes):
        x, y = split.tensors
        assert x.dtype == torch.float32 and tuple(x.shape) == (size, dim)
        assert y.dtype == torch.int64 and tuple(y.shape) == (size,) and not y.any()
        assert torch.isfinite(x).all()


def maf(tmp_path: Path) -> Path:
    return tmp_path / "maf"


def save_npy(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, data)
    return path


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_entries():
    expected = {"Power": 6, "Gas": 8, "Hepmass": 21, "Miniboone": 43, "Bsds300": 63}
    for name, dim in expected.items():
        info = DATASETS[name]
        assert (info.dim, info.num_classes) == (dim, 1)
        assert info.build is getattr(tabular, f"build_{name.lower()}")


# ---------------------------------------------------------------------------------------------
# POWER


def power_reference(raw: np.ndarray):
    """The POWER steps written differently: permutation instead of in-place shuffle, column
    selection instead of deletes, noise columns assembled by position."""
    rng = np.random.RandomState(42)
    data = raw[rng.permutation(len(raw))][:, [0, 2, 4, 5, 6, 7]].astype(np.float64)
    n = len(raw)
    voltage, gap, sub_metering = 0.01 * rng.rand(n, 1), 0.001 * rng.rand(n, 1), rng.rand(n, 3)
    noise = np.zeros((n, 6))
    noise[:, 0:1], noise[:, 1:2], noise[:, 2:5] = gap, voltage, sub_metering
    data = data + noise
    num_test = n // 10
    num_valid = (n - num_test) // 10
    num_train = n - num_test - num_valid
    train, valid, test = data[:num_train], data[num_train: num_train + num_valid], data[num_train + num_valid:]
    fit = data[: n - num_test]
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    return [(part - mean) / std for part in (train, valid, test)]


def test_power(tmp_path):
    raw = np.random.default_rng(1).normal(size=(1003, 8)) * np.arange(1, 9) + np.arange(8)
    save_npy(maf(tmp_path) / "power" / "data.npy", raw)
    splits = load_dataset("Power", tmp_path, seed=5)
    check_common(splits, 6, (813, 90, 100))  # test int(100.3)=100, valid int(90.3)=90
    train, valid, test = arrays(splits)
    for got, expected in zip((train, valid, test), power_reference(raw)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    fit = np.vstack((train, valid))
    np.testing.assert_allclose(fit.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(fit.std(axis=0), 1, atol=1e-5)
    # the seed does not change the fixed splits
    np.testing.assert_array_equal(arrays(load_dataset("Power", tmp_path, seed=6))[0], train)


# ---------------------------------------------------------------------------------------------
# GAS


def gas_frame(num_rows: int = 500):
    """Time, Meth, Eth + 16 sensors: 6 near-duplicate pairs (corr ≈ 0.999), one near-duplicate
    triple, and one column anti-correlated (≈ −0.99) with pair 0, which the signed rule C > 0.98
    keeps. The cleaning drops the first member of each pair, then the first two of the triple
    (one per round): 8 sensors remain."""
    pandas = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    bases = rng.normal(size=(num_rows, 7))
    columns = {"Time": np.arange(num_rows) * 0.01, "Meth": rng.uniform(0, 300, num_rows),
               "Eth": rng.uniform(0, 20, num_rows)}
    near = lambda base: base + 0.05 * rng.normal(size=num_rows)  # noqa: E731
    for pair in range(6):
        columns[f"drop_pair{pair}"] = 3.0 * near(bases[:, pair]) + pair
    columns["drop_triple_a"] = near(bases[:, 6])
    columns["anti"] = -bases[:, 0] + 0.1 * rng.normal(size=num_rows)
    for pair in range(6):
        columns[f"keep_pair{pair}"] = 2.0 * near(bases[:, pair]) + 10
    columns["drop_triple_b"] = 5.0 * near(bases[:, 6])
    columns["keep_triple_c"] = near(bases[:, 6]) - 7
    frame = pandas.DataFrame(columns)
    assert frame.shape[1] == 19
    return frame


def test_gas(tmp_path):
    frame = gas_frame()
    path = maf(tmp_path) / "gas" / "ethylene_CO.pickle"
    path.parent.mkdir(parents=True)
    frame.to_pickle(path)
    splits = load_dataset("Gas", tmp_path, seed=0)
    check_common(splits, 8, (405, 45, 50))
    kept = ["anti", *(f"keep_pair{pair}" for pair in range(6)), "keep_triple_c"]
    values = frame[kept].to_numpy()
    expected = (values - values.mean(axis=0)) / values.std(axis=0, ddof=1)
    train, valid, test = arrays(splits)
    np.testing.assert_allclose(np.vstack((train, valid, test)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(test, expected[-50:], rtol=1e-5, atol=1e-5)


class RunsCode:
    """A pickle payload that would create `marker` when unpickled by pandas.read_pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_gas_pickle_is_read_without_running_its_code(tmp_path, protocol):
    """The restricted unpickler reads DataFrame pickles of every protocol pandas writes, and refuses a
    pickle that names anything else, before calling it."""
    import pickle

    frame = gas_frame()
    path = maf(tmp_path) / "gas" / "ethylene_CO.pickle"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(frame, protocol=protocol))
    assert tabular.read_frame_pickle(path).equals(frame)

    marker = tmp_path / "code_ran"
    path.write_bytes(pickle.dumps({"frame": frame, "payload": RunsCode(marker)}, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match=r"ethylene_CO\.pickle refers to \S+, which a pickled DataFrame .* it is not read"):
        load_dataset("Gas", tmp_path, seed=0)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(np.zeros(3), protocol=protocol))  # only numpy objects, but no DataFrame
    with pytest.raises(ValueError, match="not a pandas DataFrame"):
        load_dataset("Gas", tmp_path, seed=0)


def test_gas_without_pandas(tmp_path, monkeypatch):
    path = maf(tmp_path) / "gas" / "ethylene_CO.pickle"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tabular\]"') as error:
        load_dataset("Gas", tmp_path, seed=0)
    assert "pandas" in str(error.value)


# ---------------------------------------------------------------------------------------------
# HEPMASS

HEPMASS_FEATURES = 27
DISCRETE = (2, 5, 9, 14, 20, 26)  # features whose minimum repeats > 5 times among signal train rows
REPEATS_NOT_AT_MINIMUM = 11  # a kept feature whose most frequent value repeats 10 times, but not its minimum
BACKGROUND_MINIMUM = 17  # a kept feature whose minimum repeats only in background rows


def hepmass_rows(rng: np.random.Generator, num_signal: int, num_background: int) -> np.ndarray:
    labels = np.r_[np.ones(num_signal), np.zeros(num_background)]
    features = rng.normal(size=(len(labels), HEPMASS_FEATURES)) * np.linspace(0.5, 3, HEPMASS_FEATURES)
    for feature in DISCRETE:
        signal_rows = np.flatnonzero(labels == 1)
        features[signal_rows[:12], feature] = features[:, feature].min() - 1.0  # minimum, 12 times
    signal_rows = np.flatnonzero(labels == 1)
    features[signal_rows[20:30], REPEATS_NOT_AT_MINIMUM] = 0.5
    background_rows = np.flatnonzero(labels == 0)
    features[background_rows[:8], BACKGROUND_MINIMUM] = -100.0
    rows = np.column_stack((labels, features))
    return rows[rng.permutation(len(rows))]


def write_hepmass_csv(path: Path, rows: np.ndarray, extra: str | None) -> None:
    header = ["# label", *(f"f{feature}" for feature in range(HEPMASS_FEATURES))]
    if extra is not None:
        header.append("mass")
    lines = [",".join(header)]
    for row in rows:
        cells = [f"{value:.17g}" for value in row]
        if extra is not None:
            cells.append(extra)
        lines.append(",".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def hepmass_reference(train_rows: np.ndarray, test_rows: np.ndarray):
    train = train_rows[train_rows[:, 0] == 1][:, 1:]
    test = test_rows[test_rows[:, 0] == 1][:, 1:]
    mean, std = train.mean(axis=0), train.std(axis=0, ddof=1)
    kept = [feature for feature in range(HEPMASS_FEATURES) if feature not in DISCRETE]
    train, test = ((train - mean) / std)[:, kept], ((test - mean) / std)[:, kept]
    num_valid = len(train) // 10
    return train[:-num_valid], train[-num_valid:], test


@pytest.mark.parametrize("extra", ["1000", ""], ids=["extra-value", "trailing-comma"])
def test_hepmass(tmp_path, extra, monkeypatch):
    monkeypatch.setattr(tabular, "CSV_CHUNK_ROWS", 97)  # several chunks
    rng = np.random.default_rng(3)
    train_rows, test_rows = hepmass_rows(rng, 305, 280), hepmass_rows(rng, 120, 90)
    write_hepmass_csv(maf(tmp_path) / "hepmass" / "1000_train.csv", train_rows, extra=None)
    write_hepmass_csv(maf(tmp_path) / "hepmass" / "1000_test.csv", test_rows, extra=extra)
    splits = load_dataset("Hepmass", tmp_path, seed=0)
    check_common(splits, 21, (275, 30, 120))
    got = arrays(splits)
    for part, expected in zip(got, hepmass_reference(train_rows, test_rows)):
        np.testing.assert_allclose(part, expected, rtol=1e-5, atol=1e-5)
    full_train = np.vstack(got[:2])
    np.testing.assert_allclose(full_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(full_train.std(axis=0, ddof=1), 1, atol=1e-5)


def test_minimum_count_rule():
    assert tabular.minimum_count(np.array([3.0, 1.0, 1.0, 2.0, 2.0, 2.0])) == 2
    assert tabular.minimum_count(np.array([0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0])) == 1


# ---------------------------------------------------------------------------------------------
# MINIBOONE


def test_miniboone(tmp_path):
    raw = np.random.default_rng(4).gamma(2.0, size=(517, 43)) * 7 - 3
    save_npy(maf(tmp_path) / "miniboone" / "data.npy", raw)
    splits = load_dataset("Miniboone", tmp_path, seed=0)
    check_common(splits, 43, (420, 46, 51))  # test int(51.7) = 51, valid int(46.6) = 46
    train, valid, test = arrays(splits)
    fit = raw[:466]
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    np.testing.assert_allclose(np.vstack((train, valid, test)), (raw - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.vstack((train, valid)).mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.vstack((train, valid)).std(axis=0), 1, atol=1e-5)


def test_power_needs_eight_raw_columns(tmp_path):
    save_npy(maf(tmp_path) / "power" / "data.npy", np.zeros((100, 7)))
    with pytest.raises(ValueError, match=r"POWER.*\[N, 8\]"):
        load_dataset("Power", tmp_path, seed=0)


def test_wrong_dimension_is_a_clear_error(tmp_path):
    save_npy(maf(tmp_path) / "miniboone" / "data.npy", np.random.default_rng(5).normal(size=(200, 40)))
    with pytest.raises(ValueError, match=r"Miniboone.*\[N, 43\]"):
        load_dataset("Miniboone", tmp_path, seed=0)


# ---------------------------------------------------------------------------------------------
# BSDS300


def bsds_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    return {"train": rng.normal(size=(40, 63)), "validation": rng.normal(size=(10, 63)),
            "test": rng.normal(size=(20, 63))}


def check_bsds(splits, expected: dict[str, np.ndarray]) -> None:
    check_common(splits, 63, (40, 10, 20))
    for part, name in zip(arrays(splits), ("train", "validation", "test")):
        np.testing.assert_allclose(part, expected[name], rtol=1e-6, atol=1e-6)


def test_bsds300_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    expected = bsds_arrays()
    path = maf(tmp_path) / "BSDS300" / "BSDS300.hdf5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as file:
        for name, values in expected.items():
            file.create_dataset(name, data=values)
    check_bsds(load_dataset("Bsds300", tmp_path, seed=0), expected)


def test_bsds300_npz_needs_no_h5py(tmp_path, monkeypatch):
    expected = bsds_arrays()
    path = maf(tmp_path) / "BSDS300" / "BSDS300.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **expected)
    monkeypatch.setitem(sys.modules, "h5py", None)
    check_bsds(load_dataset("Bsds300", tmp_path, seed=0), expected)


def test_bsds300_hdf5_without_h5py(tmp_path, monkeypatch):
    path = maf(tmp_path) / "BSDS300" / "BSDS300.hdf5"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r'h5py.*pip install -e "\.\[tabular\]"'):
        load_dataset("Bsds300", tmp_path, seed=0)


# ---------------------------------------------------------------------------------------------
# The archive, and offline errors


def pack_archive(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def npy_bytes(data: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, data)
    return buffer.getvalue()


def test_archive_is_extracted_and_read(tmp_path, monkeypatch):
    raw_power = np.random.default_rng(7).normal(size=(400, 8))
    raw_miniboone = np.random.default_rng(8).normal(size=(300, 43))
    archive = pack_archive(maf(tmp_path) / "data.tar.gz", {
        "data/power/data.npy": npy_bytes(raw_power),
        "data/miniboone/data.npy": npy_bytes(raw_miniboone),
    })
    monkeypatch.setattr(tabular, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    splits = load_dataset("Power", tmp_path, seed=0)
    check_common(splits, 6, (324, 36, 40))
    extracted = maf(tmp_path) / "power" / "data.npy"
    np.testing.assert_array_equal(np.load(extracted), raw_power)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(extracted.stat().st_mode) == 0o666 & ~umask, "the mode of a plain file, not mkstemp's 0o600"
    assert not (maf(tmp_path) / "miniboone").exists(), "only the needed member is extracted"
    assert not (maf(tmp_path) / "data").exists(), "the data/ prefix is stripped"
    for got, expected in zip(arrays(splits), power_reference(raw_power)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    check_common(load_dataset("Miniboone", tmp_path, seed=0), 43, (243, 27, 30))
    assert sorted(path.name for path in maf(tmp_path).rglob("*") if path.is_file()) == ["data.npy", "data.npy",
                                                                                        "data.tar.gz"]


def test_archive_with_wrong_md5_is_rejected(tmp_path, monkeypatch):
    pack_archive(maf(tmp_path) / "data.tar.gz", {"data/power/data.npy": npy_bytes(np.zeros((20, 8)))})
    monkeypatch.setattr(tabular, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(ValueError, match="md5"):
        load_dataset("Power", tmp_path, seed=0)
    assert not (maf(tmp_path) / "power").exists()


def test_archive_without_the_member(tmp_path, monkeypatch):
    pack_archive(maf(tmp_path) / "data.tar.gz", {"data/power/data.npy": npy_bytes(np.zeros((20, 8)))})
    monkeypatch.setattr(tabular, "ARCHIVE_MD5", None)
    with pytest.raises(DataMissingError, match="data/miniboone/data.npy"):
        load_dataset("Miniboone", tmp_path, seed=0)


@pytest.mark.parametrize("name, members", [
    ("Power", ["power/data.npy"]),
    ("Gas", ["gas/ethylene_CO.pickle"]),
    ("Hepmass", ["hepmass/1000_train.csv", "hepmass/1000_test.csv"]),
    ("Miniboone", ["miniboone/data.npy"]),
    ("Bsds300", ["BSDS300/BSDS300.hdf5"]),
])
def test_offline_error_says_what_to_place_where(tmp_path, name, members):
    with pytest.raises(DataMissingError) as error:
        load_dataset(name, tmp_path, seed=0)
    message = str(error.value)
    root = maf(tmp_path).resolve()
    assert str(root / "data.tar.gz") in message
    assert "zenodo.org/record/1161203" in message
    for member in members:
        assert str(root / member) in message
    assert not (root / "data.tar.gz").exists()
    if name == "Bsds300":
        assert str(root / "BSDS300" / "BSDS300.npz") in message


def test_offline_error_names_only_missing_hepmass_file(tmp_path):
    write_hepmass_csv(maf(tmp_path) / "hepmass" / "1000_train.csv", np.ones((3, 28)), extra=None)
    with pytest.raises(DataMissingError) as error:
        load_dataset("Hepmass", tmp_path, seed=0)
    assert "1000_test.csv" in str(error.value) and "1000_train.csv" not in str(error.value)
