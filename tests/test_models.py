"""Behaviour of the continuous-depth models (docs/MODELS.md): CNF log-densities, gradients, trace
estimators, sampling, fixed-grid solvers and NFE counting.

Convention used throughout (and by `experiment.models.cnf`): data x sits at t = 0 and the base
distribution N(0, I) at t = T = 1; the state obeys dz/dt = f(z) with z(0) = x, and

    log p(x) = log N(z(1); 0, I) + ∫_0^1 tr(∂f/∂z(t)) dt.

For a linear field f(z) = A z this has the closed form z(1) = expm(A) x and

    log p(x) = log N(expm(A) x; 0, I) + tr(A),

which is the change of variables for the linear map x ↦ expm(A) x (|det expm(A)| = e^{tr A}).
Equivalently, written with the field −A as in the issue tracker: log N(e^{−A} x) − tr A. Sampling
inverts the map, x = expm(−A) z with z ~ N(0, I), so samples have covariance
expm(−A) expm(−A)ᵀ.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from experiment.models import build_model, count_nfe
from experiment.models.cnf import CNF, DensityDynamics
from experiment.models.mlp import AutonomousField
from experiment.models.ode import ODEBlock
from experiment.models.solvers import SolverOptions

TIGHT = dict(atol=1e-8, rtol=1e-8)
LOG_2PI = math.log(2 * math.pi)


def random_matrix(dim: int, seed: int, scale: float = 0.6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)


def linear_flow(A: torch.Tensor, options: SolverOptions, exact_trace: bool = True,
                learn_end_time: bool = False) -> CNF:
    """A CNF in float64 whose field is f(z) = A z (a bias-free Linear with weight A)."""
    dim = A.shape[0]
    linear = nn.Linear(dim, dim, bias=False)
    model = CNF([AutonomousField(linear)], dim, options, exact_trace=exact_trace,
                learn_end_time=learn_end_time).double()
    with torch.no_grad():
        linear.weight.copy_(A)
    return model


def closed_form_log_prob(A: torch.Tensor, x: torch.Tensor, end_time: torch.Tensor | float = 1.0) -> torch.Tensor:
    """log N(expm(T A) x; 0, I) + T tr(A), differentiable in A (and T) via torch.linalg.matrix_exp."""
    z = x @ torch.linalg.matrix_exp(end_time * A).T
    return -0.5 * (z.pow(2).sum(1) + x.shape[1] * LOG_2PI) + end_time * torch.trace(A)


def data(n: int, dim: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- 1. log-density against an independent computation -------------------------------------------


@pytest.mark.parametrize("dim", [2, 5])
def test_linear_flow_log_prob_matches_matrix_exponential(dim):
    """log_prob of the linear flow equals log N(expm(A) x) + tr A, computed with scipy's expm."""
    A = random_matrix(dim, seed=dim)
    model = linear_flow(A, SolverOptions(**TIGHT))
    x = data(16, dim, seed=1)

    log_prob = model.log_prob(x, exact_trace=True).detach().numpy()

    A_np, x_np = A.numpy(), x.numpy()
    z = x_np @ scipy.linalg.expm(A_np).T
    expected = -0.5 * (z**2).sum(1) - 0.5 * dim * LOG_2PI + np.trace(A_np)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-6, atol=1e-6)

    # The two halves separately: the end state and the accumulated trace.
    z_model, integral = model.transform(x, exact_trace=True)
    np.testing.assert_allclose(z_model.detach().numpy(), z, atol=1e-6)
    np.testing.assert_allclose(integral.detach().numpy(), np.full(16, np.trace(A_np)), atol=1e-9)


@pytest.mark.parametrize("dim", [2, 5])
def test_linear_flow_inverse_undoes_transform(dim):
    A = random_matrix(dim, seed=10 + dim)
    model = linear_flow(A, SolverOptions(**TIGHT))
    x = data(16, dim, seed=2)
    z, _ = model.transform(x)
    torch.testing.assert_close(model.inverse(z.detach()), x, atol=1e-6, rtol=0)
    # inverse is expm(−A) z, not just "some" map returning near x
    torch.testing.assert_close(model.inverse(z.detach()), z.detach() @ torch.linalg.matrix_exp(-A).T,
                               atol=1e-6, rtol=0)


def test_forward_is_log_prob_and_sign_convention():
    """forward(x) is log_prob(x); an expanding field (A = a·I, a > 0) raises the density by D·a."""
    dim, a = 3, 0.3
    A = a * torch.eye(dim, dtype=torch.float64)
    model = linear_flow(A, SolverOptions(**TIGHT))
    x = data(8, dim, seed=3)
    z = x * math.exp(a)
    expected = -0.5 * (z.pow(2).sum(1) + dim * LOG_2PI) + dim * a
    torch.testing.assert_close(model(x).detach(), expected, atol=1e-6, rtol=0)


# --- 2. gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "autograd"])
@pytest.mark.parametrize("dim", [2, 5])
def test_linear_flow_gradient_matches_closed_form(adjoint, dim):
    """∂/∂A of the mean log-prob: the model's gradient (adjoint or backprop through dopri5) equals
    autograd through the closed form log N(expm(A) x) + tr A."""
    A = random_matrix(dim, seed=20 + dim)
    model = linear_flow(A, SolverOptions(adjoint=adjoint, **TIGHT))
    x = data(16, dim, seed=4)

    model.log_prob(x, exact_trace=True).mean().backward()
    model_grad = model.blocks[0].field.field.net.weight.grad

    A_ref = A.clone().requires_grad_(True)
    closed_form_log_prob(A_ref, x).mean().backward()

    assert model_grad is not None
    torch.testing.assert_close(model_grad, A_ref.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "autograd"])
def test_learned_end_time_gradient_matches_closed_form(adjoint):
    """With a learnable T = τ² (FFJORD's parametrisation) the gradients w.r.t. A and τ match the
    closed form log N(expm(T A) x) + T tr A."""
    A = random_matrix(2, seed=30)
    model = linear_flow(A, SolverOptions(adjoint=adjoint, **TIGHT), learn_end_time=True)
    with torch.no_grad():
        model.blocks[0].sqrt_end_time.fill_(1.2)
    x = data(16, 2, seed=5)

    log_prob = model.log_prob(x, exact_trace=True)
    log_prob.mean().backward()

    A_ref = A.clone().requires_grad_(True)
    tau = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    expected = closed_form_log_prob(A_ref, x, tau * tau)
    expected.mean().backward()

    torch.testing.assert_close(log_prob.detach(), expected.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.blocks[0].field.field.net.weight.grad, A_ref.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.blocks[0].sqrt_end_time.grad, tau.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["cnf_l3_h16_tanh", "ffjord_l3_h16_tanh"])
def test_adjoint_and_autograd_gradients_agree_for_mlp_field(name):
    """For a nonlinear field (and, for ffjord, the same Hutchinson noise: same seed) the adjoint
    backward solve gives the gradient of backprop through the solver."""
    torch.manual_seed(0)
    adjoint = build_model(name + "_da", 2, atol=1e-8, rtol=1e-8).double()
    autograd = build_model(name + "_da_autograd", 2, atol=1e-8, rtol=1e-8).double()
    autograd.load_state_dict(adjoint.state_dict())
    x = data(8, 2, seed=15)
    for model in (adjoint, autograd):
        torch.manual_seed(1)
        model(x).mean().backward()
    for (key, p_adj), p_auto in zip(adjoint.named_parameters(), autograd.parameters()):
        torch.testing.assert_close(p_adj.grad, p_auto.grad, atol=1e-6, rtol=1e-5, msg=key)


def test_mlp_flow_inverse_undoes_transform():
    torch.manual_seed(0)
    model = build_model("ffjord_l3_h16_tanh_da", 2, atol=1e-8, rtol=1e-8).double()
    x = data(16, 2, seed=16)
    with torch.no_grad():
        z, _ = model.transform(x)
    assert (z - x).abs().max() > 1e-3  # the flow does move points
    torch.testing.assert_close(model.inverse(z), x, atol=1e-6, rtol=0)


# --- 3. Hutchinson vs exact trace ----------------------------------------------------------------


def test_hutchinson_is_unbiased_for_exact_trace():
    """The mean of many Hutchinson estimates equals the exact-trace log-density (within 4 standard
    errors), while one estimate differs from it."""
    torch.manual_seed(0)
    model = build_model("ffjord_l3_h16_tanh_da", 2, atol=1e-7, rtol=1e-7).double()
    points = data(4, 2, seed=6)
    draws = 400

    with torch.no_grad():
        exact = model.log_prob(points, exact_trace=True)
        # Noise is drawn per row, so repeating the batch gives independent draws in one solve.
        torch.manual_seed(1)
        estimates = model.log_prob(points.repeat(draws, 1), exact_trace=False).view(draws, len(points))

    mean, stderr = estimates.mean(0), estimates.std(0) / math.sqrt(draws)
    assert torch.all(stderr > 0)
    assert torch.all((mean - exact).abs() < 4 * stderr + 1e-6), (mean, exact, stderr)
    # A single draw is an estimate, not the exact value.
    assert (estimates[0] - exact).abs().max() > 1e-4


def test_default_trace_estimator_follows_model_name():
    """`cnf_` names use the exact trace (deterministic), `ffjord_` names Hutchinson (random)."""
    x = data(8, 2, seed=7, dtype=torch.float32)

    torch.manual_seed(0)
    cnf = build_model("cnf_l3_h16_tanh_da", 2)
    assert cnf.exact_trace is True
    with torch.no_grad():
        torch.manual_seed(1)
        first = cnf(x)
        torch.manual_seed(2)
        second = cnf(x)
        exact = cnf.log_prob(x, exact_trace=True)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, exact)

    torch.manual_seed(0)
    ffjord = build_model("ffjord_l3_h16_tanh_da", 2)
    assert ffjord.exact_trace is False
    with torch.no_grad():
        torch.manual_seed(1)
        first = ffjord(x)
        torch.manual_seed(2)
        second = ffjord(x)
        torch.manual_seed(1)
        explicit = ffjord.log_prob(x, exact_trace=False)
        exact = ffjord.log_prob(x, exact_trace=True)
    assert (first - second).abs().max() > 1e-5
    torch.testing.assert_close(first, explicit)
    assert (first - exact).abs().max() > 1e-5


# --- 4. the density integrates to one --------------------------------------------------------------


def riemann_mass(model: CNF, low: float = -6.0, high: float = 6.0, cells: int = 120) -> float:
    """∫ exp(log p) over [low, high]² by the midpoint rule, exact trace, no gradients."""
    width = (high - low) / cells
    centres = low + width * (torch.arange(cells, dtype=torch.float32) + 0.5)
    grid = torch.cartesian_prod(centres, centres)
    with torch.no_grad():
        density = model.log_prob(grid, exact_trace=True).exp()
    return float(density.sum() * width * width)


def gaussian_mixture(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.5, 1.5], [-1.5, 1.5], [-1.5, -1.5], [1.5, -1.5]])
    index = torch.randint(0, 4, (n,), generator=generator)
    return centres[index] + 0.4 * torch.randn(n, 2, generator=generator)


def test_untrained_density_integrates_to_one():
    torch.manual_seed(0)
    model = build_model("cnf_l3_h32_tanh_da", 2)
    assert abs(riemann_mass(model) - 1.0) < 0.03


@pytest.mark.slow
def test_trained_density_integrates_to_one():
    """After a short fit to a 2-D Gaussian mixture (likelihood improves), the learned density still
    integrates to ≈ 1 over a grid covering its mass."""
    torch.manual_seed(0)
    model = build_model("cnf_l3_h32_tanh_da", 2)
    train = gaussian_mixture(512, seed=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        initial_nll = -model(train).mean().item()
    generator = torch.Generator().manual_seed(9)
    for _ in range(100):
        batch = train[torch.randint(0, len(train), (64,), generator=generator)]
        optimizer.zero_grad()
        loss = -model(batch).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final_nll = -model(train).mean().item()
    assert final_nll < initial_nll - 0.2, (initial_nll, final_nll)
    assert abs(riemann_mass(model) - 1.0) < 0.03


# --- 5. fixed-grid solvers -----------------------------------------------------------------------


def test_rk4_fixed_grid_integrates_whole_interval():
    """rk4 with 19 steps reaches expm(A) x (not the state after the first step), 4·19 NFE."""
    A = random_matrix(2, seed=40, scale=1.0)
    model = linear_flow(A, SolverOptions(method="rk4", num_steps=19))
    x = data(16, 2, seed=10)
    with torch.no_grad():
        z, integral = model.transform(x, exact_trace=True)
    assert model.blocks[0].nfe == 4 * 19
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(A).T, atol=1e-6, rtol=0)
    torch.testing.assert_close(integral, torch.full((16,), float(torch.trace(A)), dtype=torch.float64))
    # backwards over the same grid as well
    torch.testing.assert_close(model.inverse(z), x, atol=1e-6, rtol=0)


def test_euler_fixed_grid_integrates_whole_interval():
    """euler with 99 steps is within its O(1/99) error of expm(A) x and far from the one-step state."""
    A = random_matrix(2, seed=41, scale=1.0)
    model = linear_flow(A, SolverOptions(method="euler", num_steps=99))
    x = data(16, 2, seed=11)
    with torch.no_grad():
        z, _ = model.transform(x, exact_trace=True)
    assert model.blocks[0].nfe == 99
    exact = x @ torch.linalg.matrix_exp(A).T
    # Euler's global error for a linear field: (I + A/n)^n vs expm(A), of order ‖A‖² / (2n).
    euler_closed = x @ torch.linalg.matrix_power(torch.eye(2, dtype=torch.float64) + A / 99, 99).T
    torch.testing.assert_close(z, euler_closed, atol=1e-10, rtol=1e-10)
    error = (z - exact).norm(dim=1).max()
    scale = x.norm(dim=1).max() * float(torch.linalg.matrix_norm(A, ord=2)) ** 2 * math.exp(
        float(torch.linalg.matrix_norm(A, ord=2)))
    assert error < scale / 99
    one_step = x + x @ A.T / 99
    assert torch.all((z - one_step).norm(dim=1) > 10 * (z - exact).norm(dim=1))


@pytest.mark.parametrize(
    "name, forward_nfe",
    [
        ("node_l2_h8_tanh_euler_autograd", 79),
        ("node_l2_h8_tanh_euler_adjoint", 79),
        ("node_l2_h8_tanh_rk4_autograd", 76),
        ("cnf_l3_h8_tanh_euler_autograd", 99),
        ("cnf_l3_h8_tanh_rk4_adjoint", 76),
        ("ffjord_l3_h8_tanh_rk4_autograd", 76),
    ],
)
def test_fixed_grid_models_forward_nfe(name, forward_nfe):
    torch.manual_seed(0)
    model = build_model(name, 2)
    out = model(torch.randn(5, 2))
    assert out.shape == ((5, 2) if name.startswith("node") else (5,))
    assert count_nfe(model) == forward_nfe


def test_node_classifier_returns_state_at_one():
    """The classifier's logits are z(1) of its MLP field, checked against a fine hand-rolled RK4."""
    torch.manual_seed(0)
    model = build_model("node_l2_h8_tanh_dopri_autograd", 2, atol=1e-8, rtol=1e-8).double()
    x = data(6, 2, seed=12)
    with torch.no_grad():
        logits = model(x)
        net = model.block.field.net
        # the reference: a fine-step integration of the same field
        z = x.clone()
        for _ in range(4000):
            k1 = net(z)
            k2 = net(z + k1 / 8000)
            k3 = net(z + k2 / 8000)
            k4 = net(z + k3 / 4000)
            z = z + (k1 + 2 * k2 + 2 * k3 + k4) / (6 * 4000)
    assert logits.shape == (6, 2)
    torch.testing.assert_close(logits, z, atol=1e-6, rtol=0)


# --- 6. NFE counting -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnf_l3_h8_tanh_da", "ffjord_l3_h8_tanh_dopri_adjoint", "node_l3_h8_tanh_da"])
def test_adjoint_backward_evaluates_field(name):
    torch.manual_seed(0)
    model = build_model(name, 2)
    out = model(torch.randn(8, 2))
    after_forward = count_nfe(model)
    assert after_forward > 0
    out.sum().backward()
    assert count_nfe(model) - after_forward > 0


@pytest.mark.parametrize("name", ["cnf_l3_h8_tanh_da_autograd", "ffjord_l3_h8_tanh_dopri_autograd", "node_l3_h8_tanh_da_autograd"])
def test_autograd_backward_does_not_evaluate_field(name):
    torch.manual_seed(0)
    model = build_model(name, 2)
    out = model(torch.randn(8, 2))
    after_forward = count_nfe(model)
    assert after_forward > 0
    out.sum().backward()
    assert count_nfe(model) == after_forward
    assert all(p.grad is not None for p in model.parameters())


def test_count_nfe_sums_over_blocks():
    torch.manual_seed(0)
    first, second = build_model("cnf_l3_h8_tanh_rk4_autograd", 2), build_model("cnf_l3_h8_tanh_euler_autograd", 2)
    container = nn.ModuleList([first, second])
    assert count_nfe(container) == 0
    x = torch.randn(4, 2)
    with torch.no_grad():
        first(x)
        second(x)
        second(x)
    assert sum(isinstance(m, ODEBlock) for m in container.modules()) == 2
    assert count_nfe(first) == 76 and count_nfe(second) == 2 * 99
    assert count_nfe(container) == 76 + 2 * 99


# --- 7. sampling -------------------------------------------------------------------------------------


def test_sample_shape_and_determinism():
    torch.manual_seed(0)
    model = build_model("ffjord_l3_h16_tanh_da", 2)
    first = model.sample(64, generator=torch.Generator().manual_seed(3))
    again = model.sample(64, generator=torch.Generator().manual_seed(3))
    other = model.sample(64, generator=torch.Generator().manual_seed(4))
    assert first.shape == (64, 2)
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_linear_flow_sample_covariance():
    """Samples x = expm(−A) z have covariance expm(−A) expm(−A)ᵀ."""
    A = random_matrix(2, seed=50, scale=1.0).float()
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(A)
    model = CNF([AutonomousField(linear)], 2, SolverOptions(atol=1e-6, rtol=1e-6), exact_trace=True)
    samples = model.sample(20_000, generator=torch.Generator().manual_seed(5)).double()
    E = torch.linalg.matrix_exp(-A.double())
    expected = E @ E.T
    covariance = torch.cov(samples.T)
    torch.testing.assert_close(samples.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(covariance, expected, atol=0.05 * float(expected.abs().max()), rtol=0)


def test_sample_follows_model_dtype():
    """A float64 model samples in float64 (the base draw must take the model's dtype)."""
    model = linear_flow(random_matrix(2, seed=51), SolverOptions(**TIGHT))
    samples = model.sample(8, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.float64 and samples.shape == (8, 2)


# --- DensityDynamics directly ------------------------------------------------------------------------


def test_density_dynamics_exact_trace_is_jacobian_trace():
    torch.manual_seed(0)
    field = build_model("cnf_l3_h16_softplus_da", 3).blocks[0].field.field
    dynamics = DensityDynamics(field).double()
    z = data(5, 3, seed=13)
    dz, trace = dynamics(torch.tensor(0.0), (z, torch.zeros(5, dtype=torch.float64)))
    jacobians = torch.stack([torch.autograd.functional.jacobian(lambda v: field(0, v[None])[0], row) for row in z])
    torch.testing.assert_close(trace, jacobians.diagonal(dim1=1, dim2=2).sum(-1))
    torch.testing.assert_close(dz, field(0, z))
    # Hutchinson with a given noise ε is εᵀ J ε
    noise = data(5, 3, seed=14)
    _, estimate = dynamics(torch.tensor(0.0), (z, torch.zeros(5, dtype=torch.float64)), noise)
    torch.testing.assert_close(estimate, torch.einsum("bi,bij,bj->b", noise, jacobians, noise))
