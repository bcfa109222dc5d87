"""FFJORD's tabular flow `ffjord_l{NH}_hm{M}_f{F}_{act}` (docs/MODELS.md) and how pruning sees it (docs/PRUNING.md).

* the paper's five models have exactly the published parameter counts;
* each block's field is NH+1 concat-squash layers, Linear(x) ⊙ σ(a·t + b) + c·t; pruning sees
  exactly the main Linears (F chains of NH+1), never the time gates;
* log-densities, gradients (every block's learnable end time and the gates included), the
  Hutchinson estimate against the exact trace, sampling, inversion and time dependence;
* WT and FT hit target prune ratios within 0.005; FT leaves the time gates whole.

Solver tolerances are loosened (the model's own are 1e-8 / 1e-6) so that the file runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from experiment.models import build_model
from experiment.models.cnf import CNF
from experiment.models.ode import ODEBlock
from experiment.models.tabular import ConcatSquashField, ConcatSquashLinear, TimeGate
from experiment.pruning.layers import prunable_chains
from experiment.pruning.rules import prune
from experiment.pruning.sparsity import measure_sparsity

# (name, D, published parameter count), docs/MODELS.md
PAPER_MODELS = [
    ("ffjord_l3_hm10_f5_tanh", 6, 43_325),  # POWER
    ("ffjord_l3_hm20_f5_tanh", 8, 278_565),  # GAS
    ("ffjord_l2_hm10_f10_softplus", 21, 546_850),  # HEPMASS
    ("ffjord_l2_hm20_f1_softplus", 43, 820_613),  # MINIBOONE
    ("ffjord_l3_hm20_f2_softplus", 63, 6_698_666),  # BSDS300
]
POWER, POWER_DIM = "ffjord_l3_hm10_f5_tanh", 6
LOOSE = dict(atol=1e-4, rtol=1e-4)
TOLERANCE = 0.005  # docs/PRUNING.md


def new_model(name: str, dim: int, seed: int = 0, **tolerances) -> CNF:
    torch.manual_seed(seed)
    return build_model(name, dim, **tolerances)


def gate_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    gates = {id(p) for module in model.modules() if isinstance(module, TimeGate) for p in module.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in gates}


# ------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("name, dim, count", PAPER_MODELS)
def test_paper_parameter_counts(name, dim, count):
    model = new_model(name, dim)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("name, dim, count", PAPER_MODELS)
def test_structure_and_prunable_chains(name, dim, count):
    model = new_model(name, dim)
    _, layers_part, mult_part, blocks_part, activation = name.split("_")
    num_hidden, hidden, num_blocks = int(layers_part[1:]), int(mult_part[2:]) * dim, int(blocks_part[1:])
    assert isinstance(model, CNF) and model.dim == dim and not model.exact_trace
    blocks = [module for module in model.modules() if isinstance(module, ODEBlock)]
    assert len(blocks) == num_blocks
    for block in blocks:
        assert isinstance(block.sqrt_end_time, nn.Parameter) and block.sqrt_end_time.item() == 1.0
        assert block.options.method == "dopri5" and block.options.adjoint
        assert (block.options.atol, block.options.rtol) == (1e-8, 1e-6)
        assert isinstance(block.field.field, ConcatSquashField)
        assert type(block.field.field.activation).__name__.lower() == activation

    chains = prunable_chains(model)
    assert len(chains) == num_blocks
    expected = [(hidden, dim)] + [(hidden, hidden)] * (num_hidden - 1) + [(dim, hidden)]
    gates = gate_parameters(model)
    for chain in chains:
        assert [tuple(layer.module.weight.shape) for layer in chain] == expected
        assert all(type(layer.module) is nn.Linear and layer.bias is not None for layer in chain)
        assert not {layer.weight for layer in chain} & set(gates)
    # Everything outside the main Linears is a time gate (3 per output) or an end time.
    linear = sum(layer.module.weight.numel() + layer.module.bias.numel() for chain in chains for layer in chain)
    outputs = sum(layer.module.weight.shape[0] for chain in chains for layer in chain)
    assert sum(p.numel() for p in gates.values()) == 3 * outputs
    assert linear + 3 * outputs + num_blocks == count


def test_tolerance_override():
    model = new_model(POWER, POWER_DIM, **LOOSE)
    assert all((block.options.atol, block.options.rtol) == (1e-4, 1e-4) for block in model.blocks)


def test_concat_squash_layer_formula_and_init():
    torch.manual_seed(0)
    layer = ConcatSquashLinear(3, 5)
    gate = layer.time
    for p in (gate.gate_weight, gate.gate_bias, gate.shift_weight):
        assert p.shape == (5,) and p.abs().max() <= 1.0 and p.abs().min() > 0
    x, t = torch.randn(4, 3), torch.tensor(0.7)
    expected = (x @ layer.linear.weight.T + layer.linear.bias) * torch.sigmoid(gate.gate_weight * t + gate.gate_bias) \
        + gate.shift_weight * t
    torch.testing.assert_close(layer(t, x), expected)


def test_field_depends_on_time():
    model = new_model(POWER, POWER_DIM)
    z = torch.randn(8, POWER_DIM)
    for block in model.blocks:
        field = block.field.field
        at_zero, at_half, at_one = (field(torch.tensor(t), z) for t in (0.0, 0.5, 1.0))
        assert at_zero.shape == z.shape
        assert (at_zero - at_half).abs().max() > 1e-3 and (at_half - at_one).abs().max() > 1e-3


# ------------------------------------------------------------------------------ densities, gradients


def test_log_prob_and_gradients_reach_every_parameter():
    model = new_model(POWER, POWER_DIM, **LOOSE)
    x = torch.randn(16, POWER_DIM)
    log_prob = model(x)
    assert log_prob.shape == (16,) and torch.isfinite(log_prob).all()
    (-log_prob.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
    for block in model.blocks:
        assert block.sqrt_end_time.grad.abs() > 0, "end time τ gets no gradient"
    for name, p in gate_parameters(model).items():
        assert p.grad.abs().sum() > 0, f"{name}: time gate gets no gradient"


@pytest.mark.slow
def test_hutchinson_mean_matches_exact_trace():
    """Hutchinson's estimate εᵀ(∂f/∂z)ε is unbiased: averaged over many noise draws it equals the
    exact trace, for one evaluation of a block's dynamics and for the log-density integrated over
    two blocks (z(T) is the same ODE solution either way)."""
    model = new_model("ffjord_l2_hm4_f2_tanh", 3, atol=1e-6, rtol=1e-6).double()
    with torch.no_grad():  # a field with a sizeable divergence, so that the comparison means something
        for layer in (layer.module for chain in prunable_chains(model) for layer in chain):
            layer.weight.mul_(3.0)
        for block in model.blocks:
            block.sqrt_end_time.fill_(2.0 ** 0.5)

    # One evaluation of the augmented dynamics at 4 states, 50,000 noise draws each.
    dynamics, copies = model.blocks[0].field, 50_000
    z, t = torch.randn(4, 3, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    with torch.no_grad():
        _, exact = dynamics(t, (z, torch.zeros(4, dtype=torch.float64)), None)
        noise = torch.randn(4 * copies, 3, dtype=torch.float64)
        _, estimates = dynamics(t, (z.repeat_interleave(copies, 0), torch.zeros(4 * copies, dtype=torch.float64)), noise)
    estimates = estimates.view(4, copies)
    standard_error = estimates.std(1) / copies ** 0.5
    assert (exact.abs() > 10 * standard_error).any()
    assert ((estimates.mean(1) - exact).abs() < 5 * standard_error).all(), (estimates.mean(1), exact)

    # The whole flow: Σ_k ∫ tr dt, exact against the mean of 20,000 Hutchinson solves per point.
    points, copies = 2, 20_000
    x = torch.randn(points, 3, dtype=torch.float64)
    with torch.no_grad():
        z_exact, exact = model.transform(x, exact_trace=True)
        exact_log_prob = model.log_prob(x, exact_trace=True)
        z_estimated, estimates = model.transform(x.repeat_interleave(copies, 0))
    estimates = estimates.view(points, copies)
    standard_error = estimates.std(1) / copies ** 0.5
    torch.testing.assert_close(z_estimated.view(points, copies, 3), z_exact[:, None].expand(-1, copies, -1), atol=1e-4, rtol=0)
    assert (estimates.std(1) > 0).all()  # the estimate really is random
    assert ((estimates.mean(1) - exact).abs() < 5 * standard_error + 1e-4).all(), (estimates.mean(1), exact, standard_error)
    torch.testing.assert_close(exact_log_prob, -0.5 * (z_exact.pow(2).sum(1) + 3 * math.log(2 * math.pi)) + exact)


def test_sample_and_inverse():
    model = new_model(POWER, POWER_DIM, **LOOSE)
    samples = model.sample(32, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (32, POWER_DIM) and torch.isfinite(samples).all()
    x = torch.randn(8, POWER_DIM)
    with torch.no_grad():
        z, _ = model.transform(x)
    torch.testing.assert_close(model.inverse(z), x, atol=5e-3, rtol=0)


# ------------------------------------------------------------------------------------------ pruning


@pytest.mark.parametrize("method", ["ThresNet", "FilterThresNet"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
def test_pruning_hits_target_and_removes_time_gates_only_of_dead_neurons(method, target):
    model = new_model(POWER, POWER_DIM)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    masks = prune(model, method, target, {})
    assert abs(measure_sparsity(model).prune_ratio - target) <= TOLERANCE

    chains = prunable_chains(model)
    main = {name for chain in chains for layer in chain for name in (layer.weight, layer.bias)}
    gates = gate_parameters(model)
    assert set(masks) <= main | set(gates), "a mask on something other than a main Linear or its time gate"
    for name, p in model.named_parameters():
        if name not in main and name not in gates:  # end times are untouched
            assert torch.equal(p.detach(), before[name]), name
    parameters = dict(model.named_parameters())
    for chain in chains:
        for layer, consumer in zip(chain, chain[1:] + [None]):
            assert len(layer.companions) == 3
            # live: read by the next layer (the field's outputs always are)
            live = (parameters[consumer.weight] != 0).any(dim=0) if consumer else torch.ones(layer.width, dtype=torch.bool)
            for name in layer.companions:  # a live neuron keeps its time dependence, a dead one loses it
                assert torch.equal(parameters[name][live], before[name][live]), f"{name}: gate of a live neuron changed"
                assert (parameters[name][~live] == 0).all(), f"{name}: gate of a dead neuron survived"

    if method == "FilterThresNet":
        parameters = dict(model.named_parameters())
        for chain in chains:
            assert (parameters[chain[-1].weight] != 0).any(dim=1).all(), "an output neuron of the field was removed"
            for layer, consumer in zip(chain[:-1], chain[1:]):
                removed = ~masks[layer.weight].bool().any(dim=1)
                assert removed.any() and not removed.all()
                assert (masks[layer.bias][removed] == 0).all()
                assert (masks[consumer.weight][:, removed] == 0).all()
