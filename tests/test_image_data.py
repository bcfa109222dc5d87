"""Tests for the image datasets (MNIST, CIFAR10, Digits; docs/DATASETS.md) and the per-batch transforms
(config keys transformsTrain/transformsTest/transformsFinal), on small files in the real formats."""

from __future__ import annotations

import copy
import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiment.config import ConfigError, load_configs
from experiment.data import DATASETS, load_dataset
from experiment.data import images
from experiment.data.download import DataMissingError
from experiment.data.transforms import TRANSFORM_NAMES, build_transform


UNREACHABLE = "http://127.0.0.1:9/"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the real mirrors: every download URL points at a closed local port."""
    monkeypatch.setattr(images, "MNIST_URL", UNREACHABLE + "mnist/")
    monkeypatch.setattr(images, "CIFAR_URL", UNREACHABLE + "cifar-10-python.tar.gz")


# ------------------------------------------------------------------------------------------- MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian sizes, values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist_arrays(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num, 28, 28), dtype=np.uint8), rng.integers(0, 10, num, dtype=np.uint8)


def write_mnist(folder: Path, gzipped: bool) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = mnist_arrays(7, 0)
    test_x, test_y = mnist_arrays(4, 1)
    arrays = {"train-images-idx3-ubyte": train_x, "train-labels-idx1-ubyte": train_y,
              "t10k-images-idx3-ubyte": test_x, "t10k-labels-idx1-ubyte": test_y}
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gzipped", [True, False])
def test_mnist_reads_idx_files(tmp_path: Path, gzipped: bool) -> None:
    arrays = write_mnist(tmp_path / "mnist", gzipped)
    splits = load_dataset("MNIST", tmp_path, seed=0)
    assert splits.valid is None and splits.dim == 784 and splits.num_classes == 10
    for dataset, prefix in ((splits.train, "train"), (splits.test, "t10k")):
        x, y = dataset.tensors
        expected = arrays[f"{prefix}-images-idx3-ubyte"]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(expected), 1, 28, 28)
        assert torch.equal(x, torch.from_numpy(expected[:, None].astype(np.float32)) / 255)
        assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(expected[:, None]))
        assert y.tolist() == arrays[f"{prefix}-labels-idx1-ubyte"].tolist()  # file order kept


def test_mnist_rejects_bad_idx(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", gzipped=True)
    labels = np.zeros(7, np.uint8)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)[:-2]))
    with pytest.raises(ValueError, match="bytes follow"):
        load_dataset("MNIST", tmp_path, seed=0)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((7, 28, 28), np.uint8))))
    with pytest.raises(ValueError, match="magic"):
        load_dataset("MNIST", tmp_path, seed=0)


def test_mnist_offline_error_names_files_and_folder(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist", gzipped=True)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataMissingError) as error:
        load_dataset("MNIST", tmp_path, seed=0)
    message = str(error.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert "train-images-idx3-ubyte.gz" not in message.split("download failed")[0]  # present files not listed
    assert str((tmp_path / "mnist").resolve()) in message


# ---------------------------------------------------------------------------------------- CIFAR-10


def cifar_batch(num: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num, 3072), dtype=np.uint8), rng.integers(0, 10, num).tolist()


def cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch like the originals: a dict with byte-string keys (protocol 2, as Python 2 wrote)."""
    return pickle.dumps({b"batch_label": b"test", b"labels": labels, b"data": data, b"filenames": []}, protocol=2)


def cifar_batches() -> dict[str, tuple[np.ndarray, list[int]]]:
    batches = {f"data_batch_{index}": cifar_batch(index + 1, index) for index in range(1, 6)}
    batches["test_batch"] = cifar_batch(3, 99)
    return batches


def write_cifar(folder: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    batches = cifar_batches()
    (folder / "cifar-10-batches-py").mkdir(parents=True)
    for name, (data, labels) in batches.items():
        (folder / "cifar-10-batches-py" / name).write_bytes(cifar_pickle(data, labels))
    return batches


def check_cifar(splits, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    assert splits.valid is None and splits.dim == 3072 and splits.num_classes == 10
    train_rows = np.concatenate([batches[f"data_batch_{index}"][0] for index in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{index}"][1] for index in range(1, 6)), [])
    for dataset, rows, labels in ((splits.train, train_rows, train_labels),
                                  (splits.test, *batches["test_batch"])):
        x, y = dataset.tensors
        assert x.dtype == torch.float32 and x.shape == (len(rows), 3, 32, 32)
        assert torch.equal((x * 255).round().to(torch.uint8).reshape(len(rows), -1), torch.from_numpy(rows))
        assert torch.equal(x, torch.from_numpy(rows.astype(np.float32)).reshape(-1, 3, 32, 32) / 255)
        assert y.dtype == torch.int64 and y.tolist() == labels


def test_cifar_reads_batches(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path / "cifar10")
    check_cifar(load_dataset("CIFAR10", tmp_path, seed=0), batches)


def test_cifar_rgb_planes_are_reshaped_channel_first(tmp_path: Path) -> None:
    # One image: red plane all 10 except pixel (row 2, col 5) = 200, green 20, blue 30 with
    # blue pixel (row 31, col 0) = 250. Rows of the file: 1024 red, 1024 green, 1024 blue, row-major.
    red, green, blue = np.full((32, 32), 10, np.uint8), np.full((32, 32), 20, np.uint8), np.full((32, 32), 30, np.uint8)
    red[2, 5], blue[31, 0] = 200, 250
    row = np.concatenate([red.ravel(), green.ravel(), blue.ravel()])[None]
    assert row[0, 2 * 32 + 5] == 200 and row[0, 2048 + 31 * 32] == 250
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(cifar_pickle(row, [7]))
    x = load_dataset("CIFAR10", tmp_path, seed=0).test.tensors[0][0] * 255
    assert x.shape == (3, 32, 32)
    assert x[0, 2, 5] == 200 and x[0, 5, 2] == 10 and x[0, 0, 0] == 10  # red, at (row 2, col 5) only
    assert torch.all(x[1] == 20)  # green
    assert x[2, 31, 0] == 250 and x[2, 0, 31] == 30 and (x[2] == 250).sum() == 1  # blue


def test_cifar_extracts_archive(tmp_path: Path) -> None:
    batches = cifar_batches()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, (data, labels) in batches.items():
            content = cifar_pickle(data, labels)
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
        readme = tarfile.TarInfo("../evil")  # never written: only the expected names are read
        readme.size = 1
        tar.addfile(readme, io.BytesIO(b"x"))
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive.getvalue())
    check_cifar(load_dataset("CIFAR10", tmp_path, seed=0), batches)
    assert sorted(path.name for path in (tmp_path / "cifar10" / "cifar-10-batches-py").iterdir()) == sorted(batches)
    assert not (tmp_path / "evil").exists()


def test_cifar_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    evil = pickle.dumps({b"data": __import__("os").getcwd}, protocol=2)  # references posix.getcwd
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError, match="may not reference"):
        load_dataset("CIFAR10", tmp_path, seed=0)


def test_cifar_offline_error_names_archive_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as error:
        load_dataset("CIFAR10", tmp_path, seed=0)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and "data_batch_1" in message and "test_batch" in message
    assert str((tmp_path / "cifar10").resolve()) in message


# ------------------------------------------------------------------------------------------ Digits


def test_digits_shapes_splits_and_determinism(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    splits = load_dataset("Digits", tmp_path, seed=3)
    (x_train, y_train), (x_test, y_test) = splits.train.tensors, splits.test.tensors
    assert splits.valid is None and splits.dim == 64 and splits.num_classes == 10
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert x_train.min() >= 0 and x_train.max() <= 1
    k = x_train * 255
    assert torch.equal(k, k.round()) and k.max() == 255  # 8-bit values as k/255; 16 -> 255
    # every image appears in exactly one split, with its label
    original = np.rint(load_digits().images * 255 / 16)
    both = torch.cat([x_train, x_test]).mul(255).round().numpy()[:, 0]
    labels = torch.cat([y_train, y_test]).numpy()
    order = np.lexsort(both.reshape(len(both), -1).T)
    order_original = np.lexsort(original.reshape(len(original), -1).T)
    assert np.array_equal(both[order], original[order_original])
    assert sorted(labels.tolist()) == sorted(load_digits().target.tolist())
    again = load_dataset("Digits", tmp_path, seed=3)
    assert torch.equal(again.train.tensors[0], x_train) and torch.equal(again.test.tensors[1], y_test)
    other = load_dataset("Digits", tmp_path, seed=4)
    assert not torch.equal(other.test.tensors[0], x_test)
    assert DATASETS["Digits"].image_shape == (1, 8, 8) and DATASETS["MNIST"].image_shape == (1, 28, 28)


# -------------------------------------------------------------------------------------- transforms


def quantised_batch(seed: int, shape: tuple[int, ...] = (64, 3, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float()
    return k, k / 255


@pytest.mark.parametrize("spec", [{"type": "Dequantize"}, {"type": "RandomNoise", "kwargs": {"normalization": 255.0}}])
def test_dequantize_bins_and_mean(spec: dict) -> None:
    k, x = quantised_batch(0)
    transform = build_transform([spec])
    torch.manual_seed(0)
    out = transform(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.all(out >= k / 256 - 1e-6) and torch.all(out < (k + 1) / 256)
    torch.manual_seed(1)
    mean = torch.stack([transform(x) for _ in range(400)]).mean(0)
    assert torch.allclose(mean, (255 * x + 0.5) / 256, atol=0.1 / 256)
    assert torch.equal(x, k / 255)  # input untouched


def test_random_horizontal_flip() -> None:
    _, x = quantised_batch(1, (2000, 3, 4, 5))
    torch.manual_seed(0)
    out = build_transform([{"type": "RandomHorizontalFlip"}])(x)
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert torch.all(mirrored | kept)  # each image exactly mirrored (along the width) or untouched
    assert 900 < mirrored.sum() < 1100
    assert torch.all(build_transform([{"type": "RandomHorizontalFlip", "kwargs": {"p": 1.0}}])(x) == x.flip(-1))
    assert torch.equal(build_transform([{"type": "RandomHorizontalFlip", "kwargs": {"p": 0}}])(x), x)


def test_transforms_are_deterministic_under_manual_seed() -> None:
    _, x = quantised_batch(2)
    transform = build_transform([{"type": "RandomHorizontalFlip"}, {"type": "Dequantize"}])
    torch.manual_seed(5)
    first = transform(x)
    torch.manual_seed(5)
    assert torch.equal(transform(x), first)
    assert not torch.equal(transform(x), first)


def test_identity_transforms_and_resize_check() -> None:
    _, x = quantised_batch(3, (4, 1, 28, 28))
    assert torch.equal(build_transform([])(x), x)
    assert torch.equal(build_transform([{"type": "ToTensor"}, {"type": "Resize", "kwargs": {"size": 28}}])(x), x)
    assert torch.equal(build_transform([{"type": "Resize", "kwargs": {"size": [28, 28]}}])(x), x)
    with pytest.raises(ValueError, match="32x32.*28x28"):
        build_transform([{"type": "Resize", "kwargs": {"size": 32}}])(x)
    with pytest.raises(ValueError, match="unknown transform"):
        build_transform([{"type": "ColorJitter"}])
    assert set(TRANSFORM_NAMES) == {"Dequantize", "RandomNoise", "RandomHorizontalFlip", "ToTensor", "Resize"}


# ---------------------------------------------------------------------------------- config checks

IMAGE_CONFIG = {
    "network": {"name": "ffjord_multiscale_mnist", "dataset": "Digits", "outputSize": 64},
    "training": {
        "loss": "NLLBitsLoss",
        "metricsTest": [{"type": "NLLBits"}],
        "batchSize": 200,
        "optimizer": "Adam",
        "numEpochs": 2,
        "transformsTrain": [{"type": "RandomHorizontalFlip", "kwargs": {"p": 0.5}}],
        "transformsFinal": [{"type": "Dequantize"}],
    },
}


def load(tmp_path: Path, changes: dict) -> dict:
    config = copy.deepcopy(IMAGE_CONFIG)
    for section, values in changes.items():
        config[section].update(values)
    path = tmp_path / "main.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (resolved,) = load_configs(path, ())
    return resolved


def test_config_accepts_transforms(tmp_path: Path) -> None:
    config = load(tmp_path, {"training": {"transformsTest": [{"type": "Resize", "kwargs": {"size": [8, 8]}}]}})
    assert config["training"]["transformsFinal"] == [{"type": "Dequantize", "kwargs": {}}]
    assert config["retraining"]["transformsTrain"] == [{"type": "RandomHorizontalFlip", "kwargs": {"p": 0.5}}]
    assert config["training"]["transformsTest"] == [{"type": "Resize", "kwargs": {"size": [8, 8]}}]


@pytest.mark.parametrize("changes, key, fragment", [
    ({"training": {"transformsTrain": [{"type": "Dequantize"}, {"type": "ColorJitter"}]}},
     "training.transformsTrain[1].type", "unknown transform 'ColorJitter'"),
    ({"retraining": {"transformsFinal": [{"type": "Dequantize", "kwargs": {"bits": 8}}]}},
     "retraining.transformsFinal[0].kwargs.bits", "takes no argument 'bits'"),
    ({"training": {"transformsTest": [{"type": "RandomHorizontalFlip", "kwargs": {"prob": 0.5}}]}},
     "training.transformsTest[0].kwargs.prob", "it takes: p"),
    ({"training": {"transformsTrain": [{"type": "RandomHorizontalFlip", "kwargs": {"p": 1.5}}]}},
     "training.transformsTrain[0].kwargs", "probability"),
    ({"training": {"transformsTest": [{"type": "Resize"}]}}, "training.transformsTest[0].kwargs", "needs argument(s): size"),
    ({"training": {"transformsFinal": [{"kind": "Dequantize"}]}}, "training.transformsFinal[0].kind", "unknown key"),
    ({"training": {"transformsFinal": "Dequantize"}}, "training.transformsFinal", "expected a list"),
    ({"network": {"dataset": "ToyGaussians", "outputSize": 2}}, "network.dataset", "does not hold images"),
])
def test_config_rejects_bad_transforms(tmp_path: Path, changes: dict, key: str, fragment: str) -> None:
    changes = {"retraining": {}, **changes}
    config = copy.deepcopy(IMAGE_CONFIG) | {"retraining": {}}
    for section, values in changes.items():
        config[section].update(values)
    path = tmp_path / "main.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError) as error:
        load_configs(path, ())
    assert error.value.key == key and fragment in error.value.message, str(error.value)
