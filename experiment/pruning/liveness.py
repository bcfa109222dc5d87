"""Parameters that can still influence a field's output (docs/PRUNING.md, "Liveness").

Pruning leaves neurons that no longer matter: a hidden neuron with no outgoing weight to a live
neuron has no path to the output, so its incoming weights, bias and companions (e.g. time-gate
entries) can never change the output; and a neuron whose output is provably constant zero (all
incoming weights, bias and companions gone, σ(0) = 0) makes its outgoing weights useless. Such
parameters are removed (their masks zeroed), recursively, until nothing changes, so that counting
non-zero parameters counts only parameters that matter.
"""

from __future__ import annotations

import torch

from experiment.pruning.layers import PrunableLayer, input_offset

Masks = dict[str, torch.Tensor]


def remove_dead(chains: list[list[PrunableLayer]], parameters: dict[str, torch.Tensor], masks: Masks) -> Masks:
    """`masks` with every parameter of the chains that cannot influence the output masked too.
    Parameters without a mask count as unmasked; the returned masks cover every chain parameter."""
    masks = dict(masks)
    for chain in chains:
        for layer in chain:
            for name in (layer.weight, *layer.per_output):
                masks[name] = (masks[name] if name in masks else torch.ones_like(parameters[name])).clone()
        while _remove_unreachable(chain, masks) | _remove_silent(chain, masks):
            pass
    return masks


def _remove_unreachable(chain: list[PrunableLayer], masks: Masks) -> bool:
    """Backward: a hidden output none of whose consumer's (live) rows reads it loses its row, bias and
    companions. Returns whether any mask entry changed."""
    changed = False
    for layer, consumer in reversed(list(zip(chain[:-1], chain[1:]))):
        offset = input_offset(layer, consumer)
        columns = masks[consumer.weight].transpose(0, 1)[offset:offset + layer.width]
        unreachable = ~columns.reshape(layer.width, -1).any(dim=1)
        changed |= _zero_outputs(layer, unreachable, masks)
    return changed


def _remove_silent(chain: list[PrunableLayer], masks: Masks) -> bool:
    """Forward: an output that is constant zero (no incoming weight, bias or companion left, σ(0) = 0)
    loses its outgoing columns in the consumer. Returns whether any mask entry changed."""
    changed = False
    for layer, consumer in zip(chain[:-1], chain[1:]):
        if not layer.zero_preserving:
            continue
        silent = ~masks[layer.weight].reshape(layer.width, -1).any(dim=1)
        for name in layer.per_output:
            silent &= masks[name] == 0
        if silent.any():
            offset = input_offset(layer, consumer)
            columns = masks[consumer.weight].transpose(0, 1)[offset:offset + layer.width]
            changed |= bool(columns[silent].any())
            columns[silent] = 0.0  # a view: zeroes the consumer's mask in place
    return changed


def _zero_outputs(layer: PrunableLayer, outputs: torch.Tensor, masks: Masks) -> bool:
    """Zeroes the weight rows and per-output entries of `outputs` (bool [width]); did anything change?"""
    if not outputs.any():
        return False
    changed = False
    for name in (layer.weight, *layer.per_output):
        if masks[name][outputs].any():  # mostly rows already zero: nothing to write
            masks[name][outputs] = 0.0
            changed = True
    return changed
