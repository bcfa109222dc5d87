"""Projected wall time of one full paper-schedule toy experiment on this machine, from measured
trainings: 3 nets × (1 dense + 2 methods × 29 retrainings) of 100 epochs each.

    python bench/sweep_projection.py [CONFIG] [--dense-epochs 100] [--retrain-epochs 3]
                                     [--ratios 0.2 0.5 0.8 0.95] [--workers 2] [--threads 1]

CONFIG defaults to the Gaussians flow (param/toy/ffjord/gaussians/l4_h64_sigmoid_da.yaml). In a
temporary folder, through the runner's own functions:

1. trains one dense net for `--dense-epochs` epochs (100 = the schedule; a dense flow's NFE grows
   as it trains, so fewer epochs scaled up underestimate it);
2. for each pruning method of the config and each of `--ratios`, prunes the trained dense net to
   that ratio and retrains it for `--retrain-epochs` epochs the way a chain does (an FT model as its
   compact twin), timing seconds per epoch; a retraining starts from a trained net, so its NFE and
   its seconds per epoch hold steady and scale to the schedule's epochs;
3. interpolates seconds per epoch over the config's prune ratios (29 for the paper's toy configs)
   and adds everything up: CPU-seconds of one experiment, and its wall time on `--workers` worker
   processes (`python -m experiment.main CONFIG --workers N`), assuming they do not slow each other
   (on this 2-core machine two workers took 0.53 of one worker's time for the quickstart sweep).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from experiment import process
from experiment.config import load_configs
from experiment.plan import make_plan
from experiment.pruning.rules import prune
from experiment.chain import prepare, retrain
from experiment.training.loop import train

CONFIG = Path(__file__).resolve().parents[1] / "param/toy/ffjord/gaussians/l4_h64_sigmoid_da.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(CONFIG))
    parser.add_argument("--dense-epochs", type=int, default=100)
    parser.add_argument("--retrain-epochs", type=int, default=3)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5, 0.8, 0.95])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    process.configure(arguments.threads)

    projected = make_plan(load_configs(arguments.config, [])[0])  # the experiment being projected
    dense_epochs, retrain_epochs = projected.settings.training.num_epochs, projected.settings.retraining.num_epochs
    with tempfile.TemporaryDirectory() as results:
        config = load_configs(arguments.config, [f"directories.results={results}", "experiments.numNets=1",
                                                 f"training.numEpochs={arguments.dense_epochs}",
                                                 f"retraining.numEpochs={arguments.retrain_epochs}"])[0]
        experiment = prepare(make_plan(config), progress_bars=False)
        network = experiment.settings.network
        print(f"{network.name} on {network.dataset}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s)")

        torch.manual_seed(0)
        dense = experiment.new_model()
        started = time.perf_counter()
        schedule = experiment.settings.training
        train(dense, schedule, experiment.data_for(schedule), experiment.loss(schedule), seed=0,
              progress_file=experiment.run.progress("dense"), progress_bars=False)
        dense_seconds = (time.perf_counter() - started) * dense_epochs / arguments.dense_epochs
        print(f"dense: {dense_seconds:.0f} s per training ({arguments.dense_epochs} epochs measured, scaled to {dense_epochs})")

        per_method = {}
        for method in projected.methods:
            seconds_per_epoch = []
            for ratio in arguments.ratios:
                model = experiment.new_model()
                model.load_state_dict(dense.state_dict())
                masks = prune(model, method, ratio, {})
                started = time.perf_counter()
                retrain(experiment, method, model, masks, f"{method}_{ratio}", seed=0, description=method)
                seconds_per_epoch.append((time.perf_counter() - started) / arguments.retrain_epochs)
                print(f"{method} PR {ratio:.2f}: {seconds_per_epoch[-1]:.2f} s per retraining epoch")
            per_epoch = np.interp(projected.prune_ratios, arguments.ratios, seconds_per_epoch)
            per_method[method] = float(per_epoch.sum()) * retrain_epochs

    per_net = dense_seconds + sum(per_method.values())
    total = len(projected.nets) * per_net
    print(f"one net: dense {dense_seconds / 3600:.2f} h + " +
          " + ".join(f"{method} chain {seconds / 3600:.2f} h" for method, seconds in per_method.items()) +
          f" ({len(projected.prune_ratios)} retrainings of {retrain_epochs} epochs each) = {per_net / 3600:.2f} h")
    print(f"projected CPU time of the experiment ({len(projected.nets)} nets): {total / 3600:.1f} h")
    print(f"projected wall time with --workers {arguments.workers}: {total / arguments.workers / 3600:.1f} h")


if __name__ == "__main__":
    main()
