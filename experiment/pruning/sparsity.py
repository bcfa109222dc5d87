"""Counting parameters and zeros. Prune ratio = 1 − (live parameters) / #parameters (docs/PRUNING.md), where a
live parameter is non-zero and can still influence the output (`experiment.pruning.liveness`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from experiment.pruning.layers import prunable_chains
from experiment.pruning.liveness import remove_dead


@dataclass(frozen=True)
class Sparsity:
    num_params: int  # all parameters, biases and end times included
    nonzero_params: int  # live parameters: non-zero and with a path to the output
    num_weights: int  # weights of prunable layers
    nonzero_weights: int  # live weights of prunable layers

    @property
    def prune_ratio(self) -> float:
        return 1.0 - self.nonzero_params / self.num_params

    @property
    def weight_prune_ratio(self) -> float:
        return 1.0 - self.nonzero_weights / self.num_weights


def measure_sparsity(model: nn.Module) -> Sparsity:
    """Counts of `model` as it is: its zeros, plus whatever those zeros leave without influence."""
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    chains = prunable_chains(model)
    live = remove_dead(chains, parameters, {name: (p != 0).to(p.dtype) for name, p in parameters.items()})
    weights = [layer.weight for chain in chains for layer in chain]
    return Sparsity(
        num_params=sum(p.numel() for p in parameters.values()),
        nonzero_params=sum(int(mask.count_nonzero()) for mask in live.values()),
        num_weights=sum(parameters[name].numel() for name in weights),
        nonzero_weights=sum(int(live[name].count_nonzero()) for name in weights),
    )
