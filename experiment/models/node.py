"""The neural-ODE classifier of the toy experiments."""

from __future__ import annotations

import torch
from torch import nn

from experiment.models.ode import ODEBlock, SolverOptions


class NeuralODEClassifier(nn.Module):
    """logits = z(1) for dz/dt = f(z), z(0) = x: the input dimension equals the number of classes."""

    def __init__(self, field: nn.Module, options: SolverOptions):
        super().__init__()
        self.block = ODEBlock(field, options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.solve(x)
