"""Tests of the Hessian machinery behind the flatness analysis (experiment/analysis/hessian.py and the
controls of flatness.py): the restricted Hessian's HVPs, eigenvalues and trace against a dense
`torch.autograd.functional.hessian`, the restriction to surviving parameters, the random-subset and
same-support controls (the dense Hessian's principal submatrices), the Lanczos iteration and the SLQ
density."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from experiment.analysis.flatness import (CONTROL_COLUMNS, control_columns, random_subsets, spread, submatrix_flatness,
                                          support_coordinates)
from experiment.analysis.hessian import (HessianOperator, RestrictedLoss, SurvivingParameters, dense_hessian, density_grid,
                                         differentiable_copy, gauss_quadrature, hutchinson_trace, lanczos, largest_eigenvalue,
                                         measure, slq, spectral_density)
from experiment.models import ODEBlock, build_model

NODE = "node_l2_h8_tanh_da"  # adjoint model: the HVP copy must switch to backprop through the solver
CNF = "cnf_l2_h8_tanh_da"


def tiny_problem(name: str, prune: bool = False, samples: int = 40, chunk_size: int = 1000) -> tuple[torch.nn.Module, RestrictedLoss]:
    """A small model with a fixed batch and its restricted loss (optionally with some weights zeroed)."""
    torch.manual_seed(1)
    model = build_model(name, 2)
    if prune:
        with torch.no_grad():
            parameters = dict(model.named_parameters())
            first = [p for n, p in parameters.items() if n.endswith("0.weight")][0]
            first[::2, 0] = 0.0  # some weights
            last_bias = [p for n, p in parameters.items() if n.endswith("bias")][0]
            last_bias[:3] = 0.0  # and some biases
    x = torch.randn(samples, 2)
    if name.startswith("cnf"):
        loss_fn, y, trace = (lambda log_prob, target: -log_prob.mean()), torch.zeros(samples), "exact"
    else:
        loss_fn, y, trace = (lambda logits, target: F.cross_entropy(logits, target)), (x[:, 0] * x[:, 1] > 0).long(), ""
    return model, RestrictedLoss(differentiable_copy(model), loss_fn, x, y, trace=trace, chunk_size=chunk_size)


def reference_hessian(loss: RestrictedLoss) -> np.ndarray:
    hessian = torch.autograd.functional.hessian(loss, loss.theta.detach().clone())
    return hessian.double().numpy()


def eigen_quantities(matrix: np.ndarray, tol: float = 1e-6) -> dict[str, float]:
    """λ_max, λ_min, trace and κ (smallest eigenvalue above tol·λ_max) of a symmetric matrix, by eigvalsh."""
    eigenvalues = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
    positive = eigenvalues[eigenvalues > tol * eigenvalues[-1]]
    return dict(lambda_max=eigenvalues[-1], lambda_min=eigenvalues[0], trace=np.trace(matrix),
                condition_number=eigenvalues[-1] / positive.min())


# ------------------------------------------------------------------------------ against a dense Hessian


@pytest.mark.parametrize("name", [NODE, pytest.param(CNF, marks=pytest.mark.slow)])
def test_hvp_eigenvalue_and_trace_match_dense_hessian(name):
    _, loss = tiny_problem(name)
    reference = reference_hessian(loss)
    eigenvalues = np.linalg.eigvalsh(0.5 * (reference + reference.T))
    operator = HessianOperator.of(loss)

    # HVPs themselves
    vectors = np.random.default_rng(0).standard_normal((loss.size, 3))
    np.testing.assert_allclose(operator.matmat(vectors), reference @ vectors, rtol=1e-6, atol=1e-9)

    # exact path: full Hessian from HVP columns
    exact = measure(operator, exact_max=10_000)
    assert exact.hessian == "exact"
    assert exact.lambda_max == pytest.approx(eigenvalues[-1], rel=1e-6)
    assert exact.trace == pytest.approx(np.trace(reference), rel=1e-6)
    positive = eigenvalues[eigenvalues > 1e-6 * eigenvalues[-1]]
    assert exact.condition_number == pytest.approx(eigenvalues[-1] / positive.min(), rel=1e-4)

    # iterative path: Lanczos (eigsh) extremes within 1 % (in fact to solver precision), Hutchinson's
    # trace unbiased within a few standard errors (the 1 % trace criterion is met by the exact path)
    iterative = measure(operator, exact_max=0, probes=200, slq_vectors=2, slq_steps=15)
    assert iterative.hessian == "iterative"
    assert iterative.lambda_max == pytest.approx(eigenvalues[-1], rel=1e-2)
    assert iterative.lambda_max == pytest.approx(eigenvalues[-1], rel=1e-6)
    assert iterative.lambda_min == pytest.approx(eigenvalues[0], rel=1e-6, abs=1e-9)
    assert abs(iterative.trace - np.trace(reference)) < 4 * iterative.trace_stderr
    assert 0 < iterative.trace_stderr < 0.25 * abs(np.trace(reference))
    expected_kappa = eigenvalues[-1] / eigenvalues[0] if eigenvalues[0] > 1e-6 * eigenvalues[-1] else math.nan
    assert iterative.condition_number == pytest.approx(expected_kappa, rel=1e-4, nan_ok=True)


@pytest.mark.parametrize("name", [NODE, pytest.param(CNF, marks=pytest.mark.slow)])
def test_largest_eigenvalue_alone_matches_the_full_measurement(name):
    """λ_max alone (the data-subset measurement) takes `measure`'s path: the formed Hessian's top
    eigenvalue from n HVPs up to exact_max, Lanczos beyond; both are the dense Hessian's."""
    _, loss = tiny_problem(name, prune=True)
    reference = reference_hessian(loss)
    top = np.linalg.eigvalsh(0.5 * (reference + reference.T))[-1]
    operator = HessianOperator.of(loss)
    before = loss.num_hvps
    assert largest_eigenvalue(operator, exact_max=10_000) == pytest.approx(top, rel=1e-8)
    assert loss.num_hvps - before == loss.size
    iterative = largest_eigenvalue(operator, exact_max=0, seed=3)
    assert iterative == pytest.approx(top, rel=1e-6)
    assert iterative == pytest.approx(measure(operator, exact_max=0, probes=2, slq_steps=2, seed=3).lambda_max, rel=1e-8)
    assert math.isnan(largest_eigenvalue(HessianOperator.of_matrix(np.zeros((0, 0)))))


def test_chunked_loss_sums_to_the_full_batch_loss():
    """With a fixed-grid solver every chunk is integrated on the same grid, so the weighted chunk
    losses add up to the full-batch loss exactly (adaptive solvers pick steps per chunk)."""
    name = "node_l2_h8_tanh_rk4_autograd"
    _, chunked = tiny_problem(name, chunk_size=12)  # chunks of 12, 12, 12, 4
    _, whole = tiny_problem(name, chunk_size=1000)
    assert len(chunked.chunks) == 4 and len(whole.chunks) == 1
    assert chunked.value() == pytest.approx(whole.value(), rel=1e-12)
    np.testing.assert_allclose(dense_hessian(HessianOperator.of(chunked)), dense_hessian(HessianOperator.of(whole)),
                               rtol=1e-9, atol=1e-12)
    uncached = RestrictedLoss(chunked.model, chunked.loss_fn, chunked.x, chunked.y, chunk_size=12, cache_graph=False)
    vector = torch.randn(uncached.size, dtype=torch.float64)
    torch.testing.assert_close(uncached.hvp(vector), whole.hvp(vector), rtol=1e-9, atol=1e-12)


def test_hutchinson_flow_loss_is_deterministic():
    """Flows with the trace estimator: the noise is re-seeded before every chunk's forward pass, so
    recomputing the graph (no cache) gives the same loss and the same Hessian as the reference."""
    torch.manual_seed(2)
    model = build_model("ffjord_l2_h4_tanh_da", 2)
    x = torch.randn(24, 2)
    make = lambda cache: RestrictedLoss(differentiable_copy(model), lambda log_prob, target: -log_prob.mean(), x,
                                        torch.zeros(24), trace="hutchinson", chunk_size=10, cache_graph=cache)
    cached, uncached = make(True), make(False)
    assert cached.value() == uncached.value() == cached.value()
    reference = reference_hessian(cached)
    np.testing.assert_allclose(dense_hessian(HessianOperator.of(uncached)), 0.5 * (reference + reference.T), rtol=1e-7, atol=1e-10)
    other_seed = RestrictedLoss(cached.model, cached.loss_fn, x, cached.y, trace="hutchinson", chunk_size=10, seed=5)
    assert other_seed.value() != cached.value()  # the noise matters, and the seed fixes it


def test_hutchinson_trace_is_exact_for_diagonal_and_converges():
    rng = np.random.default_rng(3)
    diagonal = np.diag(rng.uniform(-1, 5, size=30))
    # Rademacher probes: vᵀDv = tr D exactly for a diagonal matrix
    mean, stderr = hutchinson_trace(HessianOperator.of_matrix(diagonal), probes=5)
    assert mean == pytest.approx(np.trace(diagonal), rel=1e-12) and stderr == pytest.approx(0, abs=1e-12)
    a = rng.standard_normal((30, 30))
    matrix = a + a.T + 10 * np.eye(30)
    mean, stderr = hutchinson_trace(HessianOperator.of_matrix(matrix), probes=2000, batch=500)
    assert abs(mean - np.trace(matrix)) < 4 * stderr
    assert stderr < 0.02 * np.trace(matrix)


def test_restricted_hessian_is_the_dense_submatrix_on_survivors():
    model, loss = tiny_problem(NODE, prune=True)
    parameters = dict(model.named_parameters())
    total = sum(p.numel() for p in parameters.values())
    nonzero = sum(int(p.count_nonzero()) for p in parameters.values())
    assert loss.size == nonzero < total

    # the full-parameter loss, written independently of SurvivingParameters
    hvp_model = differentiable_copy(model)
    shapes = [(name, p.shape, p.numel()) for name, p in parameters.items()]

    def full_loss(flat: torch.Tensor) -> torch.Tensor:
        tensors, start = {}, 0
        for name, shape, count in shapes:
            tensors[name] = flat[start:start + count].view(shape)
            start += count
        return F.cross_entropy(functional_call(hvp_model, tensors, (loss.x,)), loss.y)

    flat = torch.cat([p.detach().flatten() for p in parameters.values()]).double()
    dense = torch.autograd.functional.hessian(full_loss, flat).numpy()
    survivors = loss.space.positions()
    assert len(survivors) == loss.size
    np.testing.assert_array_equal(survivors, np.flatnonzero(flat.numpy() != 0))
    restricted = dense_hessian(HessianOperator.of(loss))
    np.testing.assert_allclose(restricted, dense[np.ix_(survivors, survivors)], rtol=1e-7, atol=1e-10)
    # the loss itself is unchanged: pruned entries are held at zero
    assert loss.value() == pytest.approx(float(full_loss(flat)), rel=1e-12)

    # the pruned entries really are constant: θ only moves the survivors
    theta = loss.theta.detach() + 0.1
    rebuilt = loss.space.full(theta)
    for name, p in parameters.items():
        assert torch.all(rebuilt[name][p == 0] == 0)


def test_surviving_parameters_leave_out_a_pruned_parameter():
    model = build_model(NODE, 2)
    weight = next(parameter for parameter in model.parameters())
    with torch.no_grad():
        weight.zero_()
    space = SurvivingParameters.of(model)
    assert space.size == sum(p.numel() for p in model.parameters()) - weight.numel()


def test_adjoint_model_gets_a_backprop_copy():
    model = build_model(NODE, 2)
    assert all(block.options.adjoint for block in model.modules() if isinstance(block, ODEBlock))
    copied = differentiable_copy(model)
    blocks = [block for block in copied.modules() if isinstance(block, ODEBlock)]
    assert blocks and all(block.backend == "backprop" for block in blocks)  # the adjoint has no double backward
    assert all(p.dtype == torch.float64 for p in copied.parameters())
    assert all(block.backend != "backprop" for block in model.modules() if isinstance(block, ODEBlock))  # original untouched


# ------------------------------------------------------------------------------ the random-subset control


@pytest.fixture(scope="module")
def dense_problem():
    """An unpruned tiny classifier: its loss (every parameter survives) and its full autograd Hessian."""
    _, loss = tiny_problem(NODE)
    return loss, reference_hessian(loss)


def test_random_subset_control_is_the_principal_submatrix_of_the_full_hessian(dense_problem):
    loss, reference = dense_problem
    n = loss.size
    subsets = random_subsets(n, 15, 3, seed=0, net=0)
    assert len(subsets) == 3 and len({tuple(subset) for subset in subsets}) == 3
    for subset in subsets:
        assert len(subset) == 15 and np.all(np.diff(subset) > 0) and subset.max() < n
    # deterministic in (seed, net, size), different for another net
    assert all(np.array_equal(a, b) for a, b in zip(subsets, random_subsets(n, 15, 3, seed=0, net=0)))
    assert not np.array_equal(subsets[0], random_subsets(n, 15, 3, seed=0, net=1)[0])

    expected = [eigen_quantities(reference[np.ix_(subset, subset)]) for subset in subsets]
    hvp_operator = HessianOperator.of(loss)
    formed = hvp_operator.materialised()
    np.testing.assert_allclose(formed.matrix, 0.5 * (reference + reference.T), rtol=1e-7, atol=1e-10)
    dense = measure(formed)
    for operator in (hvp_operator, formed):  # H[S, S] from padded HVPs of the dense loss, and as a submatrix
        for result, truth in zip(submatrix_flatness(operator, dense, subsets, exact_max=10_000), expected):
            assert result.num_params == 15 and result.hessian == "exact"
            for quantity in ("lambda_max", "lambda_min", "trace"):
                assert getattr(result, quantity) == pytest.approx(truth[quantity], rel=1e-6, abs=1e-10)
            assert result.condition_number == pytest.approx(truth["condition_number"], rel=1e-4)
            assert result.lambda_max <= dense.lambda_max + 1e-12  # interlacing
    # the iterative path on the restricted HVPs agrees too
    iterative = submatrix_flatness(hvp_operator, dense, subsets[:1], exact_max=0, probes=16)[0]
    assert iterative.hessian == "iterative" and iterative.quadrature == []  # no spectral density for the control
    assert iterative.lambda_max == pytest.approx(expected[0]["lambda_max"], rel=1e-6)
    assert iterative.lambda_min == pytest.approx(expected[0]["lambda_min"], rel=1e-6, abs=1e-9)
    # the columns: mean and population std over the subsets
    columns = control_columns(submatrix_flatness(formed, dense, subsets))
    assert set(columns) == set(CONTROL_COLUMNS) and columns["control_subsets"] == 3
    for stem, quantity in (("lambda_max", "lambda_max"), ("trace", "trace"), ("condition", "condition_number")):
        values = [truth[quantity] for truth in expected]
        assert columns[f"control_{stem}_mean"] == pytest.approx(np.mean(values), rel=1e-4)
        assert columns[f"control_{stem}_std"] == pytest.approx(np.std(values), rel=1e-3, abs=1e-10)
    assert all(math.isnan(value) for name, value in control_columns([]).items() if name != "control_subsets")


def test_control_of_every_parameter_is_the_dense_hessian(dense_problem):
    loss, reference = dense_problem
    n = loss.size
    everything = random_subsets(n, n, 3, seed=0, net=0)
    assert len(everything) == 1 and np.array_equal(everything[0], np.arange(n))  # the only subset of that size
    truth = eigen_quantities(reference)
    for operator in (HessianOperator.of(loss), HessianOperator.of(loss).materialised()):
        dense = measure(operator)
        assert dense.lambda_max == pytest.approx(truth["lambda_max"], rel=1e-6)
        (control,) = submatrix_flatness(operator, dense, everything)
        assert control is dense  # reused, not recomputed ...
        again = measure(operator.restricted(everything[0]))  # ... and recomputing it gives the same
        for quantity in ("lambda_max", "lambda_min", "trace", "condition_number"):
            assert getattr(again, quantity) == pytest.approx(getattr(dense, quantity), rel=1e-9)
    columns = control_columns([dense])
    assert columns["control_lambda_max_mean"] == dense.lambda_max and columns["control_lambda_max_std"] == 0
    assert columns["control_trace_mean"] == dense.trace and columns["control_condition_mean"] == dense.condition_number


def test_same_support_control_is_the_dense_hessian_on_the_models_survivors(dense_problem):
    """S is where the pruned model's survivors sit among the dense net's θ; the control is H_dense[S, S]."""
    loss, reference = dense_problem
    _, pruned = tiny_problem(NODE, prune=True)  # the same net with some weights and biases zeroed
    support = support_coordinates(loss.space.positions(), pruned.space.positions())
    assert len(support) == pruned.size < loss.size
    np.testing.assert_array_equal(support, pruned.space.positions())  # the dense net keeps every entry
    # a dense net with zeros of its own: S indexes its θ, not the flattened parameters
    np.testing.assert_array_equal(support_coordinates(np.array([0, 2, 3, 7, 9]), np.array([2, 7, 8])), [1, 3])
    formed = HessianOperator.of(loss).materialised()
    dense = measure(formed)
    (same,) = submatrix_flatness(formed, dense, [support])
    truth = eigen_quantities(reference[np.ix_(support, support)])
    for quantity in ("lambda_max", "lambda_min", "trace"):
        assert getattr(same, quantity) == pytest.approx(truth[quantity], rel=1e-6, abs=1e-10)
    assert same.num_params == pruned.size and same.lambda_max <= dense.lambda_max + 1e-12  # interlacing
    # on the iterative path the same-support control leaves out λ_min (hundreds of HVPs for a flow), hence κ
    products = {}
    for smallest in (False, True):
        before = loss.num_hvps
        (iterative,) = submatrix_flatness(HessianOperator.of(loss), dense, [support], exact_max=0, probes=16, smallest=smallest)
        products[smallest] = loss.num_hvps - before
        assert iterative.lambda_max == pytest.approx(truth["lambda_max"], rel=1e-6)
        assert abs(iterative.trace - truth["trace"]) < 4 * iterative.trace_stderr
        assert math.isnan(iterative.lambda_min) == (not smallest)
    assert products[False] < products[True]  # the second Lanczos run is what is left out


def test_spread_over_data_subsets():
    assert spread([1.0, 3.0]) == (2.0, 1.0, 2)  # population std
    mean, std, count = spread([2.0])
    assert (mean, count) == (2.0, 1) and math.isnan(std)  # one subset: no spread measured
    assert all(math.isnan(value) for value in spread([])[:2]) and spread([])[2] == 0


# ------------------------------------------------------------------------------ Lanczos and SLQ


def random_symmetric(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    spectrum = np.concatenate([rng.uniform(-2, 3, n - 2), [-5.0, 9.0]])  # separated extremes
    return (q * spectrum) @ q.T


def test_lanczos_extreme_ritz_values_match_eigvalsh():
    matrix = random_symmetric(120, 0)
    eigenvalues = np.linalg.eigvalsh(matrix)
    starts = np.random.default_rng(1).standard_normal((120, 2))
    runs = lanczos(lambda v: matrix @ v, starts, steps=40)
    assert len(runs) == 2
    for alpha, beta in runs:
        assert len(alpha) == 40 and len(beta) == 39
        ritz = np.linalg.eigvalsh(np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1))
        assert ritz[-1] == pytest.approx(eigenvalues[-1], rel=1e-8)
        assert ritz[0] == pytest.approx(eigenvalues[0], rel=1e-8)
        nodes, weights = gauss_quadrature(alpha, beta)
        np.testing.assert_allclose(nodes, ritz, atol=1e-10)
        assert weights.sum() == pytest.approx(1.0)
    # full reorthogonalisation: with m = n steps, T has exactly H's spectrum (no ghost copies)
    (alpha, beta), = lanczos(lambda v: matrix @ v, starts[:, :1], steps=120)
    np.testing.assert_allclose(np.sort(gauss_quadrature(alpha, beta)[0]), eigenvalues, atol=1e-8)


def test_lanczos_stops_on_an_invariant_subspace():
    matrix = np.diag(np.arange(1.0, 11.0))
    start = np.zeros((10, 1))
    start[[2, 5, 7], 0] = 1.0  # lives in a 3-dimensional invariant subspace
    (alpha, beta), = lanczos(lambda v: matrix @ v, start, steps=10)
    assert len(alpha) == 3
    np.testing.assert_allclose(np.sort(gauss_quadrature(alpha, beta)[0]), [3.0, 6.0, 8.0], atol=1e-10)


def test_slq_density_integrates_to_one_and_has_the_trace_mean():
    matrix = random_symmetric(200, 2)
    operator = HessianOperator.of_matrix(matrix)
    quadratures = slq(operator, vectors=40, steps=30, seed=0)
    grid, sigma = density_grid(quadratures, 0.01, points=4000)
    density = spectral_density(quadratures, grid, sigma)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    mean = np.trapezoid(grid * density, grid)
    # exactly the mean Rayleigh quotient of the starting vectors, and so ≈ tr H / n
    quotients = [nodes @ weights for nodes, weights in quadratures]
    assert mean == pytest.approx(np.mean(quotients), abs=1e-3)
    assert mean == pytest.approx(np.trace(matrix) / 200, abs=4 * np.std(quotients) / math.sqrt(40) + 1e-3)


def test_slq_on_a_net_hessian():
    _, loss = tiny_problem(CNF)
    operator = HessianOperator.of(loss)
    hessian = dense_hessian(operator)
    quadratures = slq(operator, vectors=8, steps=loss.size, seed=0)  # m = n: Ritz values are the eigenvalues
    eigenvalues = np.linalg.eigvalsh(hessian)
    for nodes, weights in quadratures:
        assert nodes.max() == pytest.approx(eigenvalues[-1], rel=1e-6)
        assert weights.sum() == pytest.approx(1.0)
    grid, sigma = density_grid(quadratures, 0.01)
    density = spectral_density(quadratures, grid, sigma)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    quotients = np.array([nodes @ weights for nodes, weights in quadratures])
    trace_over_n = np.trace(hessian) / loss.size
    assert np.trapezoid(grid * density, grid) == pytest.approx(quotients.mean(), abs=1e-3 * abs(trace_over_n) + 1e-9)
    # Rademacher quadratic forms scatter around tr H / n
    assert abs(quotients.mean() - trace_over_n) < 4 * quotients.std(ddof=1) / math.sqrt(len(quotients)) + 1e-9


