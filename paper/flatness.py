"""Loss-surface flatness of dense and pruned nets (SPEC §8): the Hessian of the *training* loss
restricted to the surviving (non-zero) parameters, on a fixed 10 % subset of the training data.

    python -m paper.flatness TARGET [key.path=value ...] [--out DIR] [--subset 0.1] [--ratios 0.25 0.5 ...] [--all-steps] [--control-subsets 3]

For the dense net and, per (mode, method), the pruned nets of net 0 at the steps whose achieved prune
ratio is closest to each of `--ratios` (or every step with `--all-steps`; the NoPrune control, which
prunes nothing, by the ratio scheduled for its step, `experiment.report.step_prune_ratio`), it reports

* ``lambda_max``: the largest (algebraic) eigenvalue of the restricted Hessian H;
* ``trace``: tr H (and ``trace_stderr``, the standard error of Hutchinson's estimate; 0 when exact);
* ``condition_number``: κ = λ_max / λ_min⁺, where λ_min⁺ is the smallest eigenvalue above the tolerance
  ``eig_tol · λ_max`` (default 1e-6). Eigenvalues at or below it — the (near-)null directions, e.g.
  weights into dead neurons, and the negative curvature of a non-convex loss — are left out, so κ is
  the condition number of H on its numerically positive-definite part. It is exact when the full
  Hessian is computed; on the iterative path λ_min⁺ is only available when the smallest algebraic
  eigenvalue (Lanczos, ``eigsh(which="SA")``) is itself above the tolerance, otherwise κ is NaN.
  ``lambda_min`` (the smallest algebraic eigenvalue) is reported alongside so negative curvature is visible;
* the spectral density: a Gaussian-broadened density of the eigenvalues (exact path) or its stochastic
  Lanczos quadrature (SLQ) estimate (iterative path), ∫ρ = 1, ∫λρ(λ)dλ ≈ tr H / n;
* the random-subset control (``control_*`` columns). H restricted to k surviving parameters is a
  principal submatrix, so by Cauchy interlacing its λ_max is at most that of the full Hessian (and
  falls along nested index sets), and its trace sums only k diagonal entries (k/n · tr H on average
  for a random set), whatever the pruning does to the surface. Beside each model with k survivors the
  same quantities are therefore reported for H_dense[S, S], the Hessian of its dense net (same net
  index, at the dense weights) on a uniformly random set S of k parameters (the others held at their
  dense values): mean and population std over ``--control-subsets`` sets (default 3), drawn from a
  generator seeded by (``--seed``, net, k), so they are deterministic and shared by all models with k
  survivors. With k = every parameter (the dense net itself, NoPrune) the only such set is all of them
  and the control is the dense net's own measurement (std 0). A pruned net whose λ_max lies below
  its control is flatter than a random restriction of the dense surface of the same size; the control
  does not account for the retraining after pruning (that is what the NoPrune models are for).

How. θ ∈ ℝⁿ holds the surviving entries only; the pruned entries stay exactly zero (they are rebuilt
as constants around θ and the model is called with `torch.func.functional_call`). The loss is
L(θ) = Σ_c (|c| / N) · loss(model_θ(x_c), y_c) over chunks c of the subset (``--chunk-size``, default
1024, so toy subsets are one chunk). For mean losses this is the full-batch loss exactly with fixed-grid
solvers; adaptive solvers choose their steps per chunk, so there it agrees up to solver tolerance. Hessian-vector products are double backprop (`torch.autograd.grad(..., create_graph=True)`,
then the gradient of gᵀv), several vectors at once with ``is_grads_batched``. The gradient graph of
every chunk is built once and reused by every product (``--no-cache-graph`` rebuilds it per product).

* The adjoint method (names with ``_da``, ``_adjoint``) does not support double backward, so the
  Hessian is taken on a copy of the model whose ODE blocks backpropagate through the solver
  (``SolverOptions(adjoint=False)``, same weights, solver and tolerances). This differentiates the
  discretised solve, whose gradient the adjoint approximates; the adaptive step sizes depend on θ
  and are differentiated through as torchdiffeq computes them.
* Flows of dimension ≤ 8 use the exact trace in log p(x) (deterministic loss); larger flows use
  Hutchinson's trace estimator with its noise fixed by seeding torch before every chunk's forward pass.
* The subset is a seeded choice (``--seed``) of rows of the run's training split, passed once through
  the training transforms (seeded too), so the loss is a fixed deterministic function of θ and every
  model of a run is measured on the same data.
* Computation is in float64 by default (``--dtype``) so that roundoff stays far below the
  eigenvalue tolerance.

Exact path (n ≤ ``--exact-max``, default 2000): the full Hessian from n HVPs with the unit vectors,
symmetrised, then `numpy.linalg.eigvalsh` gives exact λ_max, λ_min, trace, κ and spectrum.
Iterative path: `scipy.sparse.linalg.eigsh` (ARPACK Lanczos) on a LinearOperator of the HVP for the
largest ('LA') and smallest ('SA') algebraic eigenvalue; Hutchinson's trace estimator with Rademacher
probes (``--probes``); SLQ with ``--slq-vectors`` Rademacher starting vectors and ``--slq-steps``
Lanczos steps with full reorthogonalisation (`lanczos` below).

Cost: the exact path needs n HVPs (≈ seconds for the toy NODEs); the iterative path a few hundred to
a thousand (ffjord_l4_h64, n ≈ 8.6k, 10 % of ToyGaussians: ≈ 2 min on one CPU thread). The SLQ basis
holds slq_vectors × slq_steps × n floats.

The control is computed once per distinct k, right after the dense net and from its operator
(`HessianOperator.restricted`: H_dense[S, S]·v = (H_dense·P v)[S], P v being v padded with zeros, the
same principal-submatrix restriction as to the survivors). On the exact path the dense Hessian is formed
once anyway (n_dense HVPs, as before), so each subset costs one k × k `eigvalsh` and no HVP. On the
iterative path each subset is a further measurement through the dense net's gradient graph without SLQ
(eigsh twice and Hutchinson; k HVPs if k ≤ ``--exact-max``), i.e. about ``--control-subsets`` × (a pruned
model's cost less SLQ) per distinct k; ``--control-subsets 0`` switches the control off.

Outputs in the output folder (per run): ``flatness_<run>.csv`` / ``.md`` (one row per evaluated
model, with its control), ``flatness_<run>.png/.pdf`` (λ_max, trace and κ against prune ratio, one
solid line per method and its control dashed in the same colour),
``spectrum_<run>.png/.pdf`` (spectral densities overlaid, coloured by prune ratio) and
``spectrum_<run>.csv`` (the quadrature nodes and weights behind them).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch
from torch import nn
from torch.func import functional_call

from experiment.data.transforms import build_transform
from experiment.models import ODEBlock
from experiment.pruning.rules import CONTROL_METHOD
from experiment.report import line_label, method_color, prune_ratio_axis, step_prune_ratio
from experiment.results import Run
from experiment.results.tree import model_name, rows_to_csv
from experiment.training.evaluate import trace_estimator_for
from experiment.training.losses import build_loss
from paper.common import (
    figure_title, find_runs, new_figure, output_folder, parse_arguments, plt, run_label, save_figure, save_text,
)

DEFAULT_RATIOS = (0.25, 0.5, 0.75, 0.9, 0.95)
CONTROL_QUANTITIES = {"lambda_max": "lambda_max", "trace": "trace", "condition": "condition_number"}  # column stem → Flatness field
CONTROL_COLUMNS = tuple(f"control_{stem}_{statistic}" for stem in CONTROL_QUANTITIES for statistic in ("mean", "std")) + ("control_subsets",)
COLUMNS = ("run", "mode", "method", "net", "step", "prune_ratio", "step_prune_ratio", "num_surviving_params", "lambda_max",
           "trace", "trace_stderr", "condition_number", *CONTROL_COLUMNS, "lambda_min", "hessian", "subset_size", "seconds")


# ------------------------------------------------------------------------------ θ ↔ parameters


@dataclass
class SurvivingParameters:
    """The surviving (non-zero) entries of a model's parameters as one flat vector θ.

    `indices[i]` are the flat positions of parameter `names[i]` that survive; `full(θ)` rebuilds every
    parameter with θ's values there and exact zeros elsewhere (the pruned entries are constants)."""

    names: list[str]
    shapes: list[torch.Size]
    indices: list[torch.Tensor]
    values: torch.Tensor  # θ at the trained weights

    @classmethod
    def of(cls, model: nn.Module, support: dict[str, torch.Tensor] | None = None) -> "SurvivingParameters":
        """Survivors = non-zero entries, or the non-zero entries of `support` (name → tensor shaped
        like the parameter; parameters it does not name keep every entry)."""
        names, shapes, indices, values = [], [], [], []
        for name, parameter in model.named_parameters():
            data = parameter.detach()
            keep = data != 0 if support is None else (support[name] != 0 if name in support else torch.ones_like(data, dtype=torch.bool))
            index = torch.nonzero(keep.flatten(), as_tuple=False).flatten()
            names.append(name)
            shapes.append(data.shape)
            indices.append(index)
            values.append(data.flatten()[index])
        return cls(names, shapes, indices, torch.cat(values) if values else torch.zeros(0))

    @property
    def size(self) -> int:
        return int(self.values.numel())

    def full(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """name → parameter tensor with θ at the surviving entries and zeros elsewhere (differentiable in θ)."""
        parameters, start = {}, 0
        for name, shape, index in zip(self.names, self.shapes, self.indices):
            count = index.numel()
            flat = theta.new_zeros(shape.numel()).index_put((index,), theta[start:start + count])
            parameters[name] = flat.view(shape)
            start += count
        return parameters

    def positions(self) -> np.ndarray:
        """Positions of θ's entries in the flattened concatenation of all parameters (in named_parameters order)."""
        offsets = np.cumsum([0] + [shape.numel() for shape in self.shapes])
        return np.concatenate([offset + index.numpy() for offset, index in zip(offsets, self.indices)]).astype(np.int64)


def differentiable_copy(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy of `model` in `dtype`, eval mode, whose ODE blocks backpropagate through the solver
    (the adjoint method has no double backward); its own parameters are frozen (never used by
    `functional_call`, which substitutes them)."""
    copied = copy.deepcopy(model).to(dtype).eval()
    for module in copied.modules():
        if isinstance(module, ODEBlock):
            module.options = dataclasses.replace(module.options, adjoint=False)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied


class _Output(nn.Module):
    """model(x) for classifiers, model.log_prob(x, exact_trace) for flows (so `functional_call` can
    call either through `forward`)."""

    def __init__(self, model: nn.Module, trace: str):
        super().__init__()
        self.model = model
        self.trace = trace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trace:
            return self.model.log_prob(x, exact_trace=self.trace == "exact")
        return self.model(x)


# ------------------------------------------------------------------------------ the restricted loss and its HVP


class RestrictedLoss:
    """L(θ) = Σ_c (|c|/N) · loss_fn(output(model_θ, x_c), y_c) for θ the surviving parameters.

    `model` must support double backward (see `differentiable_copy`). `trace` is "" (classifier),
    "exact" or "hutchinson" (flows: how log p(x) is computed; Hutchinson's noise is fixed by seeding
    torch with `seed` + chunk index before every chunk's forward pass). `hvp(V)` computes H·V for
    V of shape [n] or [k, n]; with `cache_graph` the gradient graph of every chunk is kept and reused."""

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, *, trace: str = "",
                 chunk_size: int = 1024, seed: int = 0, cache_graph: bool = True, hvp_batch: int = 16,
                 support: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.output = _Output(model, trace)
        self.loss_fn = loss_fn
        self.space = SurvivingParameters.of(model, support)
        dtype = self.space.values.dtype
        self.x = x.to(dtype) if x.is_floating_point() else x
        self.y = y
        self.trace = trace
        self.seed = seed
        self.cache_graph = cache_graph
        self.hvp_batch = max(1, hvp_batch)
        self.chunks = [(start, min(start + chunk_size, len(x))) for start in range(0, len(x), chunk_size)]
        self.theta = self.space.values.clone().requires_grad_(True)
        self._graphs: list[torch.Tensor] | None = None
        self._batched = True
        self.num_hvps = 0

    @property
    def size(self) -> int:
        return self.space.size

    def chunk_loss(self, theta: torch.Tensor, chunk: int) -> torch.Tensor:
        """(|c|/N) · loss on chunk `chunk`."""
        start, stop = self.chunks[chunk]
        parameters = {f"model.{name}": value for name, value in self.space.full(theta).items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 7919 * chunk)
            output = functional_call(self.output, parameters, (self.x[start:stop],))
        return self.loss_fn(output, self.y[start:stop]) * ((stop - start) / len(self.x))

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """L(θ) (differentiable; e.g. for `torch.autograd.functional.hessian`)."""
        return sum(self.chunk_loss(theta, chunk) for chunk in range(len(self.chunks)))

    def value(self) -> float:
        with torch.no_grad():
            return float(self(self.theta.detach()))

    def _gradient(self, chunk: int) -> torch.Tensor:
        with torch.enable_grad():
            loss = self.chunk_loss(self.theta, chunk)
            return torch.autograd.grad(loss, self.theta, create_graph=True)[0]

    def gradients(self):
        """The (graph-carrying) gradient of each chunk's weighted loss, cached if `cache_graph`."""
        if self._graphs is not None:
            yield from self._graphs
            return
        graphs = []
        for chunk in range(len(self.chunks)):
            gradient = self._gradient(chunk)
            if self.cache_graph:
                graphs.append(gradient)
            yield gradient
        if self.cache_graph:
            self._graphs = graphs

    def hvp(self, vectors: torch.Tensor) -> torch.Tensor:
        """H·v for v of shape [n], or H·vᵢ for every row of [k, n]."""
        single = vectors.dim() == 1
        matrix = vectors.reshape(-1, self.size).to(self.theta.dtype)
        result = torch.zeros_like(matrix)
        if self.size == 0 or matrix.shape[0] == 0:
            return result[0] if single else result
        for gradient in self.gradients():
            if not gradient.requires_grad:  # loss independent of θ
                continue
            for start in range(0, matrix.shape[0], self.hvp_batch):
                block = matrix[start:start + self.hvp_batch]
                result[start:start + len(block)] += self._products(gradient, block)
        self.num_hvps += matrix.shape[0]
        return result[0] if single else result

    def _products(self, gradient: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """Rows ∂(gᵀv)/∂θ for the rows v of `block` (batched through vmap when it works)."""
        if self._batched and len(block) > 1:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # vmap's "no batching rule, falling back" notices
                    (products,) = torch.autograd.grad(gradient, self.theta, block, retain_graph=True, is_grads_batched=True,
                                                      allow_unused=True, materialize_grads=True)
                return products
            except RuntimeError:
                self._batched = False  # some op of this model has no batched backward: one at a time
        return torch.stack([torch.autograd.grad(gradient, self.theta, vector, retain_graph=True, allow_unused=True,
                                                materialize_grads=True)[0] for vector in block])

    def release(self) -> None:
        self._graphs = None


class HessianOperator:
    """The restricted Hessian as numpy matrix-vector products (and a scipy LinearOperator). `matrix`
    is the Hessian itself once it has been formed (`materialised`, `of_matrix`); then `dense_hessian`
    and `restricted` need no Hessian-vector products."""

    def __init__(self, hvp: Callable[[torch.Tensor], torch.Tensor], size: int, dtype: torch.dtype = torch.float64,
                 matrix: np.ndarray | None = None):
        self.hvp = hvp
        self.size = size
        self.dtype = dtype
        self.matrix = matrix

    @classmethod
    def of(cls, loss: RestrictedLoss) -> "HessianOperator":
        return cls(loss.hvp, loss.size, loss.theta.dtype)

    @classmethod
    def of_matrix(cls, matrix: np.ndarray) -> "HessianOperator":
        """A fixed matrix, symmetrised (a formed Hessian, or a test matrix)."""
        matrix = np.asarray(matrix, dtype=np.float64)
        matrix = 0.5 * (matrix + matrix.T)
        tensor = torch.as_tensor(matrix)
        return cls(lambda vectors: vectors @ tensor.T, matrix.shape[0], matrix=matrix)

    def materialised(self, batch: int = 64) -> "HessianOperator":
        """The same Hessian with its n × n matrix formed once (n HVPs, see `dense_hessian`)."""
        return HessianOperator.of_matrix(dense_hessian(self, batch))

    def restricted(self, positions: np.ndarray) -> "HessianOperator":
        """The principal submatrix H[S, S] on the index set S = `positions` (entries of this operator's
        vector): H[S, S]·v = (H·P v)[S], where P v puts v at S and zeros elsewhere, i.e. the Hessian in
        the coordinates S with every other coordinate held fixed. (The restriction of a model's loss to
        its surviving parameters is the same thing: the principal submatrix of its full Hessian on the
        survivors, the pruned entries held at zero.) With a formed matrix it is the submatrix itself."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.matrix is not None:
            return HessianOperator.of_matrix(self.matrix[np.ix_(positions, positions)])
        index = torch.as_tensor(positions)

        def hvp(vectors: torch.Tensor) -> torch.Tensor:
            matrix = vectors.reshape(-1, len(index))
            padded = matrix.new_zeros(matrix.shape[0], self.size)
            padded[:, index] = matrix
            products = self.hvp(padded)[:, index]
            return products[0] if vectors.dim() == 1 else products

        return HessianOperator(hvp, len(index), self.dtype)

    def matmat(self, vectors: np.ndarray) -> np.ndarray:
        """H·V for V of shape [n, k]."""
        vectors = np.asarray(vectors, dtype=np.float64).reshape(self.size, -1)
        products = self.hvp(torch.as_tensor(vectors.T.copy(), dtype=self.dtype))
        return products.detach().to(torch.float64).numpy().T.reshape(vectors.shape)

    def matvec(self, vector: np.ndarray) -> np.ndarray:
        return self.matmat(np.asarray(vector).reshape(-1, 1)).reshape(-1)

    def linear_operator(self) -> scipy.sparse.linalg.LinearOperator:
        return scipy.sparse.linalg.LinearOperator((self.size, self.size), matvec=self.matvec, matmat=self.matmat,
                                                  rmatvec=self.matvec, dtype=np.float64)


# ------------------------------------------------------------------------------ spectral quantities


def dense_hessian(operator: HessianOperator, batch: int = 64) -> np.ndarray:
    """The full n × n Hessian, column by column (H eᵢ, `batch` columns per call), symmetrised; the
    operator's own matrix if it has been formed."""
    if operator.matrix is not None:
        return operator.matrix
    n = operator.size
    hessian = np.zeros((n, n))
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        units = np.zeros((n, stop - start))
        units[np.arange(start, stop), np.arange(stop - start)] = 1.0
        hessian[:, start:stop] = operator.matmat(units)
    return 0.5 * (hessian + hessian.T)


def extreme_eigenvalue(operator: HessianOperator, which: str = "LA", tol: float = 1e-8, maxiter: int | None = None,
                       seed: int = 0) -> float:
    """The largest ('LA') or smallest ('SA') algebraic eigenvalue by ARPACK's Lanczos (`eigsh`)."""
    n = operator.size
    if n < 3:  # eigsh needs k < n; tiny problems are solved directly
        eigenvalues = np.linalg.eigvalsh(dense_hessian(operator)) if n else np.array([np.nan])
        return float(eigenvalues[-1] if which == "LA" else eigenvalues[0])
    start = np.random.default_rng(seed).standard_normal(n)
    try:
        values = scipy.sparse.linalg.eigsh(operator.linear_operator(), k=1, which=which, tol=tol, v0=start,
                                           maxiter=maxiter or max(1000, 10 * n), return_eigenvectors=False)
    except scipy.sparse.linalg.ArpackNoConvergence as error:
        values = error.eigenvalues
        if len(values) == 0:
            return math.nan
    return float(values[0])


def rademacher(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """[n, count] of independent ±1 entries."""
    return rng.integers(0, 2, size=(n, count)).astype(np.float64) * 2.0 - 1.0


def hutchinson_trace(operator: HessianOperator, probes: int = 100, seed: int = 0, batch: int = 16) -> tuple[float, float]:
    """tr H ≈ mean of vᵀHv over Rademacher probes v; returns (mean, standard error of the mean)."""
    rng = np.random.default_rng(seed)
    samples = []
    for start in range(0, probes, batch):
        vectors = rademacher(operator.size, min(batch, probes - start), rng)
        samples.append(np.einsum("nk,nk->k", vectors, operator.matmat(vectors)))
    samples = np.concatenate(samples)
    stderr = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
    return float(samples.mean()), stderr


def lanczos(matmat: Callable[[np.ndarray], np.ndarray], starts: np.ndarray, steps: int,
            reorthogonalize: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Lanczos iteration for a symmetric operator, run from every column of `starts` ([n, k]) in lockstep
    (one `matmat` call per step serves all runs).

    From q₁ = s/‖s‖ it builds orthonormal q₁..q_m and the tridiagonal T = Qᵀ H Q with diagonal α and
    off-diagonal β: w = H q_j − α_j q_j − β_{j−1} q_{j−1}, α_j = q_jᵀ H q_j, β_j = ‖w‖, q_{j+1} = w/β_j.
    With `reorthogonalize`, w is orthogonalised against every previous q (twice, classical Gram–Schmidt),
    which keeps Q orthonormal in floating point (no spurious copies of converged Ritz values).
    A run stops early when β_j ≈ 0 (Krylov space invariant: T's eigenvalues are then exact eigenvalues).
    Returns, per start, (α of length m, β of length m − 1)."""
    starts = np.asarray(starts, dtype=np.float64)
    n, count = starts.shape
    steps = max(1, min(steps, n))
    basis = np.zeros((count, steps, n))
    alphas, betas = np.zeros((count, steps)), np.zeros((count, steps))
    lengths = np.full(count, steps)
    active = np.ones(count, dtype=bool)
    q = (starts / np.linalg.norm(starts, axis=0)).T  # [count, n]
    q_previous, beta_previous = np.zeros_like(q), np.zeros(count)
    scale = np.zeros(count)
    for j in range(steps):
        runs = np.flatnonzero(active)
        if len(runs) == 0:
            break
        basis[runs, j] = q[runs]
        w = matmat(q[runs].T).T  # [len(runs), n]
        alpha = np.einsum("kn,kn->k", w, q[runs])
        w = w - alpha[:, None] * q[runs] - beta_previous[runs, None] * q_previous[runs]
        if reorthogonalize:
            for _ in range(2):
                previous = basis[runs, :j + 1]  # [len(runs), j+1, n]
                w = w - np.einsum("kjn,kj->kn", previous, np.einsum("kjn,kn->kj", previous, w))
        beta = np.linalg.norm(w, axis=1)
        alphas[runs, j] = alpha
        betas[runs, j] = beta
        scale[runs] = np.maximum(scale[runs], np.abs(alpha) + beta)
        q_previous[runs] = q[runs]
        beta_previous[runs] = beta
        for position, run in enumerate(runs):
            if j == steps - 1:
                continue
            if beta[position] <= 1e-12 * max(scale[run], np.finfo(float).tiny):
                lengths[run] = j + 1
                active[run] = False
            else:
                q[run] = w[position] / beta[position]
    return [(alphas[run, :lengths[run]].copy(), betas[run, :lengths[run] - 1].copy()) for run in range(count)]


def gauss_quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values θ_j (nodes) and weights τ_j = (first component of T's j-th eigenvector)² of the
    Lanczos tridiagonal: Σ_j τ_j f(θ_j) ≈ q₁ᵀ f(H) q₁, with Σ τ_j = 1."""
    if len(alpha) == 1:
        return alpha.copy(), np.ones(1)
    nodes, vectors = scipy.linalg.eigh_tridiagonal(alpha, beta)
    return nodes, vectors[0] ** 2


def slq(operator: HessianOperator, vectors: int = 3, steps: int = 80, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stochastic Lanczos quadrature: (nodes, weights) from `vectors` Rademacher starting vectors."""
    starts = rademacher(operator.size, vectors, np.random.default_rng(seed))
    return [gauss_quadrature(alpha, beta) for alpha, beta in lanczos(operator.matmat, starts, steps)]


def spectral_density(quadratures: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray, sigma: float) -> np.ndarray:
    """ρ(λ) = (1/V) Σ_v Σ_j τ_vj N(λ; θ_vj, σ²): the Gaussian-broadened density of the quadrature
    nodes (exact eigenvalues with weights 1/n, or SLQ's Ritz values and weights)."""
    density = np.zeros_like(grid, dtype=np.float64)
    for nodes, weights in quadratures:
        gaussians = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        density += gaussians @ weights
    return density / len(quadratures)


def density_grid(quadratures: list[tuple[np.ndarray, np.ndarray]], sigma_fraction: float = 0.01,
                 points: int = 1000) -> tuple[np.ndarray, float]:
    """A grid covering every node ± 6σ, with σ = `sigma_fraction` × (spread of the nodes)."""
    nodes = np.concatenate([nodes for nodes, _ in quadratures])
    low, high = float(nodes.min()), float(nodes.max())
    sigma = sigma_fraction * max(high - low, 1e-12 * max(abs(low), abs(high), 1.0))
    return np.linspace(low - 6 * sigma, high + 6 * sigma, points), sigma


@dataclass
class Flatness:
    """What `measure` finds for one restricted Hessian."""

    num_params: int
    lambda_max: float
    lambda_min: float
    trace: float
    trace_stderr: float
    condition_number: float
    quadrature: list[tuple[np.ndarray, np.ndarray]]  # exact eigenvalues (weights 1/n) or SLQ
    hessian: str  # "exact" or "iterative"


def condition_number(lambda_max: float, eigenvalues: np.ndarray, tol: float) -> float:
    """λ_max / (smallest eigenvalue above tol · λ_max); NaN if λ_max ≤ 0 or none is above it."""
    if not lambda_max > 0:
        return math.nan
    positive = eigenvalues[eigenvalues > tol * lambda_max]
    return float(lambda_max / positive.min()) if len(positive) else math.nan


def uses_exact_path(n: int, exact_max: int) -> bool:
    """Whether `measure` forms the full Hessian of n parameters (else it works with HVPs only)."""
    return n <= exact_max or n < 3


def measure(operator: HessianOperator, *, exact_max: int = 2000, probes: int = 100, slq_vectors: int = 3,
            slq_steps: int = 80, eig_tol: float = 1e-6, arpack_tol: float = 1e-8, seed: int = 0,
            batch: int = 16, spectrum: bool = True) -> Flatness:
    """λ_max, λ_min, trace, κ and spectral quadrature of the operator: exactly (full Hessian) when
    n ≤ `exact_max`, else by Lanczos (eigsh), Hutchinson and SLQ (skipped without `spectrum`: then
    the quadrature is empty on the iterative path)."""
    n = operator.size
    if n == 0:
        return Flatness(0, math.nan, math.nan, 0.0, 0.0, math.nan, [(np.zeros(1), np.ones(1))], "exact")
    if uses_exact_path(n, exact_max):
        eigenvalues = np.linalg.eigvalsh(dense_hessian(operator, batch=max(batch, 1)))
        return Flatness(n, float(eigenvalues[-1]), float(eigenvalues[0]), float(eigenvalues.sum()), 0.0,
                        condition_number(float(eigenvalues[-1]), eigenvalues, eig_tol),
                        [(eigenvalues, np.full(n, 1.0 / n))], "exact")
    lambda_max = extreme_eigenvalue(operator, "LA", arpack_tol, seed=seed)
    lambda_min = extreme_eigenvalue(operator, "SA", arpack_tol, seed=seed + 1)
    trace, stderr = hutchinson_trace(operator, probes, seed + 2, batch)
    quadrature = slq(operator, slq_vectors, slq_steps, seed + 3) if spectrum else []
    kappa = lambda_max / lambda_min if lambda_max > 0 and lambda_min > eig_tol * lambda_max else math.nan
    return Flatness(n, lambda_max, lambda_min, trace, stderr, kappa, quadrature, "iterative")


# ------------------------------------------------------------------------------ the random-subset control


def random_subsets(num_params: int, size: int, count: int, seed: int, net: int) -> list[np.ndarray]:
    """`count` uniformly random `size`-subsets of range(`num_params`), each sorted, from a generator
    seeded by (seed, net, size): the control of a model is a function of its dense net and its number
    of surviving parameters only, so it is deterministic and shared by all models of that size.
    Of size `num_params` there is exactly one subset, every parameter."""
    if size == num_params:
        return [np.arange(num_params)]
    generator = np.random.default_rng([seed, net, size])
    return [np.sort(generator.choice(num_params, size=size, replace=False)) for _ in range(count)]


def random_subset_control(dense: HessianOperator, dense_flatness: Flatness, subsets: list[np.ndarray],
                          **measure_options) -> list[Flatness]:
    """The flatness of the dense Hessian H restricted to each index set S of `subsets`, i.e. of the
    principal submatrix H[S, S] (no spectral density). A subset of every parameter is H itself, whose
    measurement `dense_flatness` is reused."""
    return [dense_flatness if len(subset) == dense.size else
            measure(dense.restricted(subset), spectrum=False, **measure_options) for subset in subsets]


def control_columns(control: list[Flatness]) -> dict[str, float | int]:
    """Mean and population std over the subsets of λ_max, tr H and κ (a NaN κ of one subset makes the
    mean NaN); NaN when there is no control (no dense net, or `--control-subsets 0`)."""
    columns: dict[str, float | int] = {"control_subsets": len(control)}
    for stem, field in CONTROL_QUANTITIES.items():
        values = np.array([getattr(result, field) for result in control], dtype=np.float64)
        columns[f"control_{stem}_mean"] = float(values.mean()) if len(values) else math.nan
        columns[f"control_{stem}_std"] = float(values.std()) if len(values) else math.nan
    return columns


# ------------------------------------------------------------------------------ runs → rows


def placed_ratio(row: dict) -> float:
    """Where a model sits on the prune-ratio axis: its achieved prune ratio; the NoPrune control
    (same training chain, nothing pruned, achieved ratio 0) at the ratio the pruning methods are
    scheduled to reach at its step."""
    return step_prune_ratio(row) if row["method"] == CONTROL_METHOD else float(row["prune_ratio"])


def select_rows(rows: list[dict], net: int = 0, ratios: tuple[float, ...] = DEFAULT_RATIOS, all_steps: bool = False,
                repetition: int = 0) -> list[dict]:
    """The dense net `net`, then per (mode, method) the pruned nets of that net and repetition at every
    step (`all_steps`) or at the steps whose `placed_ratio` (the achieved prune ratio; NoPrune: the
    scheduled one) is closest to each of `ratios`."""
    chosen = [row for row in rows if row["method"] == "dense" and int(row["net"]) == net]
    pruned = [row for row in rows if row["method"] != "dense" and int(row["net"]) == net and int(row["repetition"]) == repetition]
    for group in dict.fromkeys((row["mode"], row["method"]) for row in pruned):
        candidates = sorted((row for row in pruned if (row["mode"], row["method"]) == group), key=lambda row: int(row["step"]))
        if all_steps:
            chosen += candidates
            continue
        steps = {int(min(candidates, key=lambda row: abs(placed_ratio(row) - ratio))["step"]) for ratio in ratios}
        chosen += [row for row in candidates if int(row["step"]) in steps]
    return chosen


def training_subset(run: Run, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded choice of round(fraction · N) rows of the run's training split, through the training transforms."""
    x, y = run.load_data()["train"]
    count = min(len(x), max(1, round(fraction * len(x))))
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=count, replace=False))
    index = torch.as_tensor(rows, dtype=torch.long)
    schedule = run.config["training"]
    transform = build_transform(schedule.get("transformsTrain", []) + schedule.get("transformsFinal", []))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(x[index]), y[index]


def restricted_loss(run: Run, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dtype: torch.dtype = torch.float64,
                    chunk_size: int = 1024, seed: int = 0, cache_graph: bool = True, hvp_batch: int = 16) -> RestrictedLoss:
    """The run's training loss of `model` on (x, y), as a function of its surviving parameters."""
    schedule = run.config["training"]
    data_dim = int(np.prod(x.shape[1:]))
    loss_fn = build_loss(schedule["loss"], schedule.get("lossKwargs", {}) or {}, data_dim)
    trace = trace_estimator_for(model, data_dim)
    return RestrictedLoss(differentiable_copy(model, dtype), loss_fn, x, y, trace=trace, chunk_size=chunk_size, seed=seed,
                          cache_graph=cache_graph, hvp_batch=hvp_batch)


def analyse_run(run: Run, arguments) -> tuple[list[dict], list[dict]]:
    """(table rows, spectrum rows) for the selected models of `run`, each row with its random-subset
    control: the dense net's Hessian on `--control-subsets` random sets of as many parameters as the
    model has survivors (computed once per size, right after the dense net, from its Hessian)."""
    label = run_label(run)
    dtype = getattr(torch, arguments.dtype)
    x, y = training_subset(run, arguments.subset, arguments.seed)
    measure_options = dict(exact_max=arguments.exact_max, probes=arguments.probes, slq_vectors=arguments.slq_vectors,
                           slq_steps=arguments.slq_steps, eig_tol=arguments.eig_tol, seed=arguments.seed,
                           batch=arguments.hvp_batch)
    selected = select_rows(run.rows, arguments.net, tuple(arguments.ratios), arguments.all_steps, arguments.repetition)
    models = [run.load_model(row) for row in selected]
    sizes = sorted({SurvivingParameters.of(model).size for model in models})
    controls: dict[int, list[Flatness]] = {}  # number of surviving parameters → the control's measurements
    table, spectra = [], []
    for row, model in zip(selected, models):  # the dense net comes first (select_rows)
        started = time.perf_counter()
        loss = restricted_loss(run, model, x, y, dtype=dtype, chunk_size=arguments.chunk_size, seed=arguments.seed,
                               cache_graph=not arguments.no_cache_graph, hvp_batch=arguments.hvp_batch)
        operator = HessianOperator.of(loss)
        is_dense = row["method"] == "dense"
        if is_dense and uses_exact_path(operator.size, arguments.exact_max):
            operator = operator.materialised(arguments.hvp_batch)  # kept: the control's submatrices need no HVPs
        result = measure(operator, **measure_options)
        seconds = round(time.perf_counter() - started, 2)
        if is_dense and arguments.control_subsets > 0:
            for size in sizes:  # while the dense gradient graph is still alive
                control_started = time.perf_counter()
                subsets = random_subsets(result.num_params, size, arguments.control_subsets, arguments.seed, int(row["net"]))
                controls[size] = random_subset_control(operator, result, subsets, **measure_options)
                summary = control_columns(controls[size])
                print(f"{label} control n={size}: λ_max={summary['control_lambda_max_mean']:.5g}±{summary['control_lambda_max_std']:.2g}, "
                      f"trace={summary['control_trace_mean']:.5g}±{summary['control_trace_std']:.2g} "
                      f"({len(subsets)} subsets, {time.perf_counter() - control_started:.1f} s)", flush=True)
        loss.release()
        entry = {
            "run": label, "mode": row["mode"], "method": row["method"], "net": int(row["net"]), "step": int(row["step"]),
            "prune_ratio": float(row["prune_ratio"]), "step_prune_ratio": step_prune_ratio(row),
            "num_surviving_params": result.num_params, "lambda_max": result.lambda_max, "trace": result.trace,
            "trace_stderr": result.trace_stderr, "condition_number": result.condition_number,
            **control_columns(controls.get(result.num_params, [])), "lambda_min": result.lambda_min,
            "hessian": result.hessian, "subset_size": len(x), "seconds": seconds,
        }
        table.append(entry)
        for vector, (nodes, weights) in enumerate(result.quadrature):
            spectra += [{"run": label, "mode": row["mode"], "method": row["method"], "step": int(row["step"]),
                         "prune_ratio": float(row["prune_ratio"]), "vector": vector, "node": float(node), "weight": float(weight)}
                        for node, weight in zip(nodes, weights)]
        print(f"{label} {model_name(row)}: PR {entry['prune_ratio']:.3f}, n={result.num_params}, λ_max={result.lambda_max:.5g} "
              f"(control {entry['control_lambda_max_mean']:.5g}), trace={result.trace:.5g}±{result.trace_stderr:.2g} "
              f"(control {entry['control_trace_mean']:.5g}), κ={result.condition_number:.4g} ({result.hessian}, {seconds:.1f} s)",
              flush=True)
    return table, spectra


# ------------------------------------------------------------------------------ outputs


def markdown_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.6g}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[column]) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _lines(rows: list[dict]) -> dict[str, list[dict]]:
    """Line label ('WT', 'FT (retrain)', …) → rows sorted by `placed_ratio`, each line starting at the dense net."""
    dense = [row for row in rows if row["method"] == "dense"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["method"] != "dense":
            groups.setdefault((row["mode"], row["method"]), []).append(row)
    if not groups:
        return {"dense": dense}
    modes = {mode for mode, _ in groups}
    return {line_label(mode, method, modes): dense + sorted(members, key=placed_ratio)
            for (mode, method), members in groups.items()}


CONTROL_LABEL = "dense, random subset of same size"


def plot_flatness(rows: list[dict], title: str) -> plt.Figure:
    """λ_max, tr H and κ against prune ratio, one solid line per (mode, method), and beside it, dashed
    in the same colour, its random-subset control (mean ± std over the subsets); one legend below."""
    figure, axes = new_figure(1, 3, aspect=0.36)
    panels = (("lambda_max", None, "control_lambda_max", "largest eigenvalue λ_max"),
              ("trace", "trace_stderr", "control_trace", "trace of the Hessian"),
              ("condition_number", None, "control_condition", "condition number κ"))
    for index, (name, line) in enumerate(_lines(rows).items()):
        ratios = [placed_ratio(row) for row in line]
        colour = method_color(line[-1]["method"], index)
        for axis, (column, error, control, _) in zip(axes, panels):
            axis.errorbar(ratios, [row[column] for row in line], yerr=[row[error] for row in line] if error else None,
                          color=colour, marker="o", markersize=3, capsize=2, label=name)
            axis.errorbar(ratios, [row[f"{control}_mean"] for row in line], yerr=[row[f"{control}_std"] for row in line],
                          color=colour, linestyle="--", linewidth=0.8, marker="x", markersize=3, capsize=2)
    for axis, (_, _, _, label) in zip(axes, panels):
        prune_ratio_axis(axis)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    if any(row["condition_number"] > 0 for row in rows):
        axes[2].set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    control = plt.Line2D([], [], color="grey", linestyle="--", linewidth=0.8, marker="x", markersize=3)
    figure.legend(handles + [control], labels + [f"dashed: {CONTROL_LABEL}"], loc="outside lower center",
                  ncol=len(labels) + 1)
    figure_title(figure, title)
    return figure


def plot_spectra(rows: list[dict], quadratures: dict[tuple, list], title: str, sigma_fraction: float) -> plt.Figure:
    """One panel per (mode, method): the densities of the dense net (black) and of every pruned net,
    coloured by prune ratio (`placed_ratio`, colour bar)."""
    lines = _lines(rows)
    figure, axes = new_figure(1, len(lines), aspect=0.36 if len(lines) > 1 else 0.72, squeeze=False, sharey=True)
    everything = [q for parts in quadratures.values() for q in parts]
    grid, sigma = density_grid(everything, sigma_fraction)
    colours = plt.get_cmap("viridis")
    norm = plt.Normalize(0.0, 1.0)
    for axis, (name, line) in zip(axes[0], lines.items()):
        for row in line:
            density = spectral_density(quadratures[(row["mode"], row["method"], row["step"])], grid, sigma)
            is_dense = row["method"] == "dense"
            axis.semilogy(grid, np.maximum(density, 1e-12), color="black" if is_dense else colours(norm(placed_ratio(row))),
                          linewidth=0.8, label="dense" if is_dense else None)
        axis.set_ylim(bottom=max(1e-8, axis.get_ylim()[0]))
        axis.set_xlabel("eigenvalue λ")
        axis.set_title(name)
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("spectral density ρ(λ)")
    axes[0, 0].legend(loc="upper right")
    figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=colours), ax=axes, label="prune ratio (%)",
                    format=lambda value, _: f"{100 * value:.0f}", shrink=0.9)
    figure_title(figure, f"{title} (Gaussian broadening σ = {sigma:.3g})")
    return figure


def write_outputs(folder: Path, label: str, table: list[dict], spectra: list[dict], sigma_fraction: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [save_text(folder, f"flatness_{label}.csv", rows_to_csv([{column: row[column] for column in COLUMNS} for row in table])),
             save_text(folder, f"flatness_{label}.md", markdown_table(table)),
             save_text(folder, f"spectrum_{label}.csv", rows_to_csv(spectra))]
    if not table:
        return paths
    title = f"Hessian of the training loss on the surviving parameters: {label}"
    paths += save_figure(plot_flatness(table, title), folder, f"flatness_{label}")
    quadratures: dict[tuple, list] = {}
    for row in table:
        key = (row["mode"], row["method"], row["step"])
        points = [entry for entry in spectra if (entry["mode"], entry["method"], entry["step"]) == key]
        vectors = sorted({entry["vector"] for entry in points})
        quadratures[key] = [(np.array([e["node"] for e in points if e["vector"] == v]), np.array([e["weight"] for e in points if e["vector"] == v]))
                            for v in vectors]
    paths += save_figure(plot_spectra(table, quadratures, title, sigma_fraction), folder, f"spectrum_{label}")
    return paths


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(
        "Hessian flatness (λ_max, trace, condition number, spectral density) of dense and pruned nets", argv,
        **{
            "--subset": dict(type=float, default=0.1, help="share of the training split to use (default 0.1)"),
            "--ratios": dict(type=float, nargs="+", default=list(DEFAULT_RATIOS),
                             help="prune ratios: per method, the steps closest to these (default %(default)s)"),
            "--all-steps": dict(action="store_true", help="every pruning step instead of --ratios"),
            "--net": dict(type=int, default=0, help="which net (default 0)"),
            "--repetition": dict(type=int, default=0, help="which repetition of the pruned nets (default 0)"),
            "--seed": dict(type=int, default=0, help="seed of the subset, probes and starting vectors"),
            "--exact-max": dict(type=int, default=2000, help="compute the full Hessian up to this many surviving parameters"),
            "--probes": dict(type=int, default=100, help="Hutchinson probes (iterative path)"),
            "--slq-vectors": dict(type=int, default=3, help="SLQ starting vectors (iterative path)"),
            "--slq-steps": dict(type=int, default=80, help="Lanczos steps per SLQ vector (iterative path)"),
            "--eig-tol": dict(type=float, default=1e-6, help="eigenvalues ≤ eig_tol·λ_max are left out of the condition number"),
            "--sigma": dict(type=float, default=0.01, help="Gaussian broadening of the densities, as a share of the spectrum's spread"),
            "--chunk-size": dict(type=int, default=1024, help="samples per forward pass"),
            "--hvp-batch": dict(type=int, default=16, help="Hessian-vector products per backward pass"),
            "--no-cache-graph": dict(action="store_true", help="rebuild the gradient graph for every product (less memory)"),
            "--dtype": dict(choices=["float64", "float32"], default="float64"),
            "--control-subsets": dict(type=int, default=3,
                                      help="random parameter subsets per model size for the control: the dense net's "
                                           "Hessian restricted to as many parameters as the model keeps (default 3; 0: none)"),
        },
    )
    for run in find_runs(arguments.target, arguments.overrides):
        label = run_label(run)
        table, spectra = analyse_run(run, arguments)
        for path in write_outputs(output_folder(arguments.out, run), label, table, spectra, arguments.sigma):
            print(path)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
