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

import io
import logging
import os
import re
import tempfile
from collections.abc import Callable
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


def process_umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` into `path`, atomically. The file gets the mode a plain open() would give it (0o666 less
    the umask), not mkstemp's 0o600, so that others can read results as they can read any file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), 0o666 & ~process_umask())
            os.fsync(file.fileno())
        os.replace(temporary, path)
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


def atomic_torch_save(path: Path, obj: dict) -> None:
    """torch.save of a plain dict of tensors and builtins (loadable with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


RETRAIN_ADVICE = "Move it aside (or delete it) and run the experiment again: its model is then trained again"


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint or progress file; DamagedFileError (naming it) when it cannot be loaded."""
    try:
        loaded = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many kinds (RuntimeError, EOFError, UnpicklingError, ...)
        reason = str(error).strip().split("\n")[0][:160]  # torch's messages run over many lines
        raise DamagedFileError(path, f"cannot be loaded ({type(error).__name__}: {reason})", RETRAIN_ADVICE) from None
    if not isinstance(loaded, dict):
        raise DamagedFileError(path, f"holds a {type(loaded).__name__}, not a checkpoint dict", RETRAIN_ADVICE)
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
