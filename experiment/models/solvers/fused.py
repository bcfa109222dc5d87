"""Fast solves for MLP vector fields: the field, its trace and their gradients written out by hand
(`experiment.models.mlp_tangents`), integrated with a lean dopri5 (`experiment.models.dopri5`) on
one flat state, with gradients by the adjoint method.

Forward: y = [z, ℓ] with dz/dt = f(z), dℓ/dt = Σ_k v_kᵀ J v_k (Hutchinson: one v = ε drawn once per
solve; exact: the D unit vectors; a classifier: no ℓ). Backward (Pontryagin's adjoint, solved from
T to 0): s = [z, a, g] with

    dz/dt = f(z),   da/dt = −aᵀ ∂f/∂z − a_ℓ ∂tr/∂z,   dg/dt = −aᵀ ∂f/∂θ − a_ℓ ∂tr/∂θ,

a(T) = ∂L/∂z(T), a_ℓ = ∂L/∂ℓ(T) (constant: nothing depends on ℓ), g(T) = 0; then ∂L/∂z(0) = a(0)
and ∂L/∂θ = g(0). The same equations as torchdiffeq's `odeint_adjoint`, minus its autograd graph
per evaluation: the vector-Jacobian products come from `mlp_tangents.vjp`.

Step-size control: the forward error is the RMS over the whole state; the backward error the RMS
over [z, a] only (a seminorm: the parameter adjoint g does not steer the steps), as torchdiffeq's
`adjoint_options={"norm": "seminorm"}` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from experiment.config.defaults import DEFAULT_MAX_STEPS
from experiment.models.solvers import mlp_tangents
from experiment.models.solvers.dopri5 import dopri5, rms_norm
from experiment.models.solvers.mlp_tangents import MLP

@dataclass(frozen=True)
class Problem:
    """One solve: the field, the tangents of the trace (shape [K, B, D], K = 0 for no trace), the
    interval [0, end_time], tolerances, where to count evaluations, and the most steps a solve
    (forward or backward) may take."""

    mlp: MLP
    tangents: torch.Tensor
    end_time: float
    atol: float
    rtol: float
    count_nfe: Callable[[int], None]
    max_steps: int = DEFAULT_MAX_STEPS

    @property
    def with_trace(self) -> bool:
        return self.tangents.shape[0] > 0

    def field(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """[f(z), Σ_k v_kᵀ J v_k] for the flat state y = [z, ℓ]."""
        batch, dim = self.tangents.shape[1:]
        output, tangent_outputs, _ = mlp_tangents.forward(self.mlp, y[:batch * dim].view(batch, dim), self.tangents)
        if not self.with_trace:
            return output.reshape(-1)
        trace = (tangent_outputs * self.tangents).sum(2).sum(0)  # (one reduction over (0, 2) is several times slower)
        return torch.cat([output.reshape(-1), trace])

    def adjoint_field(self, log_det_grad: torch.Tensor) -> Callable[[float, torch.Tensor], torch.Tensor]:
        """The backward dynamics of s = [z, a, g] for a_ℓ = `log_det_grad` [B]."""
        batch, dim = self.tangents.shape[1:]
        size = batch * dim
        # vjp is linear in the output gradients: feeding −a and −a_ℓ v yields the negated products
        negated_tangent_grads = log_det_grad.view(1, batch, 1) * self.tangents.neg()

        def field(t: float, state: torch.Tensor) -> torch.Tensor:
            z, adjoint = state[:size].view(batch, dim), state[size:2 * size].view(batch, dim)
            output, _, tape = mlp_tangents.forward(self.mlp, z, self.tangents)
            grad_z, grad_parameters = mlp_tangents.vjp(self.mlp, tape, adjoint.neg(), negated_tangent_grads)
            return torch.cat([output.reshape(-1), grad_z.reshape(-1), *(grad.reshape(-1) for grad in grad_parameters)])

        return field


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, problem: Problem, x: torch.Tensor, *parameters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, dim = x.shape
        start = x.reshape(-1)
        if problem.with_trace:
            start = torch.cat([start, x.new_zeros(batch)])
        end, nfe = dopri5(problem.field, start, 0.0, problem.end_time, problem.atol, problem.rtol,
                          max_steps=problem.max_steps)
        problem.count_nfe(nfe)
        z, log_det = end[:batch * dim].view(batch, dim), end[batch * dim:]
        ctx.problem = problem
        ctx.save_for_backward(z)
        return z, log_det

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor, grad_log_det: torch.Tensor):
        problem: Problem = ctx.problem
        (z,) = ctx.saved_tensors
        size = z.numel()
        log_det_grad = grad_log_det if problem.with_trace else z.new_zeros(z.shape[0])
        parameters = problem.mlp.parameters
        start = torch.cat([z.reshape(-1), grad_z.reshape(-1), z.new_zeros(sum(p.numel() for p in parameters))])
        seminorm = lambda ratio: rms_norm(ratio[:2 * size])  # noqa: E731 (z and a steer the steps)
        end, nfe = dopri5(problem.adjoint_field(log_det_grad), start, problem.end_time, 0.0, problem.atol,
                          problem.rtol, seminorm, problem.max_steps)
        problem.count_nfe(nfe)
        grad_x = end[size:2 * size].view_as(z)
        grads, offset = [], 2 * size
        for parameter in parameters:
            grads.append(end[offset:offset + parameter.numel()].view_as(parameter))
            offset += parameter.numel()
        return (None, grad_x, *grads)


def solve(mlp: MLP, x: torch.Tensor, tangents: torch.Tensor, end_time: float, atol: float, rtol: float,
          count_nfe: Callable[[int], None], max_steps: int = DEFAULT_MAX_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """z(T) and ℓ(T) = ∫_0^T Σ_k v_kᵀ J v_k dt for dz/dt = mlp(z), z(0) = x [B, D], with tangents v
    [K, B, D] (K = 0: no trace, ℓ is empty). Differentiable in x and the MLP's parameters (adjoint).
    A solve of more than `max_steps` steps raises SolverError."""
    detached = MLP(tuple(w.detach() for w in mlp.weights), tuple(b.detach() for b in mlp.biases), mlp.activation)
    problem = Problem(detached, tangents.detach(), end_time, atol, rtol, count_nfe, max_steps)
    return _AdjointSolve.apply(problem, x, *mlp.parameters)
