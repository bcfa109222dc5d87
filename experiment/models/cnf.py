"""Continuous normalizing flows (FFJORD-style) on vector data.

Data x sits at t = 0 and the base distribution N(0, I) at t = T. With dz/dt = f(t, z) and
z(0) = x, the instantaneous change of variables gives

    log p(x) = log N(z(T); 0, I) + ∫_0^T tr(∂f/∂z(t)) dt,

computed by integrating the augmented state [z, ∫ tr] forward. Sampling solves the ODE backwards
from z(T) ~ N(0, I). The trace is exact (D backward passes) or Hutchinson's estimate εᵀ(∂f/∂z)ε
with Gaussian ε drawn once per solve (from the generator passed to `log_prob`, `transform` or
`forward`) and kept fixed during it. On the fused backend (MLP fields) both come from
forward-mode products J v computed with the field (`experiment.models.solvers.fused`); on the
others from backward passes through it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from experiment.models.ode import ODEBlock, SolverOptions
from experiment.models.prunable import ChainLayer, PrunableField
from experiment.models.solvers.mlp_tangents import MLP


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the batch dimension."""
    flat = z.flatten(1)
    return -0.5 * (flat.pow(2).sum(1) + flat.shape[1] * math.log(2 * math.pi))


def exact_trace(dz: torch.Tensor, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """tr(∂f/∂z) per sample for z of shape [B, D], one backward pass per dimension."""
    trace = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z.shape[1]):
        trace = trace + torch.autograd.grad(dz[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0][:, i]
    return trace


def hutchinson_estimate(dz: torch.Tensor, z: torch.Tensor, noise: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """εᵀ(∂f/∂z)ε per sample for one given ε, an unbiased estimate of tr(∂f/∂z) for ε ~ N(0, I)."""
    vjp = torch.autograd.grad(dz, z, noise, create_graph=create_graph)[0]
    return (vjp * noise).flatten(1).sum(1)


def standard_normal_like(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) noise shaped and laid out like `z`, drawn from `generator` (None: the default generator
    of z's device), exactly as `torch.randn_like(z)` draws it."""
    return torch.empty_like(z).normal_(generator=generator)


def _unit_vectors(z: torch.Tensor) -> torch.Tensor:
    """The D unit vectors as tangents [D, B, D] of the exact trace Σ_d e_dᵀ J e_d."""
    batch, dim = z.shape
    return torch.eye(dim, dtype=z.dtype, device=z.device).unsqueeze(1).expand(dim, batch, dim)


class DensityDynamics(nn.Module):
    """The augmented field d/dt [z, a] = [f(t, z), tr(∂f/∂z)], the trace exact (noise None) or
    Hutchinson's εᵀ(∂f/∂z)ε for a given noise ε shaped like z, held fixed for a whole solve."""

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z = state[0]
        # The trace needs ∂f/∂z even when evaluating without gradients; the graph is kept only when
        # the caller differentiates (training, or the adjoint's backward solve).
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not create_graph or not z.requires_grad:
                # (the adjoint re-evaluates f under no_grad on states that still report requires_grad)
                z = z.detach().requires_grad_(True)
            dz = self.field(t, z)
            if noise is None:
                trace = exact_trace(dz, z, create_graph)
            else:
                trace = hutchinson_estimate(dz, z, noise, create_graph)
        if not create_graph:
            dz, trace = dz.detach(), trace.detach()
        return dz, trace

    def prunable_chain(self) -> list[ChainLayer]:
        """The prunable chain of f (none if f declares none)."""
        return self.field.prunable_chain() if isinstance(self.field, PrunableField) else []

    # the fused backend (experiment.models.ode.FusableField): f's MLP, and the trace as Σ_k v_kᵀ J v_k

    def fused_mlp(self) -> MLP | None:
        return self.field.fused_mlp() if hasattr(self.field, "fused_mlp") else None

    def fused_inputs(self, state: tuple[torch.Tensor, torch.Tensor],
                     arguments: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """z and the tangents of the trace: Hutchinson's noise ε (one tangent), or the D unit vectors
        for the exact trace (no noise)."""
        z, noise = state[0], (arguments[0] if arguments else None)
        return z, _unit_vectors(z) if noise is None else noise.unsqueeze(0)

    def fused_outputs(self, state: tuple[torch.Tensor, torch.Tensor], z: torch.Tensor,
                      integral: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z, state[1] + integral


class CNF(nn.Module):
    """A continuous normalizing flow: one or more CNF blocks over vectors of dimension `dim`,
    z_0 = x, z_k = z_{k-1}(T_k), log p(x) = log N(z_K; 0, I) + Σ_k ∫_0^{T_k} tr(∂f_k/∂z) dt.

    `forward(x)` is `log_prob(x)` with the default trace estimator, so a flow plugs into the same
    training loop as a classifier (its output is the per-sample log-density). Hutchinson's noise, one
    ε per block in block order, comes from the `generator` argument (None: the global default one).
    """

    def __init__(self, fields: list[nn.Module], dim: int, options: SolverOptions, exact_trace: bool,
                 learn_end_time: bool = False):
        super().__init__()
        self.dim = dim
        self.exact_trace = exact_trace
        self.blocks = nn.ModuleList(ODEBlock(DensityDynamics(field), options, learn_end_time) for field in fields)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.log_prob(x, generator=generator)

    def log_prob(self, x: torch.Tensor, exact_trace: bool | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x) per sample in nats; `exact_trace` overrides the flow's estimator; Hutchinson's
        noise is drawn from `generator`."""
        z, log_det = self.transform(x, exact_trace, generator)
        return standard_normal_log_prob(z) + log_det

    def transform(self, x: torch.Tensor, exact_trace: bool | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z_K and Σ_k ∫ tr(∂f_k/∂z) dt for z_0 = x. With Hutchinson's estimator every block draws
        its ε ~ N(0, I), shaped like its input, from `generator` before its solve (the exact trace
        draws nothing)."""
        exact = self.exact_trace if exact_trace is None else exact_trace
        z, log_det = x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for block in self.blocks:
            noise = None if exact else standard_normal_like(z, generator)
            z, delta = block.solve((z, torch.zeros_like(log_det)), noise)
            log_det = log_det + delta
        return z, log_det

    @torch.no_grad()
    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """x = z_0 for a given z_K: every block's ODE solved backwards, without density bookkeeping."""
        for block in reversed(self.blocks):
            z = block.solve_backwards(block.field.field, z)
        return z

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws z ~ N(0, I) and pushes it back through the ODEs."""
        reference = self.blocks[0].sqrt_end_time
        z = torch.randn(num_samples, self.dim, generator=generator, device=reference.device, dtype=reference.dtype)
        return self.inverse(z)
