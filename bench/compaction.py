"""Speed of an FT-pruned flow as its compact twin (experiment/pruning/compaction.py) against the
masked model it replaces: the paper's Gaussians flow `ffjord_l4_h64_sigmoid_da` at FT prune ratio 0.8.

    python bench/compaction.py [--ratio 0.8] [--rounds 15] [--threads 1] [--batch 1024]

The model is initialised and trained briefly (20 full-batch iterations with the config's optimizer,
so that the solver's NFE is that of a model in training), pruned by FT, and compacted. Then, in
`--rounds` rounds alternating between the two, it times on the batch `gaussians(1024,
np.random.default_rng(1))` (the config's batch size; `--batch` changes it):

* the forward solve without gradients as validation and test evaluation run it
  (`experiment.training.evaluate`: the exact trace for 2-D flows);
* the same with Hutchinson's trace estimate (the model's default forward, as in training);
* a training iteration: Hutchinson forward solve, adjoint backward solve, optimizer step, masks
  re-applied (as `experiment.training.loop`).

Prints the fastest and the median time of each, then `speedup: X` (the evaluation forward),
`speedup forward hutchinson: Y` and `speedup training iteration: Z`, each the masked model's fastest
time over the compact one's (as `timeit` advises: on a shared machine the other processes only ever
add time). Writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from experiment.config import Schedule, load_configs, settings_of
from experiment.data.toy import gaussians
from experiment.models import build_model, count_nfe
from experiment.pruning.compaction import compact
from experiment.pruning.layers import prunable_chains
from experiment.pruning.liveness import Masks
from experiment.pruning.rules import apply_masks, prune
from experiment.training.evaluate import trace_estimator_for
from experiment.training.losses import build_loss
from experiment.training.optim import build_optimizer

CONFIG = Path(__file__).resolve().parents[1] / "param/toy/ffjord/gaussians/l4_h64_sigmoid_da.yaml"


class Subject:
    """One model under test with its own optimizer and masks."""

    def __init__(self, model: nn.Module, masks: Masks, schedule: Schedule):
        self.model, self.masks = model, masks
        self.optimizer = build_optimizer(model.parameters(), schedule.optimizer, schedule.optimizer_kwargs)
        self.loss = build_loss(schedule.loss, schedule.loss_kwargs, 2)

    def evaluation_forward(self, x: torch.Tensor) -> int:
        """A forward solve without gradients with evaluation's trace estimator; its NFE."""
        before = count_nfe(self.model)
        with torch.no_grad():
            self.model.log_prob(x, exact_trace=trace_estimator_for(self.model, x.shape[1]) == "exact")
        return count_nfe(self.model) - before

    def hutchinson_forward(self, x: torch.Tensor) -> int:
        """A forward solve without gradients with Hutchinson's trace estimate; its NFE."""
        before = count_nfe(self.model)
        with torch.no_grad():
            self.model.log_prob(x, exact_trace=False)
        return count_nfe(self.model) - before

    def training_iteration(self, x: torch.Tensor) -> int:
        """Forward, adjoint backward, optimizer step, masks re-applied; its NFE (both solves)."""
        before = count_nfe(self.model)
        loss = self.loss(self.model(x), None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        apply_masks(self.model, self.masks)
        return count_nfe(self.model) - before


def timed(action: Callable[[torch.Tensor], int], x: torch.Tensor, seed: int) -> tuple[float, int]:
    """Seconds and NFE of one call (the same Hutchinson noise for both models of a round)."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    nfe = action(x)
    return time.perf_counter() - started, nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.8, help="FT prune ratio")
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per model and measurement")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--batch", type=int, default=1024, help="samples per solve")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    settings = settings_of(load_configs(CONFIG, [])[0])
    schedule, network = settings.training, settings.network.name
    x = torch.tensor(gaussians(arguments.batch, np.random.default_rng(1))[0], dtype=torch.float32)

    torch.manual_seed(0)
    model = build_model(network, 2)
    warmup = Subject(model, {}, schedule)
    for _ in range(20):
        warmup.training_iteration(x)
    masks = prune(model, "FilterThresNet", arguments.ratio, {})
    compacted = compact(model, masks)
    subjects = {"masked": Subject(model, masks, schedule), "compact": Subject(compacted.model, compacted.masks, schedule)}

    widths = {name: [layer.width for layer in prunable_chains(subject.model)[0][:-1]] for name, subject in subjects.items()}
    sizes = {name: sum(p.numel() for p in subject.model.parameters()) for name, subject in subjects.items()}
    print(f"{network} FT prune ratio {arguments.ratio}: hidden widths {widths['masked']} -> {widths['compact']}, "
          f"parameters {sizes['masked']} -> {sizes['compact']}; batch {len(x)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {arguments.rounds} rounds")
    measurements = {"forward (evaluation)": Subject.evaluation_forward, "forward hutchinson": Subject.hutchinson_forward,
                    "training iteration": Subject.training_iteration}
    speedups = {}
    for measurement, action in measurements.items():
        seconds: dict[str, list[float]] = {name: [] for name in subjects}
        nfes: dict[str, list[int]] = {name: [] for name in subjects}
        for round_ in range(arguments.rounds):
            for name, subject in subjects.items():
                elapsed, nfe = timed(lambda batch: action(subject, batch), x, round_)
                seconds[name].append(elapsed)
                nfes[name].append(nfe)
        for name, values in seconds.items():
            print(f"{measurement:>20} {name:>7}: {min(values) * 1e3:8.1f} ms (median {statistics.median(values) * 1e3:.1f}), "
                  f"NFE {statistics.mean(nfes[name]):.1f}")
        speedups[measurement] = min(seconds["masked"]) / min(seconds["compact"])
    print(f"speedup: {speedups['forward (evaluation)']:.2f}")
    print(f"speedup forward hutchinson: {speedups['forward hutchinson']:.2f}")
    print(f"speedup training iteration: {speedups['training iteration']:.2f}")


if __name__ == "__main__":
    main()
