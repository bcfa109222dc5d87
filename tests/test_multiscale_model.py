"""FFJORD's multiscale image flow (`ffjord_multiscale_{mnist|cifar}`, docs/MODELS.md; pruning: docs/PRUNING.md).

* architecture: the published parameter counts, the per-scale channel layout, any batch size and
  any image size divisible by 2^(scales−1) (small 1×8×8 digits with the MNIST architecture here);
* density: finite log-probs, positive finite bits/dim untrained, gradients reach every parameter
  (end times τ included) and a step lowers the loss on a fixed batch (noise fixed by the seed);
* invertible pieces: squeeze/unsqueeze, logit transform and its log-det against autograd, the whole
  flow transform → inverse, and the change of variables for a field that is identically zero;
* pruning: one chain of 4 convs per block, the time channel (input 0) is never a neuron, WT and FT
  reach their targets within 0.005.

Tolerances are loose (1e-3) wherever exactness of the ODE solve does not matter, to keep this fast.
"""

from __future__ import annotations

import math

import pytest
import torch

from experiment.models import build_model, count_nfe
from experiment.models.multiscale import (MultiscaleCNF, inverse_logit_transform, logit_transform, squeeze,
                                          unsqueeze)
from experiment.models.ode import ODEBlock
from experiment.pruning.layers import input_offset, prunable_chains
from experiment.pruning.rules import prune
from experiment.pruning.sparsity import measure_sparsity
from experiment.training.losses import bits_per_dim

MNIST = "ffjord_multiscale_mnist"
CIFAR = "ffjord_multiscale_cifar"
LOOSE = dict(atol=1e-3, rtol=1e-3)
LOG_2PI = math.log(2 * math.pi)


def small_model(seed: int = 0, **tolerances) -> MultiscaleCNF:
    """The MNIST architecture for 1×8×8 images (output size 64)."""
    torch.manual_seed(seed)
    return build_model(MNIST, 64, **(tolerances or LOOSE))


def images(batch: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Uniformly dequantised random 8-bit images in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 1, size, size), generator=generator).double()
    return ((pixels + torch.rand(pixels.shape, generator=generator, dtype=torch.float64)) / 256).float()


# ------------------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("name, size, count", [(MNIST, 784, 800_646), (CIFAR, 3072, 1_358_882)])
def test_parameter_counts(name, size, count):
    model = build_model(name, size)
    assert sum(p.numel() for p in model.parameters()) == count
    # 1162·C + 75,649 per block on C channels (τ included)
    for block, channels in zip(model.blocks, model.block_channels):
        assert sum(p.numel() for p in block.parameters()) == 1162 * channels + 75_649


def test_architecture_layout():
    mnist, cifar = build_model(MNIST, 784), build_model(CIFAR, 3072)
    assert mnist.block_channels == [1, 1, 4, 4, 2, 2, 8, 8, 4, 4]
    assert cifar.block_channels == [3, 3, 12, 12, 6, 6, 24, 24, 12, 12, 48, 48, 24, 24]
    assert mnist.image_shape == (1, 28, 28) and cifar.image_shape == (3, 32, 32)
    for block, channels in zip(mnist.blocks, mnist.block_channels):
        assert isinstance(block, ODEBlock) and block.sqrt_end_time.requires_grad
        assert block.options.method == "dopri5" and block.options.adjoint
        assert block.options.atol == block.options.rtol == 1e-5
        convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(channels + 1, 64), (65, 64), (65, 64), (65, channels)]
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs)
    assert mnist.part_shapes((1, 28, 28)) == [(2, 14, 14), (4, 7, 7), (4, 7, 7)]
    assert build_model(MNIST, 1).image_shape is None  # output size = channels: no shape to sample
    with pytest.raises(ValueError, match="output size"):
        build_model(MNIST, 10)
    with pytest.raises(ValueError, match="divisible"):
        build_model(MNIST, 36)  # 6×6: not divisible by 4


# ------------------------------------------------------------------------------------------ density


@pytest.mark.parametrize("batch", [3, 5])
def test_log_prob_is_finite_for_any_batch_size(batch):
    model = small_model()
    before = count_nfe(model)
    with torch.no_grad():
        log_prob = model(images(batch))
    assert log_prob.shape == (batch,)
    assert torch.isfinite(log_prob).all()
    assert count_nfe(model) > before + len(model.blocks)  # every block evaluated its field
    assert model.image_shape == (1, 8, 8)


def test_bits_per_dim_untrained_is_finite_and_positive():
    model = small_model(seed=1)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        bpd = bits_per_dim(model(x), 64)
    assert torch.isfinite(bpd) and bpd > 0


def test_exact_trace_is_refused():
    with pytest.raises(ValueError, match="Hutchinson"):
        small_model().log_prob(images(2), exact_trace=True)
    with pytest.raises(ValueError, match="divisible"):
        small_model()(torch.rand(2, 1, 6, 6))
    with pytest.raises(ValueError, match="channel"):
        small_model()(torch.rand(2, 3, 8, 8))


@pytest.mark.slow
def test_gradient_step_reaches_every_parameter_and_lowers_the_loss():
    model = small_model(seed=2)
    x = images(4, seed=2)

    def loss() -> torch.Tensor:
        torch.manual_seed(123)  # the same Hutchinson noise every time
        return bits_per_dim(model(x), 64)

    first = loss()
    first.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got no gradient"
    # a short step (norm 0.01) down the gradient; the loss is quite curved, so longer ones overshoot
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    torch.optim.SGD(model.parameters(), lr=0.01 / float(norm)).step()
    with torch.no_grad():
        second = loss()
    assert second < first - 0.005 * float(norm)  # first-order prediction: a drop of 0.01·|g|


# ------------------------------------------------------------------------------- invertible pieces


def test_squeeze_and_unsqueeze_are_exact_inverses():
    x = torch.randn(2, 3, 8, 6)
    y = squeeze(x)
    assert y.shape == (2, 12, 4, 3)
    assert torch.equal(unsqueeze(y), x)
    assert torch.equal(squeeze(unsqueeze(y)), y)
    # FFJORD's layout: channel 4c + 2i + j holds pixel (2h + i, 2w + j) of channel c
    reference = x.view(2, 3, 4, 2, 3, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 12, 4, 3)
    assert torch.equal(y, reference)


def test_logit_transform_and_its_log_det_match_autograd():
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64).clamp(0.01, 0.99)
    x[0, 0, 0, 0] = 0.0  # the edges are fine thanks to α
    x[1, 0, 1, 1] = 1.0
    alpha = 1e-6
    y, log_det = logit_transform(x, alpha)
    s = alpha + (1 - 2 * alpha) * x
    assert torch.allclose(y, torch.log(s / (1 - s)))
    for i in range(2):
        jacobian = torch.autograd.functional.jacobian(lambda v: logit_transform(v.view(1, 1, 2, 2), alpha)[0].flatten(),
                                                      x[i].flatten())
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jacobian)[1], rtol=1e-10)
    assert torch.allclose(inverse_logit_transform(y, alpha), x, atol=1e-12)


def test_flow_transform_then_inverse_reconstructs_the_input():
    model = small_model(seed=3, atol=1e-6, rtol=1e-6)
    x = images(2, seed=3).clamp(0.05, 0.95)  # away from the logit's steep ends
    with torch.no_grad():
        parts, _ = model.transform(x)
    assert [tuple(p.shape[1:]) for p in parts] == model.part_shapes((1, 8, 8))
    assert torch.allclose(model.inverse(parts), x, atol=1e-3)


def test_zero_field_gives_the_closed_form_density():
    model = small_model(seed=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
                module.bias.zero_()
    x = images(3, seed=4)
    with torch.no_grad():
        log_prob = model(x).double()
    s = 1e-6 + (1 - 2e-6) * x.double()
    y = torch.log(s) - torch.log1p(-s)
    log_det = (math.log(1 - 2e-6) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    expected = -0.5 * (y.flatten(1).pow(2).sum(1) + 64 * LOG_2PI) + log_det
    assert torch.allclose(log_prob, expected, rtol=1e-5)


def test_sampling_shape_and_range():
    model = small_model(seed=5)
    with pytest.raises(ValueError, match="image shape"):
        build_model(MNIST, 1, **LOOSE).sample(2)
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8)
    assert torch.isfinite(samples).all() and samples.min() >= 0 and samples.max() <= 1
    assert model.sample(2, image_shape=(1, 4, 4)).shape == (2, 1, 4, 4)


# ------------------------------------------------------------------------------------------ pruning


def test_prunable_chains_are_the_four_convs_of_every_block():
    model = build_model(MNIST, 784)
    chains = prunable_chains(model)
    assert len(chains) == len(model.blocks) == 10
    for chain, channels in zip(chains, model.block_channels):
        assert [tuple(layer.module.weight.shape) for layer in chain] == [
            (64, channels + 1, 3, 3), (64, 65, 3, 3), (64, 65, 3, 3), (channels, 65, 3, 3)]
        assert all(layer.bias is not None for layer in chain)
        assert all(input_offset(layer, consumer) == 1 for layer, consumer in zip(chain[:-1], chain[1:]))


@pytest.fixture(scope="module")
def mnist_model_state():
    torch.manual_seed(6)
    return build_model(MNIST, 784).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ThresNet", "FilterThresNet"])
@pytest.mark.parametrize("target", [0.3, 0.6, 0.9])
def test_pruning_reaches_the_target_and_keeps_the_time_channel(mnist_model_state, method, target):
    with torch.no_grad():
        model = build_model(MNIST, 784)
    model.load_state_dict(mnist_model_state)
    masks = prune(model, method, target, {})
    assert measure_sparsity(model).prune_ratio == pytest.approx(target, abs=0.005)
    if method != "FilterThresNet":
        return
    for chain in prunable_chains(model):
        for index, layer in enumerate(chain):
            weight = layer.module.weight.detach()
            kept = (weight != 0).flatten(1).any(dim=1)
            if index == len(chain) - 1:
                assert kept.all(), "FT removed an output of a field's output layer"
                assert (layer.module.bias != 0).all()
            # the time channel (input 0) is never pruned: every kept filter still reads it
            assert (masks[layer.weight][kept, 0] == 1).all(), f"FT masked the time channel of {layer.weight}"
            assert (weight[kept, 0] != 0).any(dim=(1, 2)).all(), f"time weights of {layer.weight} are gone"
            if index > 0:
                previous = (chain[index - 1].module.weight.detach() != 0).flatten(1).any(dim=1)
                assert 0 < int(previous.sum()) < 64 or target < 0.5
                # removed filters of the previous conv: their input channels (offset 1) are zero
                assert (weight[:, 1:][:, ~previous] == 0).all()
                assert (weight[kept][:, 1:][:, previous] != 0).any()
