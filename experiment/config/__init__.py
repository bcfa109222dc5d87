"""Experiment configs (SPEC §3): `load_configs` reads a YAML file into fully resolved, validated
plain dicts; every key is documented in docs/CONFIG.md."""

from experiment.config.loading import load_configs
from experiment.config.schema import ConfigError

__all__ = ["ConfigError", "load_configs"]
