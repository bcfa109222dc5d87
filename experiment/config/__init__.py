"""Experiment configs: `load_configs` reads a YAML file into fully resolved, validated
plain dicts (every key is documented in docs/CONFIG.md); `settings_of` gives their typed view."""

from experiment.config.loading import add_overrides_argument, load_configs
from experiment.config.schema import ConfigError
from experiment.config.settings import Schedule, Settings, recorded_settings, settings_of

__all__ = ["ConfigError", "Schedule", "Settings", "add_overrides_argument", "load_configs", "recorded_settings",
           "settings_of"]
