"""Initialising a model's parameters from an explicit torch generator.

Module constructors initialise their parameters from the global default generator. A run instead
draws a new model's parameters from a generator seeded with the net's derived seed:
`initialise_parameters` draws every random parameter again, from that generator, exactly as the
constructors draw them and in the same order, so a model built with `torch.manual_seed(s)` before
its construction and one re-initialised from `seeded_generator(s)` hold the same tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from experiment.models.ode import ODEBlock
from experiment.models.tabular import TimeGate


def reset_layer(layer: nn.Linear | nn.Conv2d, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of a Linear or Conv2d layer (its `reset_parameters`), drawn from
    `generator`: the weight from kaiming_uniform_(a=√5), i.e. U(±1/√fan_in), then the bias from
    U(±1/√fan_in)."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        if layer.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def initialise_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Draws every random parameter of `model` afresh from `generator`, module by module in
    registration order, which for every model family here is the order of construction: Linear and
    Conv2d layers as `reset_layer`, concat-squash time gates U(−1, 1) for a, b, then c
    (`TimeGate.reset_parameters`). An ODE block's τ (1) is not random and stays. Raises TypeError
    for a module with parameters of any other kind, whose initialisation is not known here."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            reset_layer(module, generator)
        elif isinstance(module, TimeGate):
            module.reset_parameters(generator)
        elif not isinstance(module, ODEBlock) and any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"cannot initialise the parameters of a {type(module).__name__} from a generator")
