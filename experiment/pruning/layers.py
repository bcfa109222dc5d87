"""Which parameters pruning may touch (SPEC §6): the Linear and Conv2d layers of every vector field,
seen as chains in which each layer's outputs (neurons, filters) feed the next layer's inputs."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from experiment.models.ode import ODEBlock

PRUNABLE_TYPES = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable layer by parameter name. Output j is row j of the weight (filter j of a
    convolution). Its consumer sees it as input column `input_offset + j` of the next layer's weight:
    inputs that come before (e.g. a concatenated time channel) are not neurons and are never pruned."""

    weight: str
    bias: str | None
    module: nn.Module


def prunable_chains(model: nn.Module) -> list[list[PrunableLayer]]:
    """One chain per ODE block: its field's prunable layers in forward order; the last layer of each
    chain is the field's output layer. (Layers that must not be pruned, such as FFJORD's small
    time-to-gate maps, are built from other module types.)"""
    names = {id(module): name for name, module in model.named_modules()}
    chains = []
    for block in model.modules():
        if not isinstance(block, ODEBlock):
            continue
        chain = [
            PrunableLayer(f"{names[id(layer)]}.weight", f"{names[id(layer)]}.bias" if layer.bias is not None else None, layer)
            for layer in block.field.modules()
            if isinstance(layer, PRUNABLE_TYPES)
        ]
        if chain:
            chains.append(chain)
    return chains


def input_offset(layer: PrunableLayer, consumer: PrunableLayer) -> int:
    """Position of `layer`'s first output among `consumer`'s inputs (extra inputs come first)."""
    return consumer.module.weight.shape[1] - layer.module.weight.shape[0]
