"""Sparse Flows (NeurIPS 2021) reproduced: prune continuous-depth models and measure them.

The public API is small:

    configs = load_configs("param/quickstart.yaml", ["training.numEpochs=2"])  # list of resolved dicts
    model = build_model("ffjord_l4_h64_sigmoid_da", 2)                       # an nn.Module
    run_folder = run_experiment(configs[0])                                  # train, prune, record
    table = load_results("data/results")                                     # every finished model's metrics row
"""

from experiment.config import ConfigError, load_configs
from experiment.models import build_model
from experiment.results import load_results
from experiment.scheduler import run_experiment

__all__ = ["ConfigError", "build_model", "load_configs", "load_results", "run_experiment"]
