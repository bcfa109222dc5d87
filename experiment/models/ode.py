"""Solving ODEs: solver options from the model name and an `ODEBlock` that integrates a vector field
over [0, T] and counts its evaluations (NFE). Solves go through torchdiffeq, except those of MLP fields
with dopri5 and the adjoint, which the models hand to `experiment.models.fused` (see `fused_mlp`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from experiment.models.fused import fusable_mlp
from experiment.models.mlp_tangents import MLP

State = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class SolverOptions:
    """How to integrate: torchdiffeq method, gradients by adjoint or by backprop through the solver,
    tolerances (adaptive methods) or the number of equal steps over [0, T] (fixed-grid methods).
    `fused`: solve MLP fields with dopri5 and the adjoint by hand (`experiment.models.fused`)
    instead of through torchdiffeq; the same equations, several times faster."""

    method: str = "dopri5"
    adjoint: bool = True
    atol: float = 1e-5
    rtol: float = 1e-5
    num_steps: int | None = None
    fused: bool = True


def odesolve(func, state: State, t_span: torch.Tensor, options: SolverOptions) -> State:
    """The state at t_span[-1] of dz/dt = func(t, z), z(t_span[0]) = state."""
    kwargs = dict(method=options.method, atol=options.atol, rtol=options.rtol)
    if options.num_steps is not None:
        steps = options.num_steps
        # Equal steps over the whole interval; torchdiffeq flips decreasing spans before calling this.
        kwargs["options"] = {"grid_constructor": lambda f, y0, t: torch.linspace(t[0], t[-1], steps + 1, dtype=t.dtype, device=t.device)}
    if options.adjoint and isinstance(func, nn.Module):
        solution = odeint_adjoint(func, state, t_span, **kwargs)
    else:
        solution = odeint(func, state, t_span, **kwargs)
    if isinstance(solution, tuple):
        return tuple(component[-1] for component in solution)
    return solution[-1]


class ODEBlock(nn.Module):
    """z(T) = z(0) + ∫_0^T f(t, z) dt for a vector-field module f(t, z).

    T is 1 unless `learn_end_time`, in which case T = τ² with τ a parameter initialised to 1
    (FFJORD's parametrisation, keeping T positive). `nfe` counts evaluations of f, in forward and
    (adjoint) backward solves alike; callers read it before and after a pass.
    """

    def __init__(self, field: nn.Module, options: SolverOptions, learn_end_time: bool = False):
        super().__init__()
        self.field = field
        self.options = options
        self.nfe = 0
        if learn_end_time:
            self.sqrt_end_time = nn.Parameter(torch.tensor(1.0))
        else:
            self.register_buffer("sqrt_end_time", torch.tensor(1.0), persistent=False)

    @property
    def end_time(self) -> torch.Tensor:
        return self.sqrt_end_time * self.sqrt_end_time

    def forward(self, t: torch.Tensor, state: State) -> State:
        """The vector field as the solver calls it (counted)."""
        self.nfe += 1
        return self.field(t, state)

    def fused_mlp(self, field: nn.Module) -> MLP | None:
        """The MLP of `field` (this block's field, or the one inside it) if this block's solves can
        take the fused path: dopri5 with the adjoint over a fixed interval; None otherwise."""
        fixed_end = not self.sqrt_end_time.requires_grad
        if self.options.fused and self.options.method == "dopri5" and self.options.adjoint and fixed_end:
            return fusable_mlp(field)
        return None

    def count(self, nfe: int) -> None:
        self.nfe += nfe

    def solve(self, state: State, reverse: bool = False) -> State:
        """Integrates from 0 to T, or from T back to 0 if `reverse`."""
        zero = torch.zeros((), dtype=self.sqrt_end_time.dtype, device=self.sqrt_end_time.device)
        t_span = torch.stack([zero, self.end_time])
        return odesolve(self, state, t_span.flip(0) if reverse else t_span, self.options)


def count_nfe(model: nn.Module) -> int:
    """Total vector-field evaluations of every ODE block in `model` so far."""
    return sum(module.nfe for module in model.modules() if isinstance(module, ODEBlock))
