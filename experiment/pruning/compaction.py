"""Compaction: a neuron-pruned model rebuilt as a smaller dense twin, and mapped back.

Structured pruning (FT) removes whole outputs (neurons, filters) of a field's hidden layers, but the
masked model still multiplies by their zeros: a field at prune ratio 0.8 costs about as much as the
dense one. Its compact twin is the same model (a deep copy, same class, same parameter names) whose
prunable layers hold only the kept outputs and the input columns that read them. For layer l of a
chain (`experiment.pruning.layers.prunable_chains`) with kept outputs K_l, reading layer l − 1's
outputs from input column o_l on,

    W'_l = W_l[K_l, C_l],   b'_l = b_l[K_l],   companion'_l = companion_l[K_l],
    C_1 = all inputs,   C_l = (inputs that are not neurons, e.g. the time channel) ∪ (o_l + K_{l−1}),
    K_L = all outputs of the field's output layer,

and output j of a hidden layer is dropped iff its weight row, bias, companions and its input column
in the next layer are all masked. Its parameters are then zero in the masked model and nothing reads
it, so the twin computes the same field f(t, z) (up to the order of floating-point sums), hence the
same solves, log-densities and logits. Parts outside the chains (end times, a classifier's
non-field parts) are copied as they are.

`expand` is the inverse map: the twin's tensors written back into the full layout with zeros at the
dropped entries, so checkpoints, masks and sparsity counts of a compactly trained model look exactly
like those of a masked one.

Training the twin follows the masked model's trajectory: with an elementwise optimizer (SGD, Adam,
AdamW, ...) a kept entry's step depends only on its own gradient, which compaction does not change.
Up to rounding for the MLP fields (their fused solve steers its adjoint steps by the state and its
adjoint only); for the tabular and image fields, torchdiffeq's adaptive adjoint solve controls its
error with the RMS of every parameter's adjoint, and in the masked model that includes the (non-zero,
discarded) gradients of dropped columns, so the backward solves take slightly different steps and
gradients agree within the solver tolerance rather than to rounding.

Covers every field that declares a prunable chain (MLP, concat-squash, ConcatConv2d fields) with
nn.Linear and nn.Conv2d (groups = 1) layers, provided every per-output parameter outside them is a
declared companion (`ChainLayer.companions`); an undeclared one would keep its full size and fail
loudly on the first forward pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from experiment.pruning.layers import PrunableLayer, input_offset, prunable_chains
from experiment.pruning.liveness import Masks

Index = tuple[torch.Tensor, ...]
"""Kept indices along a parameter's leading dimensions: (rows,) of a vector, (rows, columns) of a
weight (a convolution's kernel dimensions are kept whole)."""


@dataclass(frozen=True)
class Compacted:
    """The compact twin of a pruned model."""

    model: nn.Module  # same class and parameter names as the full model, smaller prunable layers
    masks: Masks  # the full model's masks restricted to the twin's entries
    kept: dict[str, Index]  # every chain parameter → its kept indices in the full layout


def compact(model: nn.Module, masks: Masks) -> Compacted:
    """The compact twin of `model` (parameters masked by `masks`, as `prune` leaves them): every
    hidden output that has no live parameter (weight row, bias, companion, next layer's column) is
    dropped together with those parameters. `model` is not changed."""
    parameters = dict(model.named_parameters())
    kept: dict[str, Index] = {}
    for chain in prunable_chains(model):
        outputs = [_live_outputs(layer, consumer, parameters, masks) for layer, consumer in zip(chain[:-1], chain[1:])]
        outputs.append(_every(chain[-1].width, chain[-1].module.weight))
        columns = _every(chain[0].module.weight.shape[1], chain[0].module.weight)
        for position, layer in enumerate(chain):
            if position > 0:
                previous, weight = chain[position - 1], layer.module.weight
                offset = input_offset(previous, layer)
                after = torch.arange(offset + previous.width, weight.shape[1], device=weight.device)
                columns = torch.cat([_every(offset, weight), offset + outputs[position - 1], after])
            kept[layer.weight] = (outputs[position], columns)
            for name in layer.per_output:
                kept[name] = (outputs[position],)

    twin = copy.deepcopy(model)
    for name, index in kept.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = twin.get_submodule(owner_name)
        setattr(owner, attribute, nn.Parameter(_select(parameters[name].detach(), index),
                                               requires_grad=parameters[name].requires_grad))
    for chain in prunable_chains(twin):
        for layer in chain:
            _update_sizes(layer.module)
    twin_masks = {name: _select(mask, kept[name]) if name in kept else mask.clone() for name, mask in masks.items()}
    return Compacted(twin, twin_masks, kept)


def expand(compacted: Compacted, model: nn.Module) -> Masks:
    """Writes the twin's parameters into `model` (the full-size model it was compacted from, or any of
    the same architecture) in the full layout, zeros at the dropped entries, and returns the twin's
    masks in the full layout (zeros at the dropped entries): for an FT model, its FT masks."""
    twin = dict(compacted.model.named_parameters())
    shapes = {name: parameter.shape for name, parameter in model.named_parameters()}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(_place(twin[name].detach(), shapes[name], compacted.kept.get(name)))
    return {name: _place(mask, shapes[name], compacted.kept.get(name)) for name, mask in compacted.masks.items()}


def _live_outputs(layer: PrunableLayer, consumer: PrunableLayer, parameters: dict[str, torch.Tensor],
                  masks: Masks) -> torch.Tensor:
    """Indices of `layer`'s outputs with any unmasked entry in their weight row, bias, companions or
    input column of `consumer` (a parameter without a mask is unmasked)."""
    def mask(name: str) -> torch.Tensor:
        return masks[name] if name in masks else torch.ones_like(parameters[name])

    width, offset = layer.width, input_offset(layer, consumer)
    live = mask(layer.weight).reshape(width, -1).any(dim=1)
    for name in layer.per_output:
        live |= mask(name) != 0
    live |= mask(consumer.weight).transpose(0, 1)[offset:offset + width].reshape(width, -1).any(dim=1)
    return live.nonzero().flatten()


def _every(count: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(count, device=like.device)


def _select(tensor: torch.Tensor, index: Index) -> torch.Tensor:
    """tensor[rows][:, columns] (a copy)."""
    for dim, kept in enumerate(index):
        tensor = tensor.index_select(dim, kept)
    return tensor


def _place(tensor: torch.Tensor, shape: torch.Size, index: Index | None) -> torch.Tensor:
    """A tensor of `shape`, zero but where `index` says `tensor` goes (`tensor` itself, copied, if
    nothing was dropped)."""
    if index is None:
        return tensor.clone()
    full = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
    full[torch.meshgrid(*index, indexing="ij")] = tensor
    return full


def _update_sizes(module: nn.Module) -> None:
    """A resized layer's size attributes (shown by its repr) made to match its new weight."""
    out_size, in_size = module.weight.shape[:2]
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = out_size, in_size
    elif isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = out_size, in_size
