"""Which parameters pruning may touch (docs/PRUNING.md): the prunable chain every vector field declares
(`experiment.models.prunable`), one chain per ODE block, with the layers named by parameter."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from experiment.models.ode import ODEBlock
from experiment.models.prunable import PrunableField


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable layer by parameter name. Output j is row j of the weight (filter j of a
    convolution). Its consumer reads it as input column `consumer.first_neuron_input + j`; the
    consumer's other inputs (e.g. a concatenated time channel) are not neurons and are never pruned.

    `companions` name further per-output parameters (vectors indexed by j, e.g. a concat-squash
    layer's time gate) that belong to output j and live or die with it. `zero_preserving` says that
    an output whose pre-activation is constant zero stays zero after the activation (σ(0) = 0)."""

    weight: str
    bias: str | None
    module: nn.Module
    companions: tuple[str, ...] = ()
    zero_preserving: bool = False
    first_neuron_input: int = 0

    @property
    def width(self) -> int:
        return self.module.weight.shape[0]

    @property
    def per_output(self) -> tuple[str, ...]:
        """The per-output vectors of this layer: bias and companions."""
        return ((self.bias,) if self.bias else ()) + self.companions


def prunable_chains(model: nn.Module) -> list[list[PrunableLayer]]:
    """One chain per ODE block whose field declares one: its prunable layers in forward order; the
    last layer of each chain is the field's output layer."""
    modules = {id(module): name for name, module in model.named_modules()}
    parameters = {id(parameter): name for name, parameter in model.named_parameters()}
    chains = []
    for block in model.modules():
        if not isinstance(block, ODEBlock) or not isinstance(block.field, PrunableField):
            continue
        chain = [
            PrunableLayer(f"{modules[id(layer.module)]}.weight",
                          f"{modules[id(layer.module)]}.bias" if layer.module.bias is not None else None,
                          layer.module, tuple(parameters[id(companion)] for companion in layer.companions),
                          layer.zero_preserving, layer.first_neuron_input)
            for layer in block.field.prunable_chain()
        ]
        for layer, consumer in zip(chain[:-1], chain[1:]):
            if input_offset(layer, consumer) + layer.width > consumer.module.weight.shape[1]:
                raise ValueError(f"{consumer.weight}: declared to read {layer.width} outputs of {layer.weight} from input "
                                 f"{consumer.first_neuron_input} on, but has only {consumer.module.weight.shape[1]} inputs")
        if chain:
            chains.append(chain)
    return chains


def input_offset(layer: PrunableLayer, consumer: PrunableLayer) -> int:
    """Position of `layer`'s first output among `consumer`'s inputs."""
    return consumer.first_neuron_input
