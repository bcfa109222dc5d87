"""Measurements of earlier analysis calls, so that a killed or repeated analysis measures only what
it has not measured yet, and a copy of a run trimmed to its results (no checkpoints) can still be
analysed.

An entry is keyed by a name (a model's, or a control's) and holds the SHA-256 of the checkpoint it
was measured on (`Run.checkpoint_sha256`) and the settings that change its numbers. It serves while
both match, and also when the checkpoint is gone; a changed checkpoint or changed settings are
measured anew.
"""

from __future__ import annotations

from collections.abc import Callable


class MeasurementCache:
    """`entries`: a JSON-ready dict, updated in place; `saved` is called after every new entry, so a
    killed analysis keeps what it finished."""

    def __init__(self, entries: dict, saved: Callable[[], object] = lambda: None):
        self.entries, self.saved = entries, saved

    def get(self, key: str, signature: str | None, settings: dict) -> dict | None:
        """The entry of `key` if it was measured under `settings` on the checkpoint of SHA-256
        `signature` (`None`: the checkpoint is gone, any entry of these settings serves)."""
        entry = self.entries.get(key)
        if entry is None or entry["settings"] != settings or signature not in (None, entry["checkpoint"]):
            return None
        return entry

    def put(self, key: str, signature: str | None, settings: dict, **measured) -> dict:
        """Records `measured` (JSON values) for `key` and saves."""
        entry = self.entries[key] = {"settings": settings, "checkpoint": signature, **measured}
        self.saved()
        return entry
