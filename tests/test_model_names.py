"""The network-name grammar (docs/MODELS.md) (parse_model_name → ModelSpec) and the MLP models that
build_model makes from it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from experiment.models import build_model, parse_model_name
from experiment.models.cnf import CNF
from experiment.models.node import NeuralODEClassifier

# suffix → (solver, adjoint, steps for a CNF, steps for a node)
SUFFIXES = {
    "": ("dopri5", True, None, None),
    "_da": ("dopri5", True, None, None),
    "_da_autograd": ("dopri5", False, None, None),
    "_dopri_adjoint": ("dopri5", True, None, None),
    "_dopri_autograd": ("dopri5", False, None, None),
    "_rk4_adjoint": ("rk4", True, 19, 19),
    "_rk4_autograd": ("rk4", False, 19, 19),
    "_euler_adjoint": ("euler", True, 99, 79),
    "_euler_autograd": ("euler", False, 99, 79),
}


@pytest.mark.parametrize("suffix", list(SUFFIXES))
@pytest.mark.parametrize("family", ["node", "ffjord", "cnf"])
@pytest.mark.parametrize("high_tol", [False, True])
def test_mlp_family_and_suffix(family, suffix, high_tol):
    name = f"{family}_l4_h64_tanh{suffix}" + ("_high_tol" if high_tol else "")
    spec = parse_model_name(name)
    solver, adjoint, cnf_steps, node_steps = SUFFIXES[suffix]

    assert spec.name == name
    assert spec.family == ("node" if family == "node" else "cnf")
    assert spec.is_flow == (family != "node")
    assert spec.exact_trace == (family == "cnf")
    assert (spec.num_linear_layers, spec.width, spec.activation) == (4, 64, "tanh")
    assert spec.solver == solver
    assert spec.adjoint == adjoint
    assert spec.num_steps == (node_steps if family == "node" else cnf_steps)
    # tolerances: 1e-4 for node and for _high_tol, otherwise 1e-5
    tol = 1e-4 if (family == "node" or high_tol) else 1e-5
    assert spec.atol == tol and spec.rtol == tol


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "softplus", "relu"])
def test_activations_parse(act):
    assert parse_model_name(f"cnf_l3_h32_{act}_da").activation == act


def test_layer_and_width_numbers_are_read():
    spec = parse_model_name("node_l12_h128_relu_rk4_autograd")
    assert (spec.num_linear_layers, spec.width, spec.activation, spec.num_steps) == (12, 128, "relu", 19)


@pytest.mark.parametrize(
    "name, layers, mult, blocks, act",
    [
        ("ffjord_l3_hm10_f5_tanh", 3, 10, 5, "tanh"),  # POWER
        ("ffjord_l3_hm20_f5_tanh", 3, 20, 5, "tanh"),  # GAS
        ("ffjord_l2_hm10_f10_softplus", 2, 10, 10, "softplus"),  # HEPMASS
        ("ffjord_l2_hm20_f1_softplus", 2, 20, 1, "softplus"),  # MINIBOONE
        ("ffjord_l3_hm20_f2_softplus", 3, 20, 2, "softplus"),  # BSDS300
    ],
)
def test_tabular_names(name, layers, mult, blocks, act):
    spec = parse_model_name(name)
    assert spec.family == "tabular"
    assert spec.is_flow
    assert (spec.num_hidden_layers, spec.width_multiplier, spec.num_blocks, spec.activation) == (layers, mult, blocks, act)
    assert spec.atol == 1e-8 and spec.rtol == 1e-6
    assert spec.solver == "dopri5" and spec.adjoint
    assert spec.exact_trace is False  # Hutchinson
    assert spec.num_steps is None


@pytest.mark.parametrize("image", ["mnist", "cifar"])
def test_multiscale_names(image):
    spec = parse_model_name(f"ffjord_multiscale_{image}")
    assert spec.family == "multiscale"
    assert spec.image == image
    assert spec.is_flow
    assert spec.solver == "dopri5" and spec.adjoint
    assert spec.atol == 1e-5 and spec.rtol == 1e-5
    assert spec.exact_trace is False


@pytest.mark.parametrize(
    "name",
    [
        "realnvp_l3_h16_tanh_da",  # unknown family
        "ffjord_l4_h64_gelu_da",  # unknown activation
        "cnf_l4_h64_swish",  # unknown activation, no suffix
        "ffjord_l3_hm10_f5_gelu",  # unknown activation, tabular
        "cnf_l3_h16_tanh_rk4",  # suffix without gradient mode
        "cnf_l3_h16_tanh_da_adjoint",  # not a suffix
        "node_l3_h16_tanh_midpoint_adjoint",  # unknown solver
        "cnf_l3_h16_tanh_high_tol_da",  # _high_tol must come last
        "cnf_l3_h16_tanh_da_",  # trailing junk
        "node_l1_h16_tanh_da",  # need >= 2 layers
        "node_l0_h16_tanh",
        "cnf_l3_h0_tanh_da",  # need >= 1 hidden unit
        "ffjord_l0_hm10_f5_tanh",
        "ffjord_l3_hm0_f5_tanh",
        "ffjord_l3_hm10_f0_tanh",
        "ffjord_multiscale_svhn",
        "cnf_lx_h16_tanh",
        "CNF_l3_h16_tanh_da",
        "",
    ],
)
def test_bad_names_raise_value_error_naming_the_name(name):
    with pytest.raises(ValueError) as info:
        parse_model_name(name)
    assert repr(name) in str(info.value) or name in str(info.value)


def test_unknown_activation_message_lists_choices():
    with pytest.raises(ValueError, match="gelu"):
        parse_model_name("ffjord_l4_h64_gelu_da")


def test_non_string_name_raises_value_error():
    with pytest.raises(ValueError):
        parse_model_name(None)  # type: ignore[arg-type]


def test_build_model_rejects_bad_names():
    with pytest.raises(ValueError, match="ffjord_l4_h64_gelu_da"):
        build_model("ffjord_l4_h64_gelu_da", 2)


# --- build_model --------------------------------------------------------------------------------------


def linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("family", ["node", "ffjord", "cnf"])
def test_l4_h64_layer_shapes(family):
    model = build_model(f"{family}_l4_h64_tanh_da", 2)
    assert linear_shapes(model) == [(2, 64), (64, 64), (64, 64), (64, 2)]
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Linear))


def test_parameter_count_of_ffjord_l4_h64_sigmoid():
    model = build_model("ffjord_l4_h64_sigmoid_da", 2)
    assert sum(p.numel() for p in model.parameters()) == 8642
    # no learnable end time for the 2-D flows
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8642


def test_l2_is_a_single_hidden_layer():
    model = build_model("node_l2_h8_relu", 3)
    assert linear_shapes(model) == [(3, 8), (8, 3)]


@pytest.mark.parametrize(
    "act, module", [("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh), ("softplus", nn.Softplus), ("relu", nn.ReLU)]
)
def test_activation_modules_after_every_layer_but_last(act, module):
    model = build_model(f"cnf_l4_h16_{act}_da", 2)
    net = model.blocks[0].field.field.net
    kinds = [type(layer) for layer in net]
    assert kinds == [nn.Linear, module, nn.Linear, module, nn.Linear, module, nn.Linear]


def test_model_classes_and_solver_options():
    node = build_model("node_l3_h8_tanh_euler_autograd", 2)
    assert isinstance(node, NeuralODEClassifier)
    assert node.block.options.method == "euler"
    assert node.block.options.adjoint is False
    assert node.block.options.num_steps == 79

    cnf = build_model("cnf_l3_h8_tanh_rk4_adjoint", 2)
    assert isinstance(cnf, CNF) and cnf.exact_trace
    assert cnf.blocks[0].options.method == "rk4" and cnf.blocks[0].options.adjoint and cnf.blocks[0].options.num_steps == 19

    ffjord = build_model("ffjord_l3_h8_tanh_high_tol", 2)
    assert isinstance(ffjord, CNF) and not ffjord.exact_trace
    options = ffjord.blocks[0].options
    assert (options.method, options.adjoint, options.atol, options.rtol, options.num_steps) == ("dopri5", True, 1e-4, 1e-4, None)


def test_build_model_tolerance_overrides():
    model = build_model("cnf_l3_h8_tanh_da", 2, atol=1e-7, rtol=1e-6)
    assert model.blocks[0].options.atol == 1e-7 and model.blocks[0].options.rtol == 1e-6
    model = build_model("node_l3_h8_tanh_da", 2, atol=1e-3)
    assert model.block.options.atol == 1e-3 and model.block.options.rtol == 1e-4


def test_build_model_output_size_sets_dimension():
    model = build_model("cnf_l3_h8_tanh_da", 5)
    assert model.dim == 5
    assert linear_shapes(model) == [(5, 8), (8, 8), (8, 5)]
    with torch.no_grad():
        assert model(torch.randn(3, 5)).shape == (3,)
