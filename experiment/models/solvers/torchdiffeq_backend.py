"""Solves through torchdiffeq (any of its methods, fixed grids included), with gradients by its
adjoint (`odeint_adjoint`) or by backpropagation through the solver's steps (`odeint`); its
assertions that a solve cannot finish become SolverError."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from experiment.models.solvers.dopri5 import SolverError
from experiment.models.solvers.options import SolverOptions

State = torch.Tensor | tuple[torch.Tensor, ...]

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


def odesolve(func, state: State, t_span: torch.Tensor, options: SolverOptions, adjoint: bool) -> State:
    """The state at t_span[-1] of dz/dt = func(t, z), z(t_span[0]) = state, by torchdiffeq, with its
    adjoint (`adjoint` and `func` a module) or backpropagation through the steps; a SolverError if
    the solve cannot finish (see `solver_errors`)."""
    kwargs = dict(method=options.method, atol=options.atol, rtol=options.rtol)
    if options.num_steps is not None:
        steps = options.num_steps
        # Equal steps over the whole interval; torchdiffeq flips decreasing spans before calling this.
        kwargs["options"] = {"grid_constructor": lambda f, y0, t: torch.linspace(t[0], t[-1], steps + 1, dtype=t.dtype, device=t.device)}
    else:  # the adjoint's backward solve takes the same options
        kwargs["options"] = {"max_num_steps": options.max_steps}
    with solver_errors(options):
        if adjoint and isinstance(func, nn.Module):
            solution = odeint_adjoint(func, state, t_span, **kwargs)
        else:
            solution = odeint(func, state, t_span, **kwargs)
    if isinstance(solution, tuple):
        return tuple(component[-1] for component in solution)
    return solution[-1]
