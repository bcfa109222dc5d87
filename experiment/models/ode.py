"""Solving ODEs: solver options from the model name and an `ODEBlock` that integrates a vector field
over [0, T] and counts its evaluations (NFE). Solves go through torchdiffeq, except those of MLP fields
with dopri5 and the adjoint, which the models hand to `experiment.models.fused` (see `fused_mlp`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from experiment.models.dopri5 import DEFAULT_MAX_STEPS, SolverError
from experiment.models.fused import fusable_mlp
from experiment.models.mlp_tangents import MLP

State = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class SolverOptions:
    """How to integrate: torchdiffeq method, gradients by adjoint or by backprop through the solver,
    tolerances and the most steps one solve may take (adaptive methods), or the number of equal steps
    over [0, T] (fixed-grid methods). `fused`: solve MLP fields with dopri5 and the adjoint by hand
    (`experiment.models.fused`) instead of through torchdiffeq; the same equations, several times
    faster."""

    method: str = "dopri5"
    adjoint: bool = True
    atol: float = 1e-5
    rtol: float = 1e-5
    num_steps: int | None = None
    fused: bool = True
    max_steps: int = DEFAULT_MAX_STEPS


# torchdiffeq reports a solve that cannot finish with these assertions (rk_common.py, 0.2.x)
_TORCHDIFFEQ_FAILURE = re.compile(r"^(underflow in dt|max_num_steps exceeded|non-finite values in state)")


@contextmanager
def solver_errors(options: SolverOptions | None) -> Iterator[None]:
    """Meanwhile, torchdiffeq's assertion that a solve cannot finish (step-size underflow, too many
    steps, a non-finite state) becomes a SolverError naming the solver settings `options` (if
    known), as the fused solver raises: a diverging model then fails like any other, not with an
    AssertionError. Wrap the forward solve and the backward pass (where the adjoint's solve runs)."""
    try:
        yield
    except AssertionError as error:
        message = str(error)
        if not _TORCHDIFFEQ_FAILURE.match(message):
            raise
        settings = "" if options is None else (f" ({options.method}, atol {options.atol}, rtol {options.rtol}, "
                                               f"at most {options.max_steps} steps: network.maxSteps)")
        raise SolverError(f"torchdiffeq: {message[:200]}{settings}") from error


def odesolve(func, state: State, t_span: torch.Tensor, options: SolverOptions) -> State:
    """The state at t_span[-1] of dz/dt = func(t, z), z(t_span[0]) = state; a SolverError if the
    solve cannot finish (see `solver_errors`)."""
    kwargs = dict(method=options.method, atol=options.atol, rtol=options.rtol)
    if options.num_steps is not None:
        steps = options.num_steps
        # Equal steps over the whole interval; torchdiffeq flips decreasing spans before calling this.
        kwargs["options"] = {"grid_constructor": lambda f, y0, t: torch.linspace(t[0], t[-1], steps + 1, dtype=t.dtype, device=t.device)}
    else:  # the adjoint's backward solve takes the same options
        kwargs["options"] = {"max_num_steps": options.max_steps}
    with solver_errors(options):
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

    def forward(self, t: torch.Tensor, state: State, *arguments: object) -> State:
        """The vector field f(t, z, *arguments) (counted); `arguments` are what one solve holds fixed."""
        self.nfe += 1
        return self.field(t, state, *arguments)

    def fused_mlp(self, field: nn.Module) -> MLP | None:
        """The MLP of `field` (this block's field, or the one inside it) if this block's solves can
        take the fused path: dopri5 with the adjoint over a fixed interval; None otherwise."""
        fixed_end = not self.sqrt_end_time.requires_grad
        if self.options.fused and self.options.method == "dopri5" and self.options.adjoint and fixed_end:
            return fusable_mlp(field)
        return None

    def count(self, nfe: int) -> None:
        self.nfe += nfe

    def solve(self, state: State, *arguments: object) -> State:
        """Integrates dz/dt = f(t, z, *arguments) from 0 to T; the arguments (e.g. Hutchinson's
        noise) stay fixed during the solve."""
        zero = torch.zeros((), dtype=self.sqrt_end_time.dtype, device=self.sqrt_end_time.device)
        t_span = torch.stack([zero, self.end_time])
        return odesolve(_FixedArguments(self, arguments), state, t_span, self.options)


class _FixedArguments(nn.Module):
    """f(t, z) = block(t, z, *arguments): one solve's field as torchdiffeq calls it. The block is its
    only child, so the adjoint sees the block's parameters, in the block's order."""

    def __init__(self, block: ODEBlock, arguments: tuple[object, ...]):
        super().__init__()
        self.block = block
        self.arguments = arguments

    def forward(self, t: torch.Tensor, state: State) -> State:
        return self.block(t, state, *self.arguments)


def solver_options(model: nn.Module) -> SolverOptions | None:
    """The solver settings of the first ODE block in `model` (None without one)."""
    return next((module.options for module in model.modules() if isinstance(module, ODEBlock)), None)


def count_nfe(model: nn.Module) -> int:
    """Total vector-field evaluations of every ODE block in `model` so far."""
    return sum(module.nfe for module in model.modules() if isinstance(module, ODEBlock))
