"""What pruning may touch, as a vector field declares it (docs/PRUNING.md).

A prunable field lists its prunable layers in forward order, the last being the field's output
layer: a chain in which output j of layer l (a neuron, a filter: row j of its weight) is read by
layer l + 1 as input column `first_neuron_input + j`. The layer's other input columns (a
concatenated time channel, say) are not neurons of the chain and are never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class ChainLayer:
    """One prunable layer (an `nn.Linear` or `nn.Conv2d`) of a field's chain.

    first_neuron_input: the input column at which the previous layer's outputs begin.
    companions: further per-output parameter vectors (entry j belongs to output j, e.g. a
        concat-squash layer's time gate) that live and die with output j.
    zero_preserving: an output whose weight row, bias and companions are all zero is constant zero
        after the activation (σ(0) = 0), so the next layer's weights that read it are useless.
    """

    module: nn.Module
    first_neuron_input: int = 0
    companions: tuple[nn.Parameter, ...] = ()
    zero_preserving: bool = False


@runtime_checkable
class PrunableField(Protocol):
    def prunable_chain(self) -> list[ChainLayer]:
        """The field's prunable layers in forward order; the last is its output layer."""
        ...


def maps_zero_to_zero(activation: nn.Module) -> bool:
    """σ(0) = 0 for a parameter-free activation module (one with parameters counts as no)."""
    if any(True for _ in activation.parameters()):
        return False
    return bool(activation(torch.zeros(1)).item() == 0.0)
