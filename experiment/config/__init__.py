"""Experiment configs (SPEC §3): `load_configs` reads a YAML file into fully resolved, validated
plain dicts; every key is documented in docs/CONFIG.md."""

from experiment.config.loading import add_overrides_argument, load_configs
from experiment.config.schema import ConfigError

__all__ = ["ConfigError", "add_overrides_argument", "load_configs"]
