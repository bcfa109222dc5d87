"""Training speed of the Gaussians toy flow: seconds per training iteration, forward/backward NFE per
iteration and test NLL after a short training, for `ffjord_l4_h64_sigmoid_da` and its `cnf_` twin.

    python bench/train_speed.py [--epochs 1] [--device cpu] [--threads 1]

Uses the config param/toy/ffjord/gaussians/l4_h64_sigmoid_da.yaml (batch 1024, AdamW 5e-3) and
writes nothing outside a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from experiment.config import load_configs
from experiment.plan import make_plan
from experiment.chain import prepare
from experiment.training.evaluate import evaluate
from experiment.training.loop import train

CONFIG = Path(__file__).resolve().parents[1] / "param/toy/ffjord/gaussians/l4_h64_sigmoid_da.yaml"
NETWORKS = ("ffjord_l4_h64_sigmoid_da", "cnf_l4_h64_sigmoid_da")


def bench(network: str, epochs: int, device: str, results: str) -> dict:
    overrides = [f"network.name={network}", f"training.numEpochs={epochs}", f"device={device}",
                 f"directories.results={results}", "experiments.numNets=1"]
    config = load_configs(CONFIG, overrides)[0]
    experiment = prepare(make_plan(config))
    torch.manual_seed(0)
    model = experiment.new_model()
    schedule = experiment.settings.training
    outcome = train(model, schedule, experiment.data_for(schedule), experiment.loss(schedule), seed=0,
                    progress_file=experiment.run.progress("bench"), description=network)
    iterations = sum(-(-len(experiment.data.x_train) // schedule.batch_size) for _ in outcome.curve)
    train_seconds = sum(row["seconds"] for row in outcome.curve)
    test = evaluate(model, experiment.x_test, experiment.y_test, schedule.test_batch_size,
                    experiment.loss(schedule), schedule.metrics_test, experiment.data.data_dim)
    return {
        "network": network,
        "s/iter": train_seconds / iterations,  # includes the per-epoch validation pass
        "nfe fwd/iter": sum(row["nfe_forward"] for row in outcome.curve) / len(outcome.curve),
        "nfe bwd/iter": sum(row["nfe_backward"] for row in outcome.curve) / len(outcome.curve),
        f"test nll ({test.trace_estimator})": test.loss,
        "epochs": epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (as experiment.main)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    with tempfile.TemporaryDirectory() as results:
        rows = [bench(network, arguments.epochs, arguments.device, results) for network in NETWORKS]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {arguments.device}")
    for row in rows:
        print("  ".join(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}" for key, value in row.items()))


if __name__ == "__main__":
    main()
