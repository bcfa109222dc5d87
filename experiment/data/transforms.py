"""Per-batch data transforms named by the config keys `transformsTrain`, `transformsTest` and
`transformsFinal` (lists of ``{type, kwargs}``; docs/CONFIG.md).

A transform maps a batch tensor (images ``[N, C, H, W]`` holding 8-bit values as ``k/255``) to a
tensor of the same shape. Random transforms draw from the torch generator passed with the batch
(one of the batch's device; None: that device's global default generator); the training loop and
the evaluations pass generators seeded from the run's seed, so runs stay deterministic. The runner applies
``build_transform(transformsTrain + transformsFinal)`` to training batches and
``build_transform(transformsTest + transformsFinal)`` to validation and test batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch


class Transform(Protocol):
    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The transformed batch `x`; random choices drawn from `generator` (None: the default one)."""
        ...


def identity(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The batch unchanged (draws nothing)."""
    return x


class RandomNoise:
    """Uniform dequantisation of values quantised in steps of ``1/normalization``:
    ``x ↦ (normalization·x + U[0, 1)) / (normalization + 1)``. For 8-bit images stored as ``k/255``
    and ``normalization = 255`` this is ``(k + U) / 256``, which lies in ``[k/256, (k+1)/256)``."""

    def __init__(self, normalization: float = 255.0) -> None:
        if isinstance(normalization, bool) or not isinstance(normalization, (int, float)) or normalization <= 0:
            raise ValueError(f"normalization must be a number > 0, got {normalization!r}")
        self.normalization = float(normalization)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws U[0, 1) noise shaped like `x` from `generator` (as `torch.rand_like` would)."""
        noise = torch.empty_like(x).uniform_(generator=generator)
        return (x * self.normalization + noise) / (self.normalization + 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normalization={self.normalization})"


class Dequantize(RandomNoise):
    """Uniform dequantisation of 8-bit data stored as ``k/255``: ``x ↦ (255·x + U[0, 1)) / 256``."""

    def __init__(self) -> None:
        super().__init__(255.0)

    def __repr__(self) -> str:
        return "Dequantize()"


class RandomHorizontalFlip:
    """Mirrors each image of the batch left-right (the last dimension) with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws one U[0, 1) number per image from `generator`; an image is flipped when its number is < p."""
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p
        return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ToTensor:
    """Identity, accepted for compatibility with the original configs: the data are already float
    tensors holding ``k/255``."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        return "ToTensor()"


class Resize:
    """Accepted for compatibility with the original configs only where it changes nothing: raises
    ValueError when a batch's images are not ``size`` (an int for square images, or ``[H, W]``)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        sizes = [size, size] if isinstance(size, int) else list(size) if isinstance(size, (list, tuple)) else None
        if sizes is None or len(sizes) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"size must be a positive integer or a list [H, W] of two, got {size!r}")
        self.size = (sizes[0], sizes[1])

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"Resize to {self.size[0]}x{self.size[1]} is not supported: the images are "
                             f"{x.shape[-2]}x{x.shape[-1]} and resizing is not implemented; remove the Resize "
                             f"transform or set its size to the images' size")
        return x

    def __repr__(self) -> str:
        return f"Resize(size={list(self.size)})"


TRANSFORMS: dict[str, Callable[..., Transform]] = {
    "Dequantize": Dequantize,
    "RandomNoise": RandomNoise,
    "RandomHorizontalFlip": RandomHorizontalFlip,
    "ToTensor": ToTensor,
    "Resize": Resize,
}
"""Transform type name -> constructor taking the entry's kwargs."""

TRANSFORM_NAMES: tuple[str, ...] = tuple(TRANSFORMS)


class Compose:
    """Applies ``transforms`` in order (the identity when there are none)."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """`x` through every transform in turn, each drawing from `generator` after the one before."""
        for transform in self.transforms:
            x = transform(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def make_transform(spec: Mapping) -> Transform:
    """The transform of one ``{type, kwargs}`` entry (kwargs optional); ValueError for an unknown
    type, TypeError for arguments the type does not take, ValueError for bad argument values."""
    name = spec.get("type")
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; expected one of: {', '.join(TRANSFORM_NAMES)}")
    return TRANSFORMS[name](**dict(spec.get("kwargs") or {}))


def build_transform(specs: Sequence[Mapping]) -> Transform:
    """The composition, in order, of the transforms of the ``{type, kwargs}`` entries ``specs``."""
    return Compose([make_transform(spec) for spec in specs])
