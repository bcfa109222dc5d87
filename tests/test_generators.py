"""Random draws from explicit generators (experiment/seeds.py `seeded_generator`) give exactly what the
same draws gave from the global generator after `torch.manual_seed`: runs made before the switch resume
and reproduce bit-identically."""

from __future__ import annotations

import pytest
import torch

from experiment.data.transforms import build_transform
from experiment.models import build_model
from experiment.seeds import seeded_generator

SEED = 1234

# every model family (experiment/models/names.py): classifier, 2-D CNF (exact trace and Hutchinson's),
# tabular FFJORD, multiscale image FFJORD
MODELS = [
    ("node_l2_h64_tanh_da", 2),
    ("node_l3_h8_relu_rk4_autograd", 3),
    ("ffjord_l4_h64_sigmoid_da", 2),
    ("cnf_l3_h32_tanh_da", 2),
    ("ffjord_l3_hm10_f5_tanh", 6),
    ("ffjord_l2_hm2_f2_softplus", 3),
    ("ffjord_multiscale_mnist", 784),
]


def global_then_draw(draw, seed: int = SEED):
    """What `draw(None)` gives after `torch.manual_seed(seed)` (the global state restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return draw(None)


@pytest.mark.parametrize("name, size", MODELS)
def test_model_from_generator_equals_model_built_after_manual_seed(name: str, size: int) -> None:
    old = global_then_draw(lambda generator: build_model(name, size)).state_dict()
    new = build_model(name, size, generator=seeded_generator(SEED)).state_dict()
    assert list(new) == list(old)
    for key in old:
        assert torch.equal(new[key], old[key]), key


def test_model_from_generator_depends_on_the_seed_only() -> None:
    torch.manual_seed(0)
    first = build_model("ffjord_l3_hm10_f5_tanh", 6, generator=seeded_generator(SEED)).state_dict()
    torch.manual_seed(1)
    second = build_model("ffjord_l3_hm10_f5_tanh", 6, generator=seeded_generator(SEED)).state_dict()
    other = build_model("ffjord_l3_hm10_f5_tanh", 6, generator=seeded_generator(SEED + 1)).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_transforms_draw_from_the_generator_as_from_the_global_one() -> None:
    x = torch.randint(0, 256, (5, 1, 4, 4)).float() / 255
    transform = build_transform([{"type": "RandomHorizontalFlip"}, {"type": "Dequantize"},
                                 {"type": "RandomNoise", "kwargs": {"normalization": 7}}])
    old = global_then_draw(lambda generator: (transform(x), transform(x)))
    generator = seeded_generator(SEED)
    new = (transform(x, generator), transform(x, generator))
    assert all(torch.equal(a, b) for a, b in zip(new, old))


@pytest.mark.parametrize("name, size", [("ffjord_l3_h8_tanh_da", 2), ("ffjord_l2_hm2_f2_tanh", 3)])
def test_hutchinson_noise_draws_from_the_generator_as_from_the_global_one(name: str, size: int) -> None:
    model = build_model(name, size, atol=1e-4, rtol=1e-4, generator=seeded_generator(0))
    x = torch.randn(6, size, generator=seeded_generator(1))
    with torch.no_grad():
        old = global_then_draw(lambda generator: (model(x), model.log_prob(x)))
        generator = seeded_generator(SEED)
        new = (model(x, generator), model.log_prob(x, generator=generator))
    assert all(torch.equal(a, b) for a, b in zip(new, old))
    assert not torch.equal(new[0], new[1])  # the second pass drew fresh noise


def test_multiscale_noise_draws_from_the_generator_as_from_the_global_one() -> None:
    model = build_model("ffjord_multiscale_mnist", 1, generator=seeded_generator(0))
    for block in model.blocks:
        block.options = type(block.options)(method="euler", adjoint=False, num_steps=1)
    x = torch.rand(2, 1, 4, 4, generator=seeded_generator(1))
    with torch.no_grad():
        old = global_then_draw(lambda generator: model.transform(x))
        new = model.transform(x, generator=seeded_generator(SEED))
    assert all(torch.equal(a, b) for a, b in zip(new[0], old[0]))
    assert torch.equal(new[1], old[1])
