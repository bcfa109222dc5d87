"""The paper's two pruning rules (SPEC §6), as functions of a model, a target prune ratio and the
masks so far. A mask is a 0/1 tensor shaped like its parameter; parameters without a mask are dense.
Both rules only ever add zeros to the masks they are given, so in a cascade the zeros only grow.

The target counts all parameters: nnz(all parameters) ≈ (1 − prune_ratio) · #parameters. Each rule
searches its own free variable (how many weights, what fraction of neurons) for the count closest
to that target.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from experiment.pruning.layers import PrunableLayer, input_offset, prunable_chains

Masks = dict[str, torch.Tensor]


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """parameter ← parameter ⊙ mask for every masked parameter."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask)


def prune(model: nn.Module, method: str, prune_ratio: float, masks: Masks) -> Masks:
    """Prunes `model` in place with `method` ("ThresNet" or "FilterThresNet") to `prune_ratio` and
    returns the new masks (a superset of the zeros of `masks`)."""
    new_masks = PRUNING_RULES[method](model, prune_ratio, masks)
    apply_masks(model, new_masks)
    return new_masks


def weight_threshold(model: nn.Module, prune_ratio: float, masks: Masks) -> Masks:
    """WT: keep the k largest-magnitude prunable weights network-wide (one global threshold).
    A hidden neuron left without outgoing weights loses its bias too."""
    parameters = dict(model.named_parameters())
    chains = prunable_chains(model)
    layers = [layer for chain in chains for layer in chain]
    # Already-pruned weights score −1 so that they are never kept again.
    scores = torch.cat([torch.where(_mask(masks, parameters, layer.weight) > 0, parameters[layer.weight].detach().abs(), -1.0).flatten()
                        for layer in layers])
    order = torch.argsort(scores, descending=True, stable=True)
    alive = int((scores >= 0).sum())
    sizes = [parameters[layer.weight].numel() for layer in layers]

    def candidate(keep: int) -> Masks:
        flat = torch.zeros_like(scores)
        flat[order[:keep]] = 1.0
        new_masks = dict(masks)
        for layer, layer_mask in zip(layers, flat.split(sizes)):
            new_masks[layer.weight] = layer_mask.view_as(parameters[layer.weight])
        for chain in chains:
            for layer, consumer in zip(chain[:-1], chain[1:]):
                if layer.bias is not None:
                    used = _outputs_used(new_masks[consumer.weight], layer, consumer)
                    new_masks[layer.bias] = _mask(masks, parameters, layer.bias) * used
        return new_masks

    keep = _closest(lambda k: _nonzero(parameters, candidate(k)), 0, alive, _target(parameters, prune_ratio))
    return candidate(keep)


def filter_threshold(model: nn.Module, prune_ratio: float, masks: Masks) -> Masks:
    """FT: in every prunable layer but each field's output layer, keep the outputs (neurons, filters)
    with the largest L1 weight-row norms — the same fraction of each layer's outputs (up to rounding
    by one, at least one). A removed output takes its bias and the next layer's input column along."""
    parameters = dict(model.named_parameters())
    pairs = [(layer, consumer) for chain in prunable_chains(model) for layer, consumer in zip(chain[:-1], chain[1:])]
    rankings, alive, widths = [], [], []
    for layer, _ in pairs:
        rows = (parameters[layer.weight].detach() * _mask(masks, parameters, layer.weight)).flatten(1)
        is_alive = _mask(masks, parameters, layer.weight).flatten(1).any(dim=1)
        rankings.append(torch.argsort(torch.where(is_alive, rows.abs().sum(1), -1.0), descending=True, stable=True))
        alive.append(int(is_alive.sum()))
        widths.append(rows.shape[0])

    def candidate(counts: list[int]) -> Masks:
        new_masks = dict(masks)
        for name in {name for layer, consumer in pairs for name in (layer.weight, layer.bias, consumer.weight) if name}:
            new_masks[name] = _mask(masks, parameters, name).clone()
        for (layer, consumer), ranking, count in zip(pairs, rankings, counts):
            kept = torch.zeros(len(ranking), device=ranking.device)
            kept[ranking[:count]] = 1.0
            new_masks[layer.weight] *= kept.view(-1, *[1] * (new_masks[layer.weight].dim() - 1))
            if layer.bias is not None:
                new_masks[layer.bias] *= kept
            _drop_inputs(new_masks[consumer.weight], layer, consumer, kept)
        return new_masks

    def counts(fraction: float, rounding: Callable[[float], int] = round) -> list[int]:
        return [min(alive_i, max(1, rounding(fraction * width))) for alive_i, width in zip(alive, widths)]

    target = _target(parameters, prune_ratio)
    nonzero = lambda chosen: _nonzero(parameters, candidate(chosen))
    low, high = 0.0, 1.0
    for _ in range(40):  # bisection for the fraction at which the count crosses the target
        middle = (low + high) / 2
        low, high = (middle, high) if nonzero(counts(middle)) < target else (low, middle)
    # Between rounding every layer down and up at that fraction, add neurons one at a time while it helps.
    best, ceiling = counts(high, math.floor), counts(high, math.ceil)
    best_error = abs(nonzero(best) - target)
    while True:
        steps = [best[:i] + [best[i] + 1] + best[i + 1:] for i in range(len(best)) if best[i] < ceiling[i]]
        scored = [(abs(nonzero(step) - target), step) for step in steps]
        if not scored or min(scored)[0] >= best_error:
            return candidate(best)
        best_error, best = min(scored)


PRUNING_RULES: dict[str, Callable[[nn.Module, float, Masks], Masks]] = {
    "ThresNet": weight_threshold,
    "FilterThresNet": filter_threshold,
}


def _mask(masks: Masks, parameters: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return masks[name] if name in masks else torch.ones_like(parameters[name])


def _outputs_used(consumer_mask: torch.Tensor, layer: PrunableLayer, consumer: PrunableLayer) -> torch.Tensor:
    """For each output of `layer`: does the consumer keep any weight reading it?"""
    offset, width = input_offset(layer, consumer), layer.module.weight.shape[0]
    return consumer_mask.transpose(0, 1)[offset:offset + width].reshape(width, -1).any(dim=1)


def _drop_inputs(consumer_mask: torch.Tensor, layer: PrunableLayer, consumer: PrunableLayer, kept: torch.Tensor) -> None:
    """Zeroes, in place, the consumer's input columns that read removed outputs of `layer`."""
    offset, width = input_offset(layer, consumer), layer.module.weight.shape[0]
    factor = torch.ones(consumer_mask.shape[1], device=consumer_mask.device)
    factor[offset:offset + width] = kept
    consumer_mask.mul_(factor.view(1, -1, *[1] * (consumer_mask.dim() - 2)))


def _target(parameters: dict[str, torch.Tensor], prune_ratio: float) -> int:
    return round((1.0 - prune_ratio) * sum(p.numel() for p in parameters.values()))


def _nonzero(parameters: dict[str, torch.Tensor], masks: Masks) -> int:
    return sum(int((p.detach() * masks[name]).count_nonzero()) if name in masks else int(p.count_nonzero())
               for name, p in parameters.items())


def _closest(count: Callable[[int], int], low: int, high: int, target: int) -> int:
    """The k in [low, high] whose count(k) is closest to target, for count non-decreasing in k."""
    lo, hi = low, high
    while lo < hi:  # smallest k with count(k) >= target
        middle = (lo + hi) // 2
        lo, hi = (middle + 1, hi) if count(middle) < target else (lo, middle)
    if lo > low and abs(count(lo - 1) - target) <= abs(count(lo) - target):
        return lo - 1
    return lo
