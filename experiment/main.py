"""`python -m experiment.main CONFIG.yaml [key.path=value ...] [--dry-run]`: run every experiment a
config describes (one per `customizations` entry), resuming whatever was already computed."""

from __future__ import annotations

import argparse
import logging
import sys

import torch
import yaml

from experiment.config import ConfigError, load_configs
from experiment.plan import make_plan
from experiment.runner import run_experiment


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiment.main", description=__doc__)
    parser.add_argument("config", help="YAML config file, e.g. param/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a config value (parsed as YAML)")
    parser.add_argument("--dry-run", action="store_true", help="print each resolved config and its plan; write nothing")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: fastest for the small toy models; raise it for images)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        configs = load_configs(arguments.config, arguments.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if arguments.dry_run:
        for index, config in enumerate(configs):
            print(f"# experiment {index + 1} of {len(configs)}")
            print(yaml.safe_dump(config, sort_keys=False).rstrip())
            print("# plan")
            print(make_plan(config).describe())
            print()
        return 0

    torch.set_num_threads(arguments.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for index, config in enumerate(configs):
        print(f"experiment {index + 1} of {len(configs)}")
        try:
            run_experiment(config)
        except ConfigError as error:
            print(f"config error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
