"""Image datasets (docs/DATASETS.md): MNIST, CIFAR-10 and scikit-learn's 8×8 Digits.

Every loader returns (train, test) TensorDatasets, which the registry (experiment/data/__init__.py)
makes a :class:`~experiment.data.splits.Splits`, with ``x`` float32 ``[N, C, H, W]`` holding the
8-bit pixel values ``k`` as ``k / 255`` (so in [0, 1]) and ``y`` int64 labels, in the order of the
original files. There is no separate validation split (``valid`` is None): the runner carves a
persisted 10% validation split out of train.

MNIST and CIFAR-10 are read from ``{data_dir}/mnist/`` and ``{data_dir}/cifar10/``; missing files
are downloaded there (the checksum is verified on download) and, offline, a DataMissingError says
which files to place where. Files placed by hand are not checksummed, but their format is checked.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiment.data.download import DataMissingError, fetch
from experiment.files import atomic_write_bytes

# ------------------------------------------------------------------------------------------- MNIST

MNIST_FOLDER = "mnist"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
"""Base URL of the gzipped IDX files (the mirror torchvision uses)."""

MNIST_FILES: dict[str, str] = {  # gzipped file name -> md5 of the official file
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

MNIST_SHAPE = (1, 28, 28)


def parse_idx(data: bytes, magic: int, name: str = "IDX data") -> np.ndarray:
    """The uint8 array stored in IDX bytes ``data`` (big-endian header: a 4-byte magic number whose
    last byte is the number of dimensions, then one 4-byte size per dimension, then the values).
    Raises ValueError when the magic number is not ``magic`` or the size does not match the header."""
    if len(data) < 4:
        raise ValueError(f"{name}: too short for an IDX file ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{name}: IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    num_dims = magic & 0xFF
    header = 4 + 4 * num_dims
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=num_dims, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(f"{name}: IDX header announces shape {shape} ({expected} bytes) "
                         f"but {len(data) - header} bytes follow")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_idx_file(folder: Path, gz_name: str, magic: int) -> np.ndarray:
    """Parses ``folder/gz_name`` (gzipped) or, when only that exists, its unzipped twin."""
    gz_path, plain_path = folder / gz_name, folder / gz_name.removesuffix(".gz")
    path = gz_path if gz_path.exists() else plain_path
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic: a .gz file, or an unzipped name still holding gzip data
        data = gzip.decompress(data)
    return parse_idx(data, magic, str(path))


def _fetch_mnist(folder: Path) -> None:
    """Downloads the MNIST files that are missing (in neither gzipped nor unzipped form)."""
    missing = [name for name in MNIST_FILES
               if not (folder / name).exists() and not (folder / name.removesuffix(".gz")).exists()]
    for name in missing:
        try:
            fetch(MNIST_URL + name, folder / name, MNIST_FILES[name])
        except DataMissingError as error:
            raise DataMissingError(
                f"MNIST: {', '.join(missing)} missing from {folder.resolve()} and the download failed "
                f"({error}). Download the files from {MNIST_URL} (or another MNIST mirror) and place them, "
                f"gzipped or unzipped, in {folder.resolve()}/"
            ) from None


def _mnist_split(folder: Path, prefix: str) -> TensorDataset:
    images = _read_idx_file(folder, f"{prefix}-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)
    labels = _read_idx_file(folder, f"{prefix}-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
    if images.shape[1:] != MNIST_SHAPE[1:] or len(images) != len(labels):
        raise ValueError(f"MNIST {prefix}: {images.shape} images with {labels.shape} labels; "
                         f"expected [N, 28, 28] images and N labels")
    return _dataset(images[:, None], labels)


def load_mnist(data_dir: str | Path) -> tuple[TensorDataset, TensorDataset]:
    """MNIST (train, test) from ``{data_dir}/mnist``: 60,000 / 10,000 images [N, 1, 28, 28]."""
    folder = Path(data_dir) / MNIST_FOLDER
    _fetch_mnist(folder)
    return _mnist_split(folder, "train"), _mnist_split(folder, "t10k")


# ---------------------------------------------------------------------------------------- CIFAR-10

CIFAR_FOLDER = "cifar10"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_BATCH_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"

CIFAR_SHAPE = (3, 32, 32)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of numpy arrays, lists and strings) and nothing else: a
    downloaded pickle may not run arbitrary code."""

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # pickles made by numpy < 2
            module = "numpy._core" + module.removeprefix("numpy.core")
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a CIFAR batch may not reference {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) of one CIFAR-10 "python version" batch: a
    pickled dict whose b"data" rows hold the red, green and blue 32×32 planes, each row-major."""
    with open(path, "rb") as file:
        batch = _BatchUnpickler(file, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: a CIFAR batch needs the keys 'data' and 'labels', has {sorted(map(str, batch))}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != int(np.prod(CIFAR_SHAPE)) or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} with {labels.shape} labels; expected [N, 3072] and N labels")
    return data.reshape(-1, *CIFAR_SHAPE), labels


def _extract_cifar(archive: Path, batch_folder: Path) -> None:
    """Writes the batches found in the tar.gz ``archive`` into ``batch_folder``; only the expected
    member names are read, so the archive cannot write anywhere else."""
    wanted = {f"{CIFAR_BATCH_FOLDER}/{name}" for name in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in wanted and member.isfile():
                atomic_write_bytes(batch_folder / name.rsplit("/", 1)[1], tar.extractfile(member).read())


def _fetch_cifar(folder: Path) -> Path:
    """The folder holding the CIFAR-10 batches, extracted from the archive (downloaded when missing)
    if any batch is absent."""
    batch_folder = folder / CIFAR_BATCH_FOLDER
    names = (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)
    if all((batch_folder / name).exists() for name in names):
        return batch_folder
    archive = folder / CIFAR_ARCHIVE
    if not archive.exists():
        try:
            fetch(CIFAR_URL, archive, CIFAR_MD5)
        except DataMissingError as error:
            raise DataMissingError(
                f"CIFAR10: the batches {', '.join(names)} are missing from {batch_folder.resolve()} and the "
                f"download failed ({error}). Download {CIFAR_URL} and place {CIFAR_ARCHIVE} in "
                f"{folder.resolve()}/ (it is extracted on the next run), or extract it there yourself so "
                f"that {batch_folder.resolve()}/ holds {', '.join(names)}."
            ) from None
    _extract_cifar(archive, batch_folder)
    absent = [name for name in names if not (batch_folder / name).exists()]
    if absent:
        raise DataMissingError(f"CIFAR10: {archive.resolve()} holds no {CIFAR_BATCH_FOLDER}/{absent[0]}; "
                               f"delete the archive and run again to re-download it")
    return batch_folder


def load_cifar10(data_dir: str | Path) -> tuple[TensorDataset, TensorDataset]:
    """CIFAR-10 (train, test) from ``{data_dir}/cifar10``: 50,000 / 10,000 images [N, 3, 32, 32];
    train is data_batch_1..5 in order."""
    batch_folder = _fetch_cifar(Path(data_dir) / CIFAR_FOLDER)
    train = [read_cifar_batch(batch_folder / name) for name in CIFAR_TRAIN_BATCHES]
    test = read_cifar_batch(batch_folder / CIFAR_TEST_BATCH)
    return (_dataset(np.concatenate([images for images, _ in train]), np.concatenate([labels for _, labels in train])),
            _dataset(*test))


# ------------------------------------------------------------------------------------------ Digits

DIGITS_SHAPE = (1, 8, 8)
DIGITS_NUM_TEST = 360
"""Test images of the Digits split: 20% of the 1,797, rounded up."""


def load_digits_splits(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1,797 8×8 digit images (values 0..16, turned into 8-bit as round(v·255/16)),
    split by a permutation from ``np.random.default_rng(seed)``: the first DIGITS_NUM_TEST permuted
    images are the test set, the rest train; each split keeps the original order."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing is downloaded

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    permutation = np.random.default_rng(seed).permutation(len(images))
    test, train = np.sort(permutation[:DIGITS_NUM_TEST]), np.sort(permutation[DIGITS_NUM_TEST:])
    return _dataset(images[train], labels[train]), _dataset(images[test], labels[test])


# ----------------------------------------------------------------------------------------- helpers


def _dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """TensorDataset of uint8 images [N, C, H, W] as float32 k/255 and int64 labels."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).to(torch.float32).div_(255.0)  # a writable copy
    return TensorDataset(x, torch.from_numpy(np.array(labels, dtype=np.int64)))
