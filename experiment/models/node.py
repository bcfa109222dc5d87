"""The neural-ODE classifier of the toy experiments."""

from __future__ import annotations

import torch
from torch import nn

from experiment.models import fused
from experiment.models.ode import ODEBlock, SolverOptions


class NeuralODEClassifier(nn.Module):
    """logits = z(1) for dz/dt = f(z), z(0) = x: the input dimension equals the number of classes."""

    def __init__(self, field: nn.Module, options: SolverOptions):
        super().__init__()
        self.block = ODEBlock(field, options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.block.fused_mlp(self.block.field)
        if mlp is None:
            return self.block.solve(x)
        no_tangents = x.new_zeros((0, *x.shape))
        options = self.block.options
        return fused.solve(mlp, x, no_tangents, float(self.block.end_time), options.atol, options.rtol, self.block.count,
                           options.max_steps)[0]
