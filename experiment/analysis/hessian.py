"""The Hessian of a loss restricted to a model's surviving (non-zero) parameters, and its spectrum.

θ ∈ ℝⁿ holds the surviving entries only; the pruned entries stay exactly zero (they are rebuilt as
constants around θ and the model is called with `torch.func.functional_call`). The loss is

    L(θ) = Σ_c (|c| / N) · loss(model_θ(x_c), y_c)

over chunks c of the N samples, so for mean losses it is the full-batch loss (exactly with
fixed-grid solvers; adaptive solvers choose their steps per chunk). Hessian-vector products are
double backprop, H v = ∂(∇L(θ)ᵀ v)/∂θ, several vectors at once with ``is_grads_batched``.

From the products (`HessianOperator`):

* exact path (small n): the full Hessian from n products with the unit vectors, symmetrised, and
  `numpy.linalg.eigvalsh`;
* iterative path: the extreme eigenvalues by ARPACK's Lanczos (`scipy.sparse.linalg.eigsh`), the
  trace by Hutchinson's estimator tr H ≈ mean of vᵀHv over Rademacher v, and the spectral density by
  stochastic Lanczos quadrature (`slq`): Lanczos with full reorthogonalisation from Rademacher
  starts, whose tridiagonal T gives Gauss quadrature nodes and weights, Σ_j τ_j f(θ_j) ≈ q₁ᵀ f(H) q₁;
* λ_max alone (`largest_eigenvalue`) on the path `measure` would take: ≈ 20 HVPs on the iterative one.

The condition number is κ = λ_max / λ_min⁺, λ_min⁺ the smallest eigenvalue above ``eig_tol · λ_max``:
the (near-)null directions (e.g. weights into dead neurons) and the negative curvature of a
non-convex loss are left out, so κ is the condition number of H on its numerically positive-definite
part. It is exact on the exact path; on the iterative path λ_min⁺ is only known when the smallest
algebraic eigenvalue (``eigsh(which="SA")``) is itself above the tolerance, otherwise κ is NaN.

Restricting H to an index set S (`HessianOperator.restricted`) gives the principal submatrix
H[S, S]·v = (H · P v)[S], P v being v padded with zeros: the Hessian in the coordinates S with every
other coordinate held fixed. The restriction of a model's loss to its survivors is the same thing.

The adjoint method has no double backward, so the Hessian is taken on a copy of the model whose ODE
blocks backpropagate through the solver (`differentiable_copy`: same weights, solver and
tolerances). This differentiates the discretised solve, whose gradient the adjoint approximates; the
adaptive step sizes depend on θ and are differentiated through as torchdiffeq computes them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch
from torch import nn
from torch.func import functional_call

from experiment.models import ODEBlock
from experiment.seeds import seeded_generator


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
    def of(cls, model: nn.Module) -> "SurvivingParameters":
        """Survivors = the non-zero entries of every parameter."""
        names, shapes, indices, values = [], [], [], []
        for name, parameter in model.named_parameters():
            data = parameter.detach()
            index = torch.nonzero(data.flatten() != 0, as_tuple=False).flatten()
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
            module.options = dataclasses.replace(module.options, backend="backprop")
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied


class _Output(nn.Module):
    """model(x) for classifiers, model.log_prob(x, exact_trace, generator) for flows (so
    `functional_call` can call either through `forward`); a flow's Hutchinson noise is drawn from
    `generator`, a classifier draws nothing."""

    def __init__(self, model: nn.Module, trace: str):
        super().__init__()
        self.model = model
        self.trace = trace

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.trace:
            return self.model.log_prob(x, exact_trace=self.trace == "exact", generator=generator)
        return self.model(x)


# ------------------------------------------------------------------------------ the restricted loss and its HVP


class RestrictedLoss:
    """L(θ) = Σ_c (|c|/N) · loss_fn(output(model_θ, x_c), y_c) for θ the surviving parameters.

    `model` must support double backward (see `differentiable_copy`). `trace` is "" (classifier),
    "exact" or "hutchinson" (flows: how log p(x) is computed; Hutchinson's noise is fixed: every chunk's
    forward pass draws it from a generator seeded from `seed` and the chunk index). `hvp(V)` computes H·V for
    V of shape [n] or [k, n]; with `cache_graph` the gradient graph of every chunk is kept and reused."""

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, *, trace: str = "",
                 chunk_size: int = 1024, seed: int = 0, cache_graph: bool = True, hvp_batch: int = 16):
        self.model = model
        self.output = _Output(model, trace)
        self.loss_fn = loss_fn
        self.space = SurvivingParameters.of(model)
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
        """(|c|/N) · loss on chunk `chunk`; a flow's Hutchinson noise drawn from a generator seeded with
        seed + 7919 · chunk, so each chunk sees the same noise whenever its loss is computed."""
        start, stop = self.chunks[chunk]
        parameters = {f"model.{name}": value for name, value in self.space.full(theta).items()}
        generator = seeded_generator(self.seed + 7919 * chunk, self.x.device)
        output = functional_call(self.output, parameters, (self.x[start:stop], generator))
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
        """A fixed matrix, symmetrised (a formed Hessian or one of its principal submatrices)."""
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


def extreme_eigenvalue(operator: HessianOperator, which: str = "LA", tol: float = 1e-8, seed: int = 0) -> float:
    """The largest ('LA') or smallest ('SA') algebraic eigenvalue by ARPACK's Lanczos (`eigsh`)."""
    n = operator.size
    if n < 3:  # eigsh needs k < n; tiny problems are solved directly
        eigenvalues = np.linalg.eigvalsh(dense_hessian(operator)) if n else np.array([np.nan])
        return float(eigenvalues[-1] if which == "LA" else eigenvalues[0])
    start = np.random.default_rng(seed).standard_normal(n)
    try:
        values = scipy.sparse.linalg.eigsh(operator.linear_operator(), k=1, which=which, tol=tol, v0=start,
                                           maxiter=max(1000, 10 * n), return_eigenvectors=False)
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


def lanczos(matmat: Callable[[np.ndarray], np.ndarray], starts: np.ndarray, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Lanczos iteration for a symmetric operator, run from every column of `starts` ([n, k]) in lockstep
    (one `matmat` call per step serves all runs).

    From q₁ = s/‖s‖ it builds orthonormal q₁..q_m and the tridiagonal T = Qᵀ H Q with diagonal α and
    off-diagonal β: w = H q_j − α_j q_j − β_{j−1} q_{j−1}, α_j = q_jᵀ H q_j, β_j = ‖w‖, q_{j+1} = w/β_j.
    w is orthogonalised against every previous q (full reorthogonalisation, twice, classical
    Gram–Schmidt), which keeps Q orthonormal in floating point (no spurious copies of converged Ritz
    values).
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


def largest_eigenvalue(operator: HessianOperator, *, exact_max: int = 2000, seed: int = 0, batch: int = 16) -> float:
    """λ_max alone, on `measure`'s path: the largest eigenvalue of the formed Hessian (n HVPs) when
    n ≤ `exact_max`, else ARPACK's Lanczos from a start seeded with `seed` (≈ 20 HVPs for a
    separated top eigenvalue); NaN for n = 0."""
    if operator.size == 0:
        return math.nan
    if uses_exact_path(operator.size, exact_max):
        return float(np.linalg.eigvalsh(dense_hessian(operator, batch=max(batch, 1)))[-1])
    return extreme_eigenvalue(operator, "LA", seed=seed)


def measure(operator: HessianOperator, *, exact_max: int = 2000, probes: int = 100, slq_vectors: int = 3,
            slq_steps: int = 80, eig_tol: float = 1e-6, seed: int = 0, batch: int = 16,
            spectrum: bool = True, smallest: bool = True) -> Flatness:
    """λ_max, λ_min, trace, κ and spectral quadrature of the operator: exactly (full Hessian) when
    n ≤ `exact_max`, else by Lanczos (eigsh), Hutchinson and SLQ (skipped without `spectrum`: then
    the quadrature is empty on the iterative path). Without `smallest` the iterative path leaves out
    λ_min, hence κ (NaN): Lanczos for the smallest eigenvalue of an indefinite Hessian, whose
    spectrum crowds around zero, takes hundreds of HVPs, ten times λ_max's."""
    n = operator.size
    if n == 0:
        return Flatness(0, math.nan, math.nan, 0.0, 0.0, math.nan, [(np.zeros(1), np.ones(1))], "exact")
    if uses_exact_path(n, exact_max):
        eigenvalues = np.linalg.eigvalsh(dense_hessian(operator, batch=max(batch, 1)))
        return Flatness(n, float(eigenvalues[-1]), float(eigenvalues[0]), float(eigenvalues.sum()), 0.0,
                        condition_number(float(eigenvalues[-1]), eigenvalues, eig_tol),
                        [(eigenvalues, np.full(n, 1.0 / n))], "exact")
    lambda_max = extreme_eigenvalue(operator, "LA", seed=seed)
    lambda_min = extreme_eigenvalue(operator, "SA", seed=seed + 1) if smallest else math.nan
    trace, stderr = hutchinson_trace(operator, probes, seed + 2, batch)
    quadrature = slq(operator, slq_vectors, slq_steps, seed + 3) if spectrum else []
    kappa = lambda_max / lambda_min if lambda_max > 0 and lambda_min > eig_tol * lambda_max else math.nan
    return Flatness(n, lambda_max, lambda_min, trace, stderr, kappa, quadrature, "iterative")
