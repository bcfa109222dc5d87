"""Reading one run folder back, without writing anything: its config, metrics rows, curves, the
trained models and the exact data splits it used. This is what the `paper/` scripts build on."""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from experiment.config.settings import Settings, recorded_settings
from experiment.files import RETRAIN_ADVICE, DamagedFileError, load_checkpoint
from experiment.pruning.rules import apply_masks
from experiment.results.rebuild import build_run_model, load_run_data
from experiment.results.tree import RunDir, is_failed, model_name
from experiment.files import read_csv


class Run:
    """A run folder: `config` (config.yaml as recorded) and `settings` (its typed view), `rows`
    (metrics.csv, the models that finished), `failures` (the rows of models that failed: no
    measurements, the reason in `error`), and loaders for models, curves and data."""

    def __init__(self, path: str | Path):
        self.folder = RunDir(Path(path))
        self.config = self.folder.load_config()
        rows = self.folder.read_metrics()
        self.rows = [row for row in rows if not is_failed(row)]
        self.failures = [row for row in rows if is_failed(row)]

    @cached_property
    def settings(self) -> Settings:
        """The typed view of `config` (`recorded_settings`: keys added since the run take their defaults)."""
        return recorded_settings(self.config, str(self.folder.config_file))

    @property
    def path(self) -> Path:
        return self.folder.path

    def load_model(self, row_or_name: dict | str, device: str | torch.device = "cpu") -> nn.Module:
        """The trained model of a metrics row (or of a checkpoint stem such as "dense_net0"), masks
        applied, in eval mode; DamagedFileError (saying how to train it again) when its checkpoint is
        missing or damaged."""
        name = row_or_name if isinstance(row_or_name, str) else model_name(row_or_name)
        model = build_run_model(self.settings.network, device)
        path = self.folder.checkpoint(name)
        if not path.exists():
            raise DamagedFileError(path, "is missing", RETRAIN_ADVICE)
        checkpoint = load_checkpoint(path, device)
        model.load_state_dict(checkpoint["model"])
        apply_masks(model, checkpoint["masks"])
        return model.eval()

    def checkpoint_sha256(self, row_or_name: dict | str) -> str | None:
        """The SHA-256 of a model's checkpoint file (the same in a copy of the run on another machine),
        what analyses key their caches by; None when the checkpoint is gone (a results folder trimmed
        to what resuming or the analyses need)."""
        path = self.folder.checkpoint(row_or_name if isinstance(row_or_name, str) else model_name(row_or_name))
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

    def curve(self, row_or_name: dict | str) -> list[dict]:
        name = row_or_name if isinstance(row_or_name, str) else model_name(row_or_name)
        return read_csv(self.folder.curve(name), "Restore it from a backup; the same curve is kept in its model's "
                                                  "checkpoint, under the key 'curve'")

    def load_data(self, draw_missing_split: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"train", "valid", "test"} → (x, y) exactly as the run used them (persisted split; with
        `draw_missing_split`, a missing split file is drawn again in memory from the run's seed, see
        `load_run_data`)."""
        return load_run_data(self.settings, self.folder, draw_missing_split=draw_missing_split).splits
