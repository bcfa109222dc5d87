"""The ODE block of every model: z(T) = z(0) + ∫ f over [0, T], solved by the backend that
`experiment.models.solvers.resolve_backend` picks for it (the one dispatch: `ODEBlock.solve`), and
the count of its field's evaluations (NFE)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from experiment.models.solvers import SolverError, SolverOptions, odesolve, resolve_backend, solver_errors
from experiment.models.solvers import fused
from experiment.models.solvers.mlp_tangents import MLP

State = torch.Tensor | tuple[torch.Tensor, ...]

__all__ = ["ODEBlock", "FusableField", "SolverError", "SolverOptions", "State", "count_nfe", "solver_backend",
           "solver_errors", "solver_options"]


class FusableField(Protocol):
    """A field the fused solve can take: an MLP (`fused_mlp`, None if its network is not one), the
    solve's inputs from a block's state and fixed arguments (x [B, D] and the tangents [K, B, D] whose
    Σ_k v_kᵀ J v_k it integrates beside z), and the block's state from z(T) and that integral."""

    def fused_mlp(self) -> MLP | None: ...

    def fused_inputs(self, state: State, arguments: tuple[object, ...]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def fused_outputs(self, state: State, z: torch.Tensor, integral: torch.Tensor) -> State: ...


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

    def forward(self, t: torch.Tensor, state: State, *arguments: object) -> State:
        """The vector field f(t, z, *arguments) (counted); `arguments` are what one solve holds fixed."""
        self.nfe += 1
        return self.field(t, state, *arguments)

    @property
    def backend(self) -> str:
        """The backend this block's solves use (`resolve_backend` of its options and field)."""
        fusable = hasattr(self.field, "fused_mlp") and self.field.fused_mlp() is not None
        return resolve_backend(self.options, fusable, fixed_end=not self.sqrt_end_time.requires_grad)

    def count(self, nfe: int) -> None:
        self.nfe += nfe

    def solve(self, state: State, *arguments: object) -> State:
        """Integrates dz/dt = f(t, z, *arguments) from 0 to T by the block's backend; the arguments
        (e.g. Hutchinson's noise) stay fixed during the solve."""
        backend = self.backend
        if backend == "fused":
            field: FusableField = self.field
            x, tangents = field.fused_inputs(state, arguments)
            z, integral = fused.solve(field.fused_mlp(), x, tangents, float(self.end_time), self.options.atol,
                                      self.options.rtol, self.count, self.options.max_steps)
            return field.fused_outputs(state, z, integral)
        zero = torch.zeros((), dtype=self.sqrt_end_time.dtype, device=self.sqrt_end_time.device)
        t_span = torch.stack([zero, self.end_time])
        return odesolve(_FixedArguments(self, arguments), state, t_span, self.options, adjoint=backend == "torchdiffeq")

    def solve_backwards(self, field: nn.Module, state: torch.Tensor) -> torch.Tensor:
        """z(0) for a given z(T) of dz/dt = field(t, z) over this block's interval (a flow's field
        without its density bookkeeping, for sampling), by torchdiffeq without gradients."""
        t_span = torch.stack([self.end_time, torch.zeros_like(self.end_time)])
        with torch.no_grad():
            return odesolve(field, state, t_span, self.options, adjoint=False)


class _FixedArguments(nn.Module):
    """f(t, z) = block(t, z, *arguments): one solve's field as torchdiffeq calls it. The block is its
    only child, so the adjoint sees the block's parameters, in the block's order."""

    def __init__(self, block: ODEBlock, arguments: tuple[object, ...]):
        super().__init__()
        self.block = block
        self.arguments = arguments

    def forward(self, t: torch.Tensor, state: State) -> State:
        return self.block(t, state, *self.arguments)


def solver_backend(model: nn.Module) -> str:
    """The backend of the first ODE block in `model` ("" without one), what a metrics row records."""
    return next((module.backend for module in model.modules() if isinstance(module, ODEBlock)), "")


def solver_options(model: nn.Module) -> SolverOptions | None:
    """The solver settings of the first ODE block in `model` (None without one)."""
    return next((module.options for module in model.modules() if isinstance(module, ODEBlock)), None)


def count_nfe(model: nn.Module) -> int:
    """Total vector-field evaluations of every ODE block in `model` so far."""
    return sum(module.nfe for module in model.modules() if isinstance(module, ODEBlock))
