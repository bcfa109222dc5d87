"""The multilayer perceptron vector fields of the toy models (docs/MODELS.md), and the stack of
time-conditioned layers that the tabular and image flows' fields are."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from experiment.models.prunable import ChainLayer, maps_zero_to_zero
from experiment.models.solvers.mlp_tangents import ACTIVATIONS, MLP, as_mlp


def mlp(dim: int, hidden: int, num_layers: int, activation: str) -> nn.Sequential:
    """L Linear layers D→H, (L−2)×(H→H), H→D with the activation after every layer but the last."""
    widths = [dim] + [hidden] * (num_layers - 1) + [dim]
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if index < num_layers - 1:
            layers.append(ACTIVATIONS[activation].module())
    return nn.Sequential(*layers)


class AutonomousField(nn.Module):
    """f(t, z) = net(z): a vector field that does not depend on time."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def prunable_chain(self) -> list[ChainLayer]:
        """The Linear layers of `net` (an `nn.Sequential` as `mlp` builds, or one layer) in order; an
        output stays zero if the module after its layer is an activation with σ(0) = 0."""
        members = list(self.net) if isinstance(self.net, nn.Sequential) else [self.net]
        return [ChainLayer(member, zero_preserving=position + 1 < len(members) and maps_zero_to_zero(members[position + 1]))
                for position, member in enumerate(members) if isinstance(member, nn.Linear)]

    # the fused backend (experiment.models.ode.FusableField): the MLP alone, no trace

    def fused_mlp(self) -> MLP | None:
        return as_mlp(self.net)

    def fused_inputs(self, state: torch.Tensor, arguments: tuple[object, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return state, state.new_zeros((0, *state.shape))

    def fused_outputs(self, state: torch.Tensor, z: torch.Tensor, integral: torch.Tensor) -> torch.Tensor:
        return z


class LayerStack(nn.Module):
    """f(t, z) = L_K(t, σ(L_{K−1}(t, … σ(L_1(t, z))))): time-conditioned layers L_k(t, ·), the
    activation σ after every layer but the last."""

    def __init__(self, layers: Iterable[nn.Module], activation: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.activation = activation

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            z = layer(t, z)
            if index < len(self.layers) - 1:
                z = self.activation(z)
        return z
