"""The fused solve of MLP fields (experiment/models/solvers/: fused.py, mlp_tangents.py, dopri5.py) against
autograd and torchdiffeq: the same field, tangents and gradients to rounding; the same log-densities,
Hutchinson estimates and parameter gradients as the torchdiffeq adjoint and as backprop through the
solver, within solver tolerance; NFE counted; models it cannot take keep the torchdiffeq path."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from experiment.models import build_model, count_nfe
from experiment.models.solvers.dopri5 import SolverError, dopri5
from experiment.models.mlp import mlp
from experiment.models.solvers.mlp_tangents import MLP, as_mlp, forward, vjp
from experiment.models.ode import ODEBlock

ACTIVATIONS = ("sigmoid", "tanh", "softplus", "relu")


def detached(net: nn.Sequential) -> MLP:
    layers = as_mlp(net)
    return MLP(tuple(w.detach() for w in layers.weights), tuple(b.detach() for b in layers.biases), layers.activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("num_tangents", [0, 1, 3])
def test_tangents_and_their_gradient_equal_autograd(activation, num_tangents):
    torch.manual_seed(0)
    net = mlp(3, 8, 4, activation).double()
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    tangents = torch.randn(num_tangents, 5, 3, dtype=torch.float64)
    output, tangent_outputs, tape = forward(detached(net), z.detach(), tangents)

    expected = net(z)
    expected_tangents = [torch.autograd.functional.jvp(net, z, v, create_graph=True)[1] for v in tangents]
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    for got, want in zip(tangent_outputs, expected_tangents):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)

    grad_output = torch.randn(5, 3, dtype=torch.float64)
    grad_tangents = torch.randn(num_tangents, 5, 3, dtype=torch.float64)
    objective = (expected * grad_output).sum() + sum((t * g).sum() for t, g in zip(expected_tangents, grad_tangents))
    want = torch.autograd.grad(objective, [z, *net.parameters()])
    grad_z, grad_parameters = vjp(detached(net), tape, grad_output, grad_tangents)
    for got, reference in zip([grad_z, *grad_parameters], want):
        torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-12)


def test_only_plain_mlps_are_fused():
    assert as_mlp(mlp(2, 4, 3, "tanh")).activation == "tanh"
    assert as_mlp(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2, bias=False))) is None
    assert as_mlp(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) is None
    assert as_mlp(nn.Sequential(nn.Linear(2, 4), nn.Softplus(beta=2), nn.Linear(4, 2))) is None
    assert as_mlp(nn.Sequential(nn.Linear(2, 2))) is None
    for name in ("ffjord_l4_h64_sigmoid_da_autograd", "ffjord_l4_h64_sigmoid_rk4_adjoint", "ffjord_l2_hm2_f1_tanh"):
        model = build_model(name, 2)
        blocks = [module for module in model.modules() if isinstance(module, ODEBlock)]
        assert all(block.backend != "fused" for block in blocks), name
    assert {block.backend for block in build_model("ffjord_l4_h64_sigmoid_da", 2).modules() if isinstance(block, ODEBlock)} == {"fused"}


def test_dopri5_solves_a_linear_ode_forwards_and_backwards():
    rate = torch.tensor([-1.5, 0.3, 2.0], dtype=torch.float64)
    start = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    end, nfe = dopri5(lambda t, y: rate * y, start, 0.0, 1.3, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(end, start * torch.exp(1.3 * rate), rtol=1e-8, atol=0)
    back, _ = dopri5(lambda t, y: rate * y, end, 1.3, 0.0, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(back, start, rtol=1e-8, atol=0)
    assert nfe > 8
    time_dependent, _ = dopri5(lambda t, y: torch.full_like(y, math.cos(t)), torch.zeros(1, dtype=torch.float64),
                               0.0, 2.0, atol=1e-10, rtol=1e-10)
    assert abs(time_dependent.item() - math.sin(2.0)) < 1e-8


def test_dopri5_fails_clearly_where_no_step_is_small_enough():
    # y' = y² from y(0) = 1 blows up at t = 1
    with pytest.raises(SolverError, match=r"dopri5: (step size underflow|non-finite error estimate) at t = (0\.99|1\.00)"):
        dopri5(lambda t, y: y * y, torch.ones(2, dtype=torch.float64), 0.0, 2.0, atol=1e-6, rtol=1e-6)
    with pytest.raises(SolverError, match="non-finite"):
        dopri5(lambda t, y: y * float("nan"), torch.ones(2, dtype=torch.float64), 0.0, 1.0, atol=1e-6, rtol=1e-6)
    with pytest.raises(SolverError, match=r"more than 5 steps \(network.maxSteps\)"):
        dopri5(lambda t, y: math.cos(50 * t) * y, torch.ones(2, dtype=torch.float64), 0.0, 1.0, atol=1e-10, rtol=1e-10,
               max_steps=5)


def twins(name: str, tolerance: float, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A float64 model with large weights (a curved field) and its copy on the torchdiffeq path."""
    torch.manual_seed(seed)
    fused = build_model(name, 2, atol=tolerance, rtol=tolerance).double()
    with torch.no_grad():
        for parameter in fused.parameters():
            parameter.mul_(2.5)
    reference = build_model(name, 2, atol=tolerance, rtol=tolerance).double()
    reference.load_state_dict(fused.state_dict())
    for block in (m for m in reference.modules() if isinstance(m, ODEBlock)):
        block.options = dataclasses.replace(block.options, backend="torchdiffeq")
    return fused, reference


def outputs_and_gradients(model: nn.Module, x: torch.Tensor, noise_seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(noise_seed)  # the same Hutchinson ε on both paths
    output = model(x)
    loss = output.square().mean() if output.shape == x.shape else -output.mean()
    model.zero_grad()
    loss.backward()
    return output.detach(), [parameter.grad.clone() for parameter in model.parameters()]


@pytest.mark.parametrize("name", ["ffjord_l4_h16_sigmoid_da", "cnf_l3_h16_tanh_da", "node_l3_h16_softplus_da"])
def test_fused_solve_matches_torchdiffeq_adjoint_and_backprop(name):
    fused, reference = twins(name, 1e-9)
    through_solver = build_model(name.replace("_da", "_da_autograd"), 2, atol=1e-9, rtol=1e-9).double()
    through_solver.load_state_dict(fused.state_dict())
    x = torch.randn(64, 2, dtype=torch.float64)
    output, gradients = outputs_and_gradients(fused, x, noise_seed=1)
    for other in (reference, through_solver):
        expected_output, expected_gradients = outputs_and_gradients(other, x, noise_seed=1)
        torch.testing.assert_close(output, expected_output, rtol=0, atol=1e-6)
        for got, want in zip(gradients, expected_gradients):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_hutchinson_estimate_for_a_given_noise_equals_the_torchdiffeq_one():
    fused, reference = twins("ffjord_l3_h16_tanh_da", 1e-9)
    x = torch.randn(32, 2, dtype=torch.float64)
    log_densities = []
    for model in (fused, reference):
        torch.manual_seed(7)
        log_densities.append(model.log_prob(x))
    torch.testing.assert_close(log_densities[0], log_densities[1], rtol=0, atol=1e-6)
    torch.manual_seed(8)
    other_noise = fused.log_prob(x)
    assert (other_noise - log_densities[0]).abs().max() > 1e-3  # the estimate depends on ε: ε really is used
    exact = fused.log_prob(x, exact_trace=True)
    torch.testing.assert_close(exact, reference.log_prob(x, exact_trace=True), rtol=0, atol=1e-6)


def test_fused_solve_at_training_tolerance_agrees_within_solver_error():
    fused, reference = twins("ffjord_l4_h64_sigmoid_da", 1e-5)
    fused, reference = fused.float(), reference.float()
    x = torch.randn(256, 2)
    output, gradients = outputs_and_gradients(fused, x, noise_seed=3)
    expected_output, expected_gradients = outputs_and_gradients(reference, x, noise_seed=3)
    assert (output - expected_output).abs().max() < 5e-3
    flat = torch.cat([g.flatten() for g in gradients])
    expected_flat = torch.cat([g.flatten() for g in expected_gradients])
    assert (flat - expected_flat).norm() < 5e-3 * expected_flat.norm()


def test_evaluations_are_counted_forwards_and_backwards():
    fused, reference = twins("ffjord_l3_h16_tanh_da", 1e-6)
    x = torch.randn(16, 2, dtype=torch.float64)
    before = count_nfe(fused)
    loss = -fused(x).mean()
    after_forward = count_nfe(fused)
    loss.backward()
    assert after_forward - before >= 8  # two for the first step, six per step
    assert count_nfe(fused) - after_forward >= 8


@pytest.mark.parametrize("name", ["ffjord_l3_h16_tanh_da", "node_l2_h16_tanh_da"])
def test_every_backend_trains_the_same_model_to_the_same_outputs(name):
    """The same tiny flow (or classifier), the same initial weights and the same Hutchinson noise,
    trained a few steps on each backend that applies (fused, torchdiffeq's adjoint, backprop through
    the solver): their outputs agree to the solvers' tolerance."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for backend in ("fused", "torchdiffeq", "backprop"):
        model = build_model(name, 2, atol=1e-7, rtol=1e-7, generator=torch.Generator().manual_seed(0), backend=backend)
        assert {block.backend for block in model.modules() if isinstance(block, ODEBlock)} == {backend}
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(3):
            generator = torch.Generator().manual_seed(step)
            output = model(x, generator=generator) if hasattr(model, "log_prob") else model(x)
            loss = -output.mean() if output.dim() == 1 else output.square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            outputs[backend] = model.log_prob(x, exact_trace=True) if hasattr(model, "log_prob") else model(x)
    torch.testing.assert_close(outputs["torchdiffeq"], outputs["fused"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["backprop"], outputs["fused"], rtol=1e-4, atol=1e-4)


def test_a_backend_that_does_not_fit_the_model_is_refused():
    with pytest.raises(ValueError, match="the fused solver takes dopri5 with the adjoint"):
        build_model("ffjord_l2_h8_tanh_rk4_adjoint", 2, backend="fused")(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="asks for backpropagation through the solver"):
        build_model("ffjord_l2_h8_tanh_da_autograd", 2, backend="torchdiffeq")(torch.zeros(1, 2))
