"""FFJORD's multiscale image flow (docs/MODELS.md, `ffjord_multiscale_{mnist|cifar}`).

Images x in [0, 1]^{C×H×W} (already uniformly dequantised by the data pipeline) are mapped to
Gaussian noise by

    y = logit(α + (1 − 2α) x),  α = 1e-6                      (elementwise, log-det in closed form)
    for every scale but the last:
        2 CNF blocks on c channels → squeeze (c×h×w → 4c×h/2×w/2) → 2 CNF blocks on 4c channels
        → factor out the second half of the channels (they go to N(0, I) directly, the first
          half, 2c channels, continues to the next scale)
    last scale: 2 CNF blocks, no squeeze, no factor-out.

MNIST (1×28×28) uses 3 scales, so the blocks act on 1,1,4,4 | 2,2,8,8 | 4,4 channels; CIFAR-10
(3×32×32) uses 4 scales. Any H, W divisible by 2^(scales−1) works (the batch size and image size
are never baked into the model).

Every CNF block is an `ODEBlock(DensityDynamics(ConvField(c)), learn_end_time=True)`: end time
T = τ², Hutchinson's trace estimator with Gaussian noise drawn once per solve (from the generator
passed to `forward`, `log_prob` or `transform`, block by block in forward order), dopri5 with adjoint
gradients. Its vector field is four 3×3 ConcatConv2d layers (C+1)→64, (64+1)→64, (64+1)→64,
(64+1)→C, softplus after every layer but the last; the time is a constant input channel placed
first in every concatenation, and the field declares it as no filter of its prunable chain
(`ConvField.prunable_chain`), so pruning never touches it.
A block on C channels has 1162·C + 75,649 parameters (τ included): MNIST 800,646, CIFAR 1,358,882.

    log p(x) = Σ_parts log N(z_part; 0, I) + Σ_blocks ∫_0^T tr(∂f/∂z) dt + log|det ∂y/∂x|,

in nats per sample, a density of x on [0, 1]^D (bits/dim: `experiment.training.losses`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from experiment.models.cnf import DensityDynamics, standard_normal_like, standard_normal_log_prob
from experiment.models.mlp import LayerStack
from experiment.models.ode import ODEBlock, SolverOptions
from experiment.models.prunable import ChainLayer

ALPHA = 1e-6
HIDDEN = 64
BLOCKS_PER_STAGE = 2
# dataset → (image channels, number of scales, canonical image shape)
IMAGE_ARCHITECTURES = {"mnist": (1, 3, (1, 28, 28)), "cifar": (3, 4, (3, 32, 32))}


# ------------------------------------------------------------------------ invertible pieces


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """Space-to-depth 2×2: [B, C, H, W] → [B, 4C, H/2, W/2] (FFJORD's/RealNVP's squeeze: channel
    4c + 2i + j of the output holds pixel (2h + i, 2w + j) of input channel c)."""
    return F.pixel_unshuffle(x, 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The exact inverse of `squeeze`: [B, 4C, H, W] → [B, C, 2H, 2W]."""
    return F.pixel_shuffle(x, 2)


def logit_transform(x: torch.Tensor, alpha: float = ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """y = logit(α + (1 − 2α) x) and log|det ∂y/∂x| per sample
    = Σ [log(1 − 2α) − log s − log(1 − s)] with s = α + (1 − 2α) x."""
    s = alpha + (1.0 - 2.0 * alpha) * x
    y = torch.log(s) - torch.log1p(-s)
    log_det = (math.log1p(-2.0 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    return y, log_det


def inverse_logit_transform(y: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """x = (σ(y) − α)/(1 − 2α), the inverse of `logit_transform` (not clamped to [0, 1])."""
    return (torch.sigmoid(y) - alpha) / (1.0 - 2.0 * alpha)


# ------------------------------------------------------------------------ vector field


class ConcatConv2d(nn.Module):
    """3×3 convolution (padding 1) of [t, x]: the time as a constant channel placed first."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, kernel_size=3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        time = torch.ones_like(x[:, :1]) * t.to(x.dtype)
        return self.conv(torch.cat([time, x], dim=1))


class ConvField(LayerStack):
    """f(t, z) on [B, C, H, W]: ConcatConv2d C→64→64→64→C, softplus between layers."""

    def __init__(self, channels: int, hidden: int = HIDDEN, num_hidden: int = 3):
        widths = [channels] + [hidden] * num_hidden + [channels]
        super().__init__((ConcatConv2d(a, b) for a, b in zip(widths[:-1], widths[1:])), nn.Softplus())

    def prunable_chain(self) -> list[ChainLayer]:
        """The convolutions; each reads the time as input channel 0, the previous filters after it
        (softplus(0) ≠ 0: no filter is silent)."""
        return [ChainLayer(layer.conv, first_neuron_input=1) for layer in self.layers]


# ------------------------------------------------------------------------ the flow


class MultiscaleCNF(nn.Module):
    """FFJORD's multiscale CNF on images with `channels` channels and `num_scales` scales.

    `self.blocks` holds the 2 + 2 blocks of every scale but the last and the 2 of the last, in
    forward order. `forward(x, generator)` is `log_prob(x, generator=generator)` (nats per sample,
    Hutchinson trace, its noise drawn from `generator`; None: the global default generator).

    `image_shape` (C, H, W), if given, is the shape `sample` draws by default; the density takes
    images of any shape the architecture allows.
    """

    def __init__(self, channels: int, num_scales: int, options: SolverOptions, hidden: int = HIDDEN,
                 alpha: float = ALPHA, image_shape: tuple[int, int, int] | None = None):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be at least 1, got {num_scales}")
        self.channels = channels
        self.num_scales = num_scales
        self.alpha = alpha
        self.image_shape = None if image_shape is None else self._check_shape(tuple(image_shape))
        block_channels = []
        width = channels
        for _ in range(num_scales - 1):
            block_channels += [width] * BLOCKS_PER_STAGE + [4 * width] * BLOCKS_PER_STAGE
            width *= 2  # 4c after the squeeze, half of it factored out
        block_channels += [width] * BLOCKS_PER_STAGE
        self.block_channels = block_channels
        self.blocks = nn.ModuleList(
            ODEBlock(DensityDynamics(ConvField(c, hidden)), options, learn_end_time=True) for c in block_channels
        )

    # -- shapes

    def _check_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        factor = 2 ** (self.num_scales - 1)
        if len(shape) != 3 or shape[0] != self.channels or shape[1] % factor or shape[2] % factor or min(shape[1:]) < 1:
            raise ValueError(
                f"multiscale flow with {self.channels} channel(s) and {self.num_scales} scales needs images of shape "
                f"({self.channels}, H, W) with H and W divisible by {factor}, got {shape}"
            )
        return shape  # type: ignore[return-value]

    def part_shapes(self, image_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """Shapes (without batch) of the Gaussian parts: each scale's factored-out half, then the
        final output."""
        c, h, w = self._check_shape(tuple(image_shape))
        shapes = []
        for _ in range(self.num_scales - 1):
            c, h, w = 2 * c, h // 2, w // 2  # 4c channels after squeeze, 2c factored out
            shapes.append((c, h, w))
        shapes.append((c, h, w))
        return shapes

    def _stages(self) -> list[list[ODEBlock]]:
        blocks = list(self.blocks)
        return [blocks[i:i + BLOCKS_PER_STAGE] for i in range(0, len(blocks), BLOCKS_PER_STAGE)]

    # -- density

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.log_prob(x, generator=generator)

    def log_prob(self, x: torch.Tensor, exact_trace: bool | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x) per sample in nats, x of shape [B, C, H, W] in [0, 1], Hutchinson's noise drawn
        from `generator`. The exact trace (one backward pass per pixel) is infeasible for images:
        `exact_trace=True` raises ValueError."""
        parts, log_det = self.transform(x, exact_trace, generator)
        return sum(standard_normal_log_prob(part) for part in parts) + log_det

    def transform(self, x: torch.Tensor, exact_trace: bool | None = None,
                  generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The Gaussian parts (each scale's factored-out half, then the final output) and the total
        log-det: logit log-det + Σ_blocks ∫ tr(∂f/∂z) dt. Every block draws its Hutchinson noise
        ε ~ N(0, I), shaped like its input, from `generator` before its solve, in forward order."""
        if exact_trace:
            raise ValueError("the multiscale image flow supports only Hutchinson's trace estimator: the exact trace "
                             "needs one backward pass per pixel (pass exact_trace=None or False)")
        if x.dim() != 4:
            raise ValueError(f"multiscale flow expects images [B, C, H, W], got shape {tuple(x.shape)}")
        self._check_shape(tuple(x.shape[1:]))
        z, log_det = logit_transform(x, self.alpha)
        stages = self._stages()
        parts = []
        for scale in range(self.num_scales):
            last = scale == self.num_scales - 1
            z, log_det = self._integrate(stages[2 * scale], z, log_det, generator)
            if last:
                break
            z = squeeze(z)
            z, log_det = self._integrate(stages[2 * scale + 1], z, log_det, generator)
            half = z.shape[1] // 2
            z, factored = z[:, :half], z[:, half:]
            parts.append(factored)
        parts.append(z)
        return parts, log_det

    @staticmethod
    def _integrate(blocks: list[ODEBlock], z: torch.Tensor, log_det: torch.Tensor,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        for block in blocks:
            z, delta = block.solve((z, torch.zeros_like(log_det)), standard_normal_like(z, generator))
            log_det = log_det + delta
        return z, log_det

    # -- generation

    @torch.no_grad()
    def inverse(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """x for given Gaussian parts (as `transform` returns them): reverse ODE solves, unsqueeze,
        concatenation of the factored-out halves, inverse logit (not clamped)."""
        if len(parts) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} parts, got {len(parts)}")
        stages = self._stages()
        z = parts[-1]
        for scale in reversed(range(self.num_scales)):
            if scale < self.num_scales - 1:
                z = torch.cat([z, parts[scale]], dim=1)
                z = self._integrate_back(stages[2 * scale + 1], z)
                z = unsqueeze(z)
            z = self._integrate_back(stages[2 * scale], z)
        return inverse_logit_transform(z, self.alpha)

    @staticmethod
    def _integrate_back(blocks: list[ODEBlock], z: torch.Tensor) -> torch.Tensor:
        for block in reversed(blocks):
            z = block.solve_backwards(block.field.field, z)
        return z

    def sample(self, num_samples: int, image_shape: tuple[int, int, int] | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """`num_samples` images [n, C, H, W] in [0, 1]: base Gaussians for every part pushed back
        through the flow. The shape is `image_shape` if given, else the constructor's (ValueError if
        neither gives one)."""
        shape = image_shape if image_shape is not None else self.image_shape
        if shape is None:
            raise ValueError("the multiscale flow was built without an image shape: pass sample(n, image_shape=(C, H, W))")
        reference = self.blocks[0].sqrt_end_time
        parts = [torch.randn(num_samples, *part, generator=generator, device=reference.device, dtype=reference.dtype)
                 for part in self.part_shapes(tuple(shape))]
        return self.inverse(parts).clamp(0.0, 1.0)


def multiscale_flow(image: str, output_size: int, options: SolverOptions) -> MultiscaleCNF:
    """The `ffjord_multiscale_{image}` model. `output_size` is the data dimension C·H·W of square
    images (e.g. 784 for MNIST: the flow then samples that image shape by default) or just the
    number of channels C (`sample` then needs the shape as an argument)."""
    if image not in IMAGE_ARCHITECTURES:
        raise ValueError(f"unknown multiscale image architecture {image!r}, expected one of {tuple(IMAGE_ARCHITECTURES)}")
    channels, num_scales, _ = IMAGE_ARCHITECTURES[image]
    image_shape = None
    if output_size != channels:
        side = math.isqrt(output_size // channels) if output_size > 0 else 0
        factor = 2 ** (num_scales - 1)
        if output_size <= 0 or channels * side * side != output_size or side % factor:
            raise ValueError(
                f"ffjord_multiscale_{image}: output size {output_size} is neither the channel count {channels} nor "
                f"{channels}·H·H for a square image with H divisible by {factor}"
            )
        image_shape = (channels, side, side)
    return MultiscaleCNF(channels, num_scales, options, image_shape=image_shape)
