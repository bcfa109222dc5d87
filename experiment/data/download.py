"""Fetching real datasets into `directories.training_data`: download when missing, verify a
checksum, and, offline, fail with a message that says which file to place where."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from experiment.files import atomic_write_bytes


class DataMissingError(RuntimeError):
    """A dataset file is absent and could not be downloaded."""


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, path: Path, md5: str | None) -> Path:
    """`path`, downloaded from `url` first if it does not exist; raises DataMissingError (naming the
    URL and the place to put the file) when the download fails, ValueError on a checksum mismatch."""
    path = Path(path)
    if not path.exists():
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except OSError as error:
            raise DataMissingError(
                f"{path} is missing and downloading {url} failed ({error}). "
                f"Download it by hand and place it at {path.resolve()}."
            ) from None
        atomic_write_bytes(path, data)
    if md5 is not None and md5sum(path) != md5:
        raise ValueError(f"{path} has md5 {md5sum(path)}, expected {md5}: delete it and run again to re-download")
    return path
