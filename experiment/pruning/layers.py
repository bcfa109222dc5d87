"""Which parameters pruning may touch (SPEC §6): the Linear and Conv2d layers of every vector field,
seen as chains in which each layer's outputs (neurons, filters) feed the next layer's inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from experiment.models.ode import ODEBlock

PRUNABLE_TYPES = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable layer by parameter name. Output j is row j of the weight (filter j of a
    convolution). Its consumer sees it as input column `input_offset + j` of the next layer's weight:
    inputs that come before (e.g. a concatenated time channel) are not neurons and are never pruned.

    `companions` name further per-output parameters (vectors indexed by j, e.g. a concat-squash
    layer's time gate) that belong to output j and live or die with it. `zero_preserving` says that
    an output whose pre-activation is constant zero stays zero after the activation (σ(0) = 0)."""

    weight: str
    bias: str | None
    module: nn.Module
    companions: tuple[str, ...] = ()
    zero_preserving: bool = False

    @property
    def width(self) -> int:
        return self.module.weight.shape[0]

    @property
    def per_output(self) -> tuple[str, ...]:
        """The per-output vectors of this layer: bias and companions."""
        return ((self.bias,) if self.bias else ()) + self.companions


def prunable_chains(model: nn.Module) -> list[list[PrunableLayer]]:
    """One chain per ODE block: its field's prunable layers in forward order; the last layer of each
    chain is the field's output layer. (Layers that must not be pruned, such as FFJORD's small
    time-to-gate maps, are built from other module types and declared as companions.)"""
    names = {id(module): name for name, module in model.named_modules()}
    chains = []
    for block in model.modules():
        if not isinstance(block, ODEBlock):
            continue
        companions = _declared_companions(block.field, names)
        layers = [layer for layer in block.field.modules() if isinstance(layer, PRUNABLE_TYPES)]
        chain = [
            PrunableLayer(f"{names[id(layer)]}.weight", f"{names[id(layer)]}.bias" if layer.bias is not None else None,
                          layer, companions.get(id(layer), ()), _activation_preserves_zero(block.field, layer))
            for layer in layers
        ]
        if chain:
            chains.append(chain)
    return chains


def input_offset(layer: PrunableLayer, consumer: PrunableLayer) -> int:
    """Position of `layer`'s first output among `consumer`'s inputs (extra inputs come first)."""
    return consumer.module.weight.shape[1] - layer.module.weight.shape[0]


def _declared_companions(field: nn.Module, names: dict[int, str]) -> dict[int, tuple[str, ...]]:
    """{id(prunable layer): companion parameter names} from modules that declare
    `pruning_companions = {child name: (parameter paths relative to the module, ...)}`."""
    companions: dict[int, tuple[str, ...]] = {}
    for module in field.modules():
        for child, paths in getattr(module, "pruning_companions", {}).items():
            companions[id(getattr(module, child))] = tuple(f"{names[id(module)]}.{path}" for path in paths)
    return companions


def _activation_preserves_zero(field: nn.Module, layer: nn.Module) -> bool:
    """Does the activation after `layer` map 0 to 0? Read from the field's `activation` module, or the
    module after `layer` in an `nn.Sequential`; unknown counts as no (nothing is removed on a guess)."""
    activation = getattr(field, "activation", None)
    if activation is None:
        for sequence in field.modules():
            if isinstance(sequence, nn.Sequential):
                members = list(sequence)
                position = next((i for i, member in enumerate(members) if member is layer), None)
                if position is not None and position + 1 < len(members):
                    activation = members[position + 1]
    if not isinstance(activation, nn.Module) or any(True for _ in activation.parameters()):
        return False
    return bool(activation(torch.zeros(1)).item() == 0.0)
