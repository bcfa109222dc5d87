"""How a model's ODEs are solved: `SolverOptions`, and which solver backend a block uses
(`resolve_backend`), decided in one place from the model and the config."""

from __future__ import annotations

from dataclasses import dataclass

from experiment.config.defaults import DEFAULT_MAX_STEPS, DEFAULT_SOLVER_BACKEND

# The solver backends (`network.solverBackend`; "auto" picks one):
#   fused        dopri5 with the adjoint, written out by hand for MLP fields (experiment.models.solvers.fused)
#   torchdiffeq  torchdiffeq's solver with its adjoint, `odeint_adjoint`
#   backprop     torchdiffeq's solver, gradients by backpropagation through its steps, `odeint`
BACKENDS = ("fused", "torchdiffeq", "backprop")


@dataclass(frozen=True)
class SolverOptions:
    """How to integrate: the method (a torchdiffeq name; dopri5 is adaptive), whether the model name
    asks for the adjoint (else backpropagation through the solver), tolerances and the most steps one
    solve may take (adaptive methods), or the number of equal steps over [0, T] (fixed-grid methods),
    and the backend asked for (`backend`: one of BACKENDS or "auto", see `resolve_backend`)."""

    method: str = "dopri5"
    adjoint: bool = True
    atol: float = 1e-5
    rtol: float = 1e-5
    num_steps: int | None = None
    max_steps: int = DEFAULT_MAX_STEPS
    backend: str = DEFAULT_SOLVER_BACKEND


def fused_possible(options: SolverOptions, fusable_field: bool, fixed_end: bool) -> bool:
    """Can the fused solve take a block: dopri5 with the adjoint, an MLP field it handles, a fixed
    interval (no learned end time)?"""
    return options.method == "dopri5" and options.adjoint and fusable_field and fixed_end


def resolve_backend(options: SolverOptions, fusable_field: bool, fixed_end: bool) -> str:
    """The backend a block's solves use. "auto": backprop when the model name asks for it
    (`_autograd`), else fused where possible (`fused_possible`: the same equations, several times
    faster), else torchdiffeq. A backend asked for by name is used as asked; "fused" where it is not
    possible, or "torchdiffeq" for a name that asks for backprop, is a ValueError (the config
    validator refuses both before anything runs)."""
    if options.backend == "auto":
        if not options.adjoint:
            return "backprop"
        return "fused" if fused_possible(options, fusable_field, fixed_end) else "torchdiffeq"
    if options.backend == "fused" and not fused_possible(options, fusable_field, fixed_end):
        raise ValueError(f"the fused solver takes dopri5 with the adjoint on MLP fields over a fixed interval; "
                         f"this block has {options.method}, {'adjoint' if options.adjoint else 'backprop'}")
    if options.backend == "torchdiffeq" and not options.adjoint:
        raise ValueError("the model name asks for backpropagation through the solver (_autograd); "
                         "solverBackend torchdiffeq would use the adjoint")
    if options.backend not in BACKENDS:
        raise ValueError(f"unknown solver backend {options.backend!r}; expected auto or one of {', '.join(BACKENDS)}")
    return options.backend
