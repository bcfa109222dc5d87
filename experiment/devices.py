"""The torch device a config's `device` names, checked against the GPUs this process sees."""

from __future__ import annotations

import torch

from experiment.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """The torch device of a config's `device` (auto, cpu, cuda, cuda:N); a ConfigError if that GPU is
    not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("<config>", "device", f"{name} requested but torch.cuda.is_available() is False")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("<config>", "device", f"{name} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device
