"""Counting parameters and zeros. Prune ratio = 1 − nnz(all parameters) / #parameters (SPEC §6)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from experiment.pruning.layers import prunable_chains


@dataclass(frozen=True)
class Sparsity:
    num_params: int  # all parameters, biases and end times included
    nonzero_params: int
    num_weights: int  # weights of prunable layers
    nonzero_weights: int

    @property
    def prune_ratio(self) -> float:
        return 1.0 - self.nonzero_params / self.num_params

    @property
    def weight_prune_ratio(self) -> float:
        return 1.0 - self.nonzero_weights / self.num_weights


def measure_sparsity(model: nn.Module) -> Sparsity:
    weights = [layer.module.weight for chain in prunable_chains(model) for layer in chain]
    return Sparsity(
        num_params=sum(p.numel() for p in model.parameters()),
        nonzero_params=sum(int(p.count_nonzero()) for p in model.parameters()),
        num_weights=sum(w.numel() for w in weights),
        nonzero_weights=sum(int(w.count_nonzero()) for w in weights),
    )
