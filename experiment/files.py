"""Crash-safe file writes: write to a temporary name in the same folder, fsync, then rename (and fsync
the folder, so the rename itself survives a power cut), so a reader (or a resumed run) sees either the
old file or the complete new one, never a torn file.

A process killed between writing the temporary file `.{name}.XXXXXXXX.tmp` and renaming it leaves
that file behind; `remove_temporaries` removes such leftovers, and must only be called by a process
that holds the lock under which their target is written (so that no live writer's file goes).

A file damaged all the same (a disk fault, a copy cut short, a hand edit) is a `DamagedFileError`
naming the file; what can be recomputed is set aside (`set_aside`) and recomputed by the caller.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from typing import Any
from datetime import datetime, timezone
from pathlib import Path

import torch

log = logging.getLogger("experiment")

TEMPORARY_SUFFIX = ".tmp"
TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]+\.tmp$")  # what mkstemp makes of our prefix and suffix


class DamagedFileError(RuntimeError):
    """A file of a run folder (or a data file) that cannot be read; the message names it and says what to do."""

    def __init__(self, path: Path, reason: str, advice: str):
        super().__init__(f"{path} {reason}. {advice}")
        self.path, self.reason = Path(path), reason


# What to do about a file-system error, by errno (the error itself names the file and the cause).
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space (or set directories.results to another disk) and run the same "
                  "command again; finished models are kept and the run resumes",
    errno.EDQUOT: "the disk quota is used up: free some space and run the same command again; the run resumes",
    errno.EFBIG: "a file-size limit stopped the write (see `ulimit -f`): raise it and run the same command again",
    errno.EACCES: "no permission: make the file or its folder writable for you (or set directories.results to a "
                  "folder of your own) and run again",
    errno.EPERM: "the operation is not permitted here: check the file's owner and permissions, then run again",
    errno.EROFS: "the file system is read-only: set directories.results to a writable folder",
    errno.EISDIR: "a folder stands where a file belongs: move it aside and run again",
    errno.ENOTDIR: "a file stands where a folder belongs: move it aside and run again",
}


def os_error_text(error: OSError) -> str:
    """One line for a file-system error: the path, the cause and what to do."""
    path = f"{error.filename}: " if error.filename else ""
    name = errno.errorcode.get(error.errno, "")
    advice = _OS_ERROR_ADVICE.get(error.errno, "fix the cause and run the same command again; finished models are kept")
    return f"{path}{error.strerror or error}{f' ({name})' if name else ''}: {advice}"


def process_umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` into `path`, atomically. The file gets the mode a plain open() would give it (0o666 less
    the umask), not mkstemp's 0o600, so that others can read results as they can read any file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), 0o666 & ~process_umask())
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:  # named after the file it was for, not the temporary (a write error names none)
        Path(temporary).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Makes a rename in `folder` durable; skipped where folders cannot be opened or synced (Windows,
    some network file systems)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


DIGEST_KEY = "sha256"  # the entry of a saved checkpoint dict that holds `content_digest` of the others


def content_digest(value: Any) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's dtype, shape and bytes, and every other
    value's type and repr, in a fixed order (mapping keys sorted), so that it is the same for the dict
    saved and the dict loaded back (on any device) and changes with any bit of a weight."""
    hasher = hashlib.sha256()
    _digest_into(hasher, value)
    return hasher.hexdigest()


def _digest_into(hasher: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"tensor {tensor.dtype} {tuple(value.shape)};".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        hasher.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=repr):
            hasher.update(f"{key!r}:".encode())
            _digest_into(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _digest_into(hasher, item)
    else:
        hasher.update(f"{type(value).__name__} {value!r};".encode())


def atomic_torch_save(path: Path, obj: dict) -> None:
    """torch.save of a plain dict of tensors and builtins (loadable with weights_only=True), with the
    `content_digest` of its entries under DIGEST_KEY, which `load_checkpoint` checks."""
    buffer = io.BytesIO()
    torch.save({**obj, DIGEST_KEY: content_digest(obj)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


RETRAIN_ADVICE = ("Train its model again with `python -m experiment.main CONFIG --repair` (CONFIG: the config that made the "
                  "run; config.yaml in the run folder is its resolved copy), which sets the file aside first")


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint or progress file, without its digest entry; DamagedFileError (naming it) when it
    cannot be loaded or its contents do not match the digest saved with them (a flipped bit in a
    weight loads without complaint otherwise). Files saved before digests were written have none
    and load unchecked."""
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many kinds (RuntimeError, EOFError, UnpicklingError, ...)
        reason = str(error).strip().split("\n")[0][:160]  # torch's messages run over many lines
        raise DamagedFileError(path, f"cannot be loaded ({type(error).__name__}: {reason})", RETRAIN_ADVICE) from None
    if not isinstance(loaded, dict):
        raise DamagedFileError(path, f"holds a {type(loaded).__name__}, not a checkpoint dict", RETRAIN_ADVICE)
    saved_digest = loaded.pop(DIGEST_KEY, None)
    if saved_digest is not None and saved_digest != content_digest(loaded):
        raise DamagedFileError(path, "does not match the checksum saved with it (its contents changed after it was "
                                     "written)", RETRAIN_ADVICE)
    return loaded


def load_or_set_aside(path: Path, device: str | torch.device, *, move: bool = True) -> dict | None:
    """The checkpoint at `path`, or None when there is none or it is damaged: a damaged file is a
    result the caller recomputes, so it is renamed aside (`set_aside`, when `move`) and the log says
    so. `move=False` is for the helper ranks of data-parallel training, which read the same file as
    rank 0 and leave the renaming to it."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path, device)
    except DamagedFileError as error:
        if move:
            log.warning("%s %s: set aside as %s; computing it again", path, error.reason, set_aside(path).name)
        return None


def set_aside(path: Path) -> Path:
    """Renames a damaged `path` to `{name}.corrupt-{UTC time}`, kept for inspection (no pattern that
    reads results matches it); returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, target)
    return target


def remove_temporaries(folder: Path, owns: Callable[[str], bool]) -> list[Path]:
    """Removes the temporary files that killed atomic writes left in `folder` for targets whose file
    name `owns` accepts; returns them. Call it only while holding the lock under which those targets
    are written: then no live process is writing any of them, and every such file is a leftover."""
    removed = []
    for path in sorted(folder.glob(f".*{TEMPORARY_SUFFIX}")) if folder.is_dir() else []:
        match = TEMPORARY.match(path.name)
        if match and owns(match["target"]):
            path.unlink(missing_ok=True)
            log.info("removed %s, left by a process killed while writing %s", path, match["target"])
            removed.append(path)
    return removed


# ------------------------------------------------------------------------------ CSV files


def rows_to_csv(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """The CSV text of `rows` (every CSV file of the project is written by this): the header is
    `columns`, or else every key of the rows in first-seen order; a row without a column leaves its
    cell empty."""
    if columns is None:
        columns = list(dict.fromkeys(name for row in rows for name in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


_REPORTED_TORN_LINES: set[tuple[str, str]] = set()  # (file, torn text) warned about by this process


def read_csv(path: Path, advice: str = "Restore it from a backup") -> list[dict]:
    """Rows of a CSV file with numbers parsed back into int/float ('' stays a string).

    Every CSV file we write ends with a newline, so text after the last newline is a row torn by
    something that bypassed the atomic write (a copy cut short, a full disk): it is left out, with a
    warning. A file that does not parse otherwise is a DamagedFileError naming it, with `advice`."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as file:
            text = file.read()
    except UnicodeDecodeError as error:
        raise DamagedFileError(path, f"is not text ({error})", advice) from None
    complete, _, torn = text.rpartition("\n")
    if torn:
        if not complete:
            raise DamagedFileError(path, "has no complete header line", advice)
        if (str(path), torn) not in _REPORTED_TORN_LINES:  # the file is read many times until it is rewritten
            _REPORTED_TORN_LINES.add((str(path), torn))
            log.warning("%s: its last line is incomplete (%r...), probably cut off by a crash; reading the file without "
                        "it (the next update of the file drops it)", path, torn[:40])
    reader = csv.DictReader(io.StringIO(complete + "\n"))
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():
                raise DamagedFileError(path, f"line {reader.line_num} does not have the {len(reader.fieldnames)} "
                                             "fields of the header", advice)
            rows.append({name: _parse_number(value) for name, value in row.items()})
    except csv.Error as error:
        raise DamagedFileError(path, f"is not a readable CSV file (line {reader.line_num}: {error})", advice) from None
    return rows


def _parse_number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def numeric(value: object) -> float | None:
    """A CSV cell (as `read_csv` gives it) as a float; None for an empty or text cell (bools are not numbers here)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def write_curve(path: Path, rows: list[dict]) -> None:
    """The training-curve file `path` holding exactly `rows`, one row per epoch (none: no file),
    rewritten whole and atomically, so that a reader never sees a torn row (a curve is small)."""
    if rows:
        atomic_write_text(path, rows_to_csv(rows))
    else:
        path.unlink(missing_ok=True)
