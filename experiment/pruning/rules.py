"""The paper's pruning rules (docs/PRUNING.md), as functions of a model, a target prune ratio and the masks
so far. A mask is a 0/1 tensor shaped like its parameter; parameters without a mask are dense.
Every rule only ever adds zeros to the masks it is given, so in a cascade the zeros only grow.

The target counts all parameters: nnz(all parameters) ≈ (1 − prune_ratio) · #parameters, where
parameters that can no longer influence the output (`experiment.pruning.liveness`) are removed and
not counted. Each rule searches its own free variable (how many weights, what fraction of neurons)
for the live count closest to that target.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from experiment.config.schema import CONTROL_METHOD  # the method that prunes nothing: the training-budget control
from experiment.pruning.layers import PrunableLayer, input_offset, prunable_chains
from experiment.pruning.liveness import Masks, remove_dead


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """parameter ← parameter ⊙ mask for every masked parameter."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask)


def prune(model: nn.Module, method: str, prune_ratio: float, masks: Masks) -> Masks:
    """Prunes `model` in place with `method` (a key of PRUNING_RULES) to `prune_ratio` and returns
    the new masks (a superset of the zeros of `masks`)."""
    new_masks = PRUNING_RULES[method](model, prune_ratio, masks)
    apply_masks(model, new_masks)
    return new_masks


def weight_threshold(model: nn.Module, prune_ratio: float, masks: Masks) -> Masks:
    """WT: keep the largest-magnitude prunable weights network-wide (one global threshold), then
    remove what no longer reaches the output. Removing dead neurons makes the live count jump with
    the threshold, so the count just below the target is topped up with the next-largest weights, in
    order, each taken only if the count stays within the target (a weight between live neurons adds
    exactly one parameter; one that revives a neuron adds that neuron's surviving weights too); if
    that falls short, the smallest step past the target, trimmed back by the smallest kept weights,
    is taken where it lands closer."""
    parameters = dict(model.named_parameters())
    chains = prunable_chains(model)
    layers = [layer for chain in chains for layer in chain]
    # Already-pruned weights score −1 so that they are never kept again.
    scores = torch.cat([torch.where(_mask(masks, parameters, layer.weight) > 0, parameters[layer.weight].detach().abs(), -1.0).flatten()
                        for layer in layers])
    order = torch.argsort(scores, descending=True, stable=True)
    alive = int((scores >= 0).sum())
    sizes = [parameters[layer.weight].numel() for layer in layers]

    def cleaned(kept: torch.Tensor) -> Masks:
        new_masks = dict(masks)
        for layer, layer_mask in zip(layers, kept.split(sizes)):
            new_masks[layer.weight] = layer_mask.view_as(parameters[layer.weight])
        return remove_dead(chains, parameters, new_masks)

    def top(keep: int) -> torch.Tensor:
        kept = torch.zeros_like(scores)
        kept[order[:keep]] = 1.0
        return kept

    target = _target(parameters, prune_ratio)
    count = lambda kept: _nonzero(parameters, cleaned(kept))
    keep = _closest(lambda k: count(top(k)), 0, alive, target)
    below, below_count, overshoot = _approach(top(keep), order[keep:alive].tolist(), 1.0, count, target)
    if overshoot is None or below_count == target:
        return cleaned(below)
    above = below.clone()
    above[overshoot] = 1.0
    kept_order = [index for index in reversed(order[:alive].tolist()) if above[index] > 0]  # smallest first
    above, above_count, _ = _approach(above, kept_order, 0.0, count, target)
    return cleaned(below if abs(below_count - target) <= abs(above_count - target) else above)


def filter_threshold(model: nn.Module, prune_ratio: float, masks: Masks) -> Masks:
    """FT: in every prunable layer but each field's output layer, keep the outputs (neurons, filters)
    with the largest L1 weight-row norms — the same fraction of each layer's outputs (up to rounding
    by one, at least one). A removed output takes its bias, its companions and the next layer's input
    column along (and whatever then no longer reaches the output)."""
    parameters = dict(model.named_parameters())
    chains = prunable_chains(model)
    pairs = [(layer, consumer) for chain in chains for layer, consumer in zip(chain[:-1], chain[1:])]
    rankings, alive, widths = [], [], []
    for layer, _ in pairs:
        rows = (parameters[layer.weight].detach() * _mask(masks, parameters, layer.weight)).flatten(1)
        is_alive = _mask(masks, parameters, layer.weight).flatten(1).any(dim=1)
        rankings.append(torch.argsort(torch.where(is_alive, rows.abs().sum(1), -1.0), descending=True, stable=True))
        alive.append(int(is_alive.sum()))
        widths.append(rows.shape[0])

    live = remove_dead(chains, parameters, masks)  # complete masks of every chain parameter

    def candidate(counts: list[int]) -> Masks:
        new_masks = {name: mask.clone() for name, mask in live.items()}
        for (layer, consumer), ranking, count in zip(pairs, rankings, counts):
            kept = torch.zeros(len(ranking), device=ranking.device)
            kept[ranking[:count]] = 1.0
            new_masks[layer.weight] *= kept.view(-1, *[1] * (new_masks[layer.weight].dim() - 1))
            _drop_inputs(new_masks[consumer.weight], layer, consumer, kept)
        return remove_dead(chains, parameters, new_masks)

    def counts(fraction: float, rounding: Callable[[float], int] = round) -> list[int]:
        return [min(alive_i, max(1, rounding(fraction * width))) for alive_i, width in zip(alive, widths)]

    target = _target(parameters, prune_ratio)
    counted: dict[tuple[int, ...], int] = {}  # the search meets the same counts many times

    def nonzero(chosen: list[int]) -> int:
        if tuple(chosen) not in counted:
            counted[tuple(chosen)] = _nonzero(parameters, candidate(chosen))
        return counted[tuple(chosen)]
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


def no_prune(model: nn.Module, prune_ratio: float, masks: Masks) -> Masks:
    """NoPrune, the control: keeps the masks as they are (nothing is removed, whatever the ratio), so
    that its chain differs from a pruning chain only in what is pruned."""
    return dict(masks)


STRUCTURED_METHODS = frozenset({"FilterThresNet"})
"""The methods that remove whole outputs (neurons, filters): their pruned models are retrained and
evaluated as compact twins (`experiment.pruning.compaction`). WT's scattered zeros stay masked."""

PRUNING_RULES: dict[str, Callable[[nn.Module, float, Masks], Masks]] = {
    "ThresNet": weight_threshold,
    "FilterThresNet": filter_threshold,
    CONTROL_METHOD: no_prune,
}


def _mask(masks: Masks, parameters: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return masks[name] if name in masks else torch.ones_like(parameters[name])


def _drop_inputs(consumer_mask: torch.Tensor, layer: PrunableLayer, consumer: PrunableLayer, kept: torch.Tensor) -> None:
    """Zeroes, in place, the consumer's input columns that read removed outputs of `layer`."""
    offset, width = input_offset(layer, consumer), layer.width
    factor = torch.ones(consumer_mask.shape[1], device=consumer_mask.device)
    factor[offset:offset + width] = kept
    consumer_mask.mul_(factor.view(1, -1, *[1] * (consumer_mask.dim() - 2)))


def _target(parameters: dict[str, torch.Tensor], prune_ratio: float) -> int:
    return round((1.0 - prune_ratio) * sum(p.numel() for p in parameters.values()))


def _nonzero(parameters: dict[str, torch.Tensor], masks: Masks) -> int:
    return sum(int((p.detach() * masks[name]).count_nonzero()) if name in masks else int(p.count_nonzero())
               for name, p in parameters.items())


def _approach(kept: torch.Tensor, candidates: list[int], value: float, count: Callable[[torch.Tensor], int],
              target: int) -> tuple[torch.Tensor, int, int | None]:
    """Sets `kept[i] = value` for the candidates in order (value 1 adds weights, 0 removes them),
    each only if `count` stays on its side of `target`, in passes until the target is met or a pass
    changes nothing (reviving or killing a neuron can make a skipped candidate fit later). Returns
    the new `kept`, its count and the candidate whose step would cross the target by the least
    (None if none).

    `count` is monotone in the candidates taken, so the run of candidates that fit before the next
    one that does not is found by galloping and bisection: a few counts per skipped candidate rather
    than one per candidate (a gap of thousands of weights is common after a neuron revives)."""
    kept = kept.clone()
    on_side = (lambda n: n <= target) if value > 0 else (lambda n: n >= target)
    current, crossing, best_crossing = count(kept), None, None
    while current != target and candidates:
        skipped, pending = [], candidates
        while pending and current != target:
            fits, fits_count, beyond, beyond_count = _longest_fitting_prefix(kept, pending, value, count, on_side, current, target)
            kept[pending[:fits]] = value
            current = fits_count
            if beyond is None:
                break
            skipped.append(pending[fits])
            if best_crossing is None or abs(beyond_count - target) < best_crossing:
                best_crossing, crossing = abs(beyond_count - target), pending[fits]
            pending = pending[fits + 1:]
        if current == target or len(skipped) in (0, len(candidates)):
            break
        candidates = skipped
    return kept, current, crossing


def _longest_fitting_prefix(kept: torch.Tensor, pending: list[int], value: float, count: Callable[[torch.Tensor], int],
                            on_side: Callable[[int], bool], current: int, target: int) -> tuple[int, int, int | None, int | None]:
    """The longest prefix of `pending` whose taking keeps the count on its side (stopping early at a
    prefix that meets the target): its length and count, and the length and count of the first
    prefix that does not fit (None, None if all fit)."""
    def count_with(length: int) -> int:
        trial = kept.clone()
        trial[pending[:length]] = value
        return count(trial)

    fits, fits_count, beyond, beyond_count, step = 0, current, None, None, 1
    while fits < len(pending) and fits_count != target:  # gallop: 1, 2, 4, ... more candidates
        length = min(fits + step, len(pending))
        trial = count_with(length)
        if not on_side(trial):
            beyond, beyond_count = length, trial
            break
        fits, fits_count, step = length, trial, step * 2
    while beyond is not None and beyond - fits > 1:  # bisect between the last fit and the first miss
        middle = (fits + beyond) // 2
        trial = count_with(middle)
        if on_side(trial):
            fits, fits_count = middle, trial
            if trial == target:
                return fits, fits_count, None, None
        else:
            beyond, beyond_count = middle, trial
    return fits, fits_count, beyond, beyond_count


def _closest(count: Callable[[int], int], low: int, high: int, target: int) -> int:
    """The largest k in [low, high] whose count(k) does not exceed target (low if none does), for
    count non-decreasing in k."""
    lo, hi = low, high
    while lo < hi:  # largest k with count(k) <= target
        middle = (lo + hi + 1) // 2
        lo, hi = (middle, hi) if count(middle) <= target else (lo, middle - 1)
    return lo
